"""Token-bucket rate limits, one bucket per key (a connection, an operator token)."""

import time


class RateLimiter:
    """``rate`` events per second per key, in bursts of up to ``burst``; a rate of 0 turns the limit off."""

    def __init__(self, rate, burst, clock=time.monotonic):
        self.rate = rate
        self.burst = max(burst, 1)
        self.clock = clock
        self._buckets = {}  # key -> (tokens left, when counted)

    def allow(self, key):
        """Take one token from ``key``'s bucket; False when it is empty (the event should be refused)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, counted = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - counted) * self.rate)
        allowed = tokens >= 1
        self._buckets[key] = (tokens - 1 if allowed else tokens, now)
        return allowed

    def forget(self, key):
        """Drop ``key``'s bucket (its connection closed)."""
        self._buckets.pop(key, None)
