-- The SQLite schema of a new file. Bump SCHEMA_VERSION in sqlite.py when it changes, and add the migration that
-- brings a file of the version before to this one (MIGRATIONS there).
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    data TEXT NOT NULL,
    status TEXT NOT NULL,
    device_id TEXT,
    target_device_id TEXT,
    avoid_device_id TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    timeout INTEGER NOT NULL,
    max_retries INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    progress INTEGER NOT NULL DEFAULT 0,
    progress_message TEXT,
    result TEXT,
    error_code TEXT,
    created_at REAL NOT NULL,
    dispatched_at REAL,
    delivered_at REAL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    not_before REAL,
    idempotency_key TEXT,
    idempotency_scope TEXT,
    request_hash TEXT,
    due INTEGER NOT NULL DEFAULT 1  -- the store's own: 0 while a pending task's not_before was still ahead
);
-- The pending queue in three parts, so that finding what can start now never reads what cannot: tasks for any
-- device, and tasks pinned to one (looked up only for devices with a free slot), both in dispatch order and due;
-- and tasks scheduled for later, by time, which join the first two when they fall due.
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (priority DESC, created_at)
    WHERE status = 'pending' AND due = 1 AND target_device_id IS NULL;
CREATE INDEX IF NOT EXISTS tasks_queue_pinned ON tasks (target_device_id, priority DESC, created_at)
    WHERE status = 'pending' AND due = 1 AND target_device_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_scheduled ON tasks (not_before) WHERE status = 'pending' AND due = 0;
CREATE INDEX IF NOT EXISTS tasks_device ON tasks (device_id, status);
CREATE INDEX IF NOT EXISTS tasks_created ON tasks (created_at);
CREATE INDEX IF NOT EXISTS tasks_status_created ON tasks (status, created_at);
CREATE INDEX IF NOT EXISTS tasks_type_created ON tasks (task_type, created_at);
CREATE INDEX IF NOT EXISTS tasks_target ON tasks (target_device_id);
CREATE INDEX IF NOT EXISTS tasks_status_type ON tasks (status, task_type);
CREATE INDEX IF NOT EXISTS tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at, status) WHERE finished_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS device_tokens (
    device_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);

-- the cancel_task of an attempt that ended while its device was away, sent when the device registers again
CREATE TABLE IF NOT EXISTS owed_cancels (
    device_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (device_id, task_id)
);

CREATE TABLE IF NOT EXISTS task_events (
    id INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    device_id TEXT,
    attempt INTEGER,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS task_events_task ON task_events (task_id, id);
CREATE INDEX IF NOT EXISTS task_events_device ON task_events (device_id, at);

CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    device_name TEXT NOT NULL,
    device_info TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    connected INTEGER NOT NULL DEFAULT 0,
    sid TEXT,
    registered_at REAL,
    last_heartbeat REAL,
    disconnected_at REAL,
    created_at REAL NOT NULL,
    active_tasks INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS devices_connected ON devices (connected);
-- exactly the devices that can take a task now: finding one (or none) never scans the fleet
CREATE INDEX IF NOT EXISTS devices_free ON devices (active_tasks, registered_at)
    WHERE connected = 1 AND disabled = 0 AND active_tasks < capacity;

CREATE TABLE IF NOT EXISTS device_events (
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS device_events_device ON device_events (device_id, at);

CREATE TABLE IF NOT EXISTS store_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at REAL NOT NULL
);
