"""The device tables of the SQLite store: devices, their tokens and their own history."""

from taskserver.store.rows import ACTIVE_VALUES, DEVICE_COLUMNS, device_from_row, history_from_row, to_db

# the devices that can take a task now, read through the partial index that holds exactly them
FREE = "FROM devices INDEXED BY devices_free WHERE connected = 1 AND disabled = 0 AND active_tasks < capacity"
# a device with every tag of the JSON array given as the parameter
HAS_TAGS = """NOT EXISTS (SELECT 1 FROM json_each(?) wanted
                          WHERE wanted.value NOT IN (SELECT value FROM json_each(devices.tags)))"""
# Device.status in SQL: keep in step with the property in domain.py.
DEVICE_STATUS_SQL = "CASE WHEN connected = 0 THEN 'offline' WHEN active_tasks >= capacity THEN 'busy' ELSE 'online' END"


class DeviceTables:
    """The part of ``SQLiteStore`` that reads and writes devices (through its ``_query`` and ``_transaction``)."""

    def set_device_token(self, device_id, token_hash, now):
        """Bind a (hashed) token to the device id, replacing any earlier one."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO device_tokens VALUES (?, ?, ?) ON CONFLICT (device_id) "
                "DO UPDATE SET token_hash = excluded.token_hash, created_at = excluded.created_at",
                (device_id, token_hash, now),
            )

    def device_token_hash(self, device_id):
        """The hash of the device's own token, or None if it has none."""
        rows = self._query("SELECT token_hash FROM device_tokens WHERE device_id = ?", (device_id,))
        return rows[0][0] if rows else None

    def device_id_for_token_hash(self, token_hash):
        """The device id a (hashed) per-device token belongs to, or None."""
        rows = self._query("SELECT device_id FROM device_tokens WHERE token_hash = ?", (token_hash,))
        return rows[0][0] if rows else None

    def delete_device_token(self, device_id):
        """Revoke the device's own token; True if it had one."""
        with self._transaction() as db:
            return db.execute("DELETE FROM device_tokens WHERE device_id = ?", (device_id,)).rowcount == 1

    def save_device(self, device):
        """Insert the device or update its name, info, capacity, tags and connection (an operator's tags stay as
        they are: ``set_device_tags`` sets them)."""
        kept = ("device_id", "created_at", "active_tasks", "disabled", "operator_tags")
        updated = [c for c in DEVICE_COLUMNS if c not in kept]
        with self._transaction() as db:
            db.execute(
                f"""INSERT INTO devices ({", ".join(DEVICE_COLUMNS)}) VALUES ({", ".join("?" for _ in DEVICE_COLUMNS)})
                    ON CONFLICT (device_id) DO UPDATE SET {", ".join(f"{c} = excluded.{c}" for c in updated)}""",
                [to_db(name, getattr(device, name)) for name in DEVICE_COLUMNS],
            )
            self._queue_changed()  # connected again, or with more capacity: its pinned tasks may start

    def get_device(self, device_id):
        """The device with this id (with its active task count), or None."""
        rows = self._query("SELECT * FROM devices WHERE device_id = ?", (device_id,))
        return device_from_row(rows[0]) if rows else None

    def set_device_tags(self, device_id, operator_tags, tags):
        """Set the operator's tags of the device and its tags (their union with its own); True if it exists."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE devices SET operator_tags = ?, tags = ? WHERE device_id = ?",
                (to_db("tags", operator_tags), to_db("tags", tags), device_id),
            )
            self._queue_changed()  # tasks for its new tags may start on it
            return cursor.rowcount == 1

    def list_devices(self, statuses=(), disabled=None, tags=()):
        """Known devices in one of ``statuses`` (all if empty), with every one of ``tags`` and, if given, that
        ``disabled`` flag; newest first."""
        clauses, params = [], []
        if tags:
            clauses.append(HAS_TAGS)
            params.append(to_db("tags", list(tags)))
        if statuses:
            clauses.append(f"{DEVICE_STATUS_SQL} IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if disabled is not None:
            clauses.append("disabled = ?")
            params.append(int(disabled))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(f"SELECT * FROM devices {where} ORDER BY registered_at DESC, device_id", params)
        return [device_from_row(row) for row in rows]

    def dispatchable_count(self, at_most):
        """How many pending tasks could go now: the free slots of connected, enabled devices (counted over at most
        ``at_most`` devices), or 0 when no task is pending but held ones."""
        if not self.has_pending_tasks():
            return 0
        rows = self._query(
            f"SELECT COALESCE(SUM(capacity - active_tasks), 0) FROM (SELECT capacity, active_tasks {FREE} LIMIT ?)",
            (at_most,),
        )
        return rows[0][0]

    def free_devices(self, limit=None, include=(), tag_sets=()):
        """Connected, enabled devices with a free slot: the ``limit`` least loaded (all if None), plus ``include``,
        plus for each tag set of ``tag_sets`` the ``limit`` least loaded with all those tags."""
        limit = -1 if limit is None else limit
        rows = self._query(f"SELECT * {FREE} ORDER BY active_tasks, registered_at LIMIT ?", (limit,))
        named = [device_id for device_id in include if device_id not in {row["device_id"] for row in rows}]
        if named:
            marks = ", ".join("?" for _ in named)
            rows += self._query(f"SELECT * {FREE} AND device_id IN ({marks})", named)
        for tags in tag_sets:
            rows += self._query(
                f"SELECT * {FREE} AND {HAS_TAGS} ORDER BY active_tasks, registered_at LIMIT ?",
                (to_db("tags", list(tags)), limit),
            )
        unique = {row["device_id"]: row for row in rows}
        return [device_from_row(row) for row in unique.values()]

    def mark_disconnected(self, device_id, sid, now):
        """Mark the device offline if ``sid`` is still its connection; return True if it was."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE devices SET connected = 0, sid = NULL, disconnected_at = ? "
                "WHERE device_id = ? AND sid = ? AND connected = 1",
                (now, device_id, sid),
            )
            return cursor.rowcount == 1

    def record_heartbeat(self, device_id, now):
        """Remember when the device last sent a heartbeat."""
        with self._transaction() as db:
            db.execute("UPDATE devices SET last_heartbeat = ? WHERE device_id = ?", (now, device_id))

    def disconnect_all(self, now):
        """On start: no connection survives a restart; tasks get a fresh grace from ``now``; counts are rebuilt."""
        with self._transaction() as db:
            db.execute(
                """UPDATE devices SET connected = 0, sid = NULL, disconnected_at = ?,
                   active_tasks = (SELECT COUNT(*) FROM tasks t
                                   WHERE t.device_id = devices.device_id AND t.status IN (?, ?))""",
                (now, *ACTIVE_VALUES),
            )
            self._queue_changed()

    def set_device_disabled(self, device_id, disabled):
        """Stop (or resume) giving the device new tasks; return True if the device exists."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE devices SET disabled = ? WHERE device_id = ?", (int(disabled), device_id))
            self._queue_changed()
            return cursor.rowcount == 1

    def delete_device(self, device_id):
        """Forget an offline device with no active task and no task waiting for it, and its own history;
        return True if it was deleted."""
        with self._transaction() as db:
            cursor = db.execute(
                """DELETE FROM devices WHERE device_id = ? AND connected = 0
                   AND NOT EXISTS (SELECT 1 FROM tasks WHERE device_id = ? AND status IN (?, ?))
                   AND NOT EXISTS (SELECT 1 FROM tasks WHERE target_device_id = ? AND status = 'pending')""",
                (device_id, device_id, *ACTIVE_VALUES, device_id),
            )
            if cursor.rowcount == 0:
                return False
            db.execute("DELETE FROM device_events WHERE device_id = ?", (device_id,))
            return True

    def add_device_event(self, device_id, now, event):
        """Append one event (registered, offline, disabled, ...) to the device's own history."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO device_events (device_id, at, kind, actor, detail) VALUES (?,?,?,?,?)",
                (device_id, now, event.kind, event.actor, to_db("detail", event.detail)),
            )

    def device_history(self, device_id, limit):
        """The device's latest ``limit`` events, its own and those of tasks on it, newest first."""
        rows = self._query(
            """SELECT * FROM (SELECT at, kind, actor, task_id, attempt, detail, 0 AS source, id FROM task_events
                              WHERE device_id = ? ORDER BY at DESC, id DESC LIMIT ?)
               UNION ALL
               SELECT * FROM (SELECT at, kind, actor, NULL, NULL, detail, 1, id FROM device_events
                              WHERE device_id = ? ORDER BY at DESC, id DESC LIMIT ?)
               ORDER BY at DESC, source, id DESC LIMIT ?""",  # at one instant, a device's own event came first
            (device_id, limit, device_id, limit, limit),
        )
        return [history_from_row(row) for row in rows]

    def count_devices_by_status(self):
        """A mapping of ``(status value, disabled)`` to the number of devices in it."""
        rows = self._query(f"SELECT {DEVICE_STATUS_SQL}, disabled, COUNT(*) FROM devices GROUP BY 1, 2")
        return {(status, bool(disabled)): count for status, disabled, count in rows}
