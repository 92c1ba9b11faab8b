"""What the console draws over time: tasks ended per minute (from the store) and devices online (sampled in memory)."""

from collections import OrderedDict

from taskserver.domain import TERMINAL

MINUTE = 60
KEPT_MINUTES = 24 * 60  # samples older than a day are dropped


def minute_of(ts):
    """The start of the minute ``ts`` falls in (epoch seconds)."""
    return int(ts // MINUTE) * MINUTE


def window(now, minutes):
    """The first minute of the last ``minutes`` minutes, the current (unfinished) one included."""
    return minute_of(now) - (minutes - 1) * MINUTE


def throughput(queries, now, minutes):
    """One row per minute, oldest first: the minute's start and how many tasks completed, failed, were cancelled."""
    since = window(now, minutes)
    counts = queries.count_finished_by_minute(since, since + minutes * MINUTE)
    rows = []
    for index in range(minutes):
        row = {status.value: counts.get((index, status.value), 0) for status in sorted(TERMINAL)}
        rows.append({"at": since + index * MINUTE, **row})
    return rows


class FleetHistory:
    """How many devices were online (connected) and busy, one sample per minute, the last sample of each minute."""

    def __init__(self, kept_minutes=KEPT_MINUTES):
        self.kept_minutes = kept_minutes
        self._samples = OrderedDict()  # minute start -> {"online": n, "busy": n}

    def sample(self, queries, now):
        """Count the fleet now (one small query on the devices table) and keep it as this minute's sample."""
        counts = queries.count_devices_by_status()
        online = sum(n for (status, _disabled), n in counts.items() if status != "offline")
        busy = sum(n for (status, _disabled), n in counts.items() if status == "busy")
        self.record(now, online, busy)

    def record(self, now, online, busy=0):
        """Keep ``online`` and ``busy`` as the sample of ``now``'s minute (replacing an earlier one)."""
        minute = minute_of(now)
        self._samples[minute] = {"online": online, "busy": busy}
        self._samples.move_to_end(minute)
        while len(self._samples) > self.kept_minutes:
            self._samples.popitem(last=False)

    def series(self, now, minutes):
        """One row per minute, oldest first; ``online`` and ``busy`` are None for minutes without a sample."""
        since = window(now, minutes)
        rows = []
        for index in range(minutes):
            at = since + index * MINUTE
            sample = self._samples.get(at, {"online": None, "busy": None})
            rows.append({"at": at, **sample})
        return rows
