-- The SQLite schema of a new file. Bump SCHEMA_VERSION in sqlite.py when it changes, and add the migration that
-- brings a file of the version before to this one (MIGRATIONS there).
-- tasks: ``target_tags`` (JSON, sorted) are the tags a device must all have to take the task (NULL: any device);
-- ``batch_id`` the batch that made it. The store's own columns: ``due`` is 0 while a pending task's not_before was
-- still ahead or while it is held; ``held`` is 1 while a batch task waits for room under its max_in_flight.
-- (No comments at the ends of column lines: SQLite's DROP COLUMN, used by the migration tests, trips on them.)
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
    due INTEGER NOT NULL DEFAULT 1,
    target_tags TEXT,
    batch_id TEXT,
    held INTEGER NOT NULL DEFAULT 0
);
-- The pending queue in parts, so that finding what can start now never reads what cannot: tasks for any device,
-- tasks pinned to one (looked up only for devices with a free slot) and tasks for devices with some tags (looked
-- up only for tag sets a free device has), each in dispatch order and due; tasks scheduled for later, by time,
-- which join them when they fall due; and batch tasks held back by their batch's max_in_flight, in batch order.
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (priority DESC, created_at)
    WHERE status = 'pending' AND due = 1 AND target_device_id IS NULL AND target_tags IS NULL;
CREATE INDEX IF NOT EXISTS tasks_queue_pinned ON tasks (target_device_id, priority DESC, created_at)
    WHERE status = 'pending' AND due = 1 AND target_device_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_queue_tagged ON tasks (target_tags, priority DESC, created_at)
    WHERE status = 'pending' AND due = 1 AND target_tags IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_scheduled ON tasks (not_before) WHERE status = 'pending' AND due = 0 AND held = 0;
CREATE INDEX IF NOT EXISTS tasks_held ON tasks (batch_id, created_at) WHERE status = 'pending' AND held = 1;
CREATE INDEX IF NOT EXISTS tasks_batch ON tasks (batch_id, status) WHERE batch_id IS NOT NULL;
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
    disabled INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]',  -- JSON: sorted union of device_info.tags and operator_tags
    operator_tags TEXT NOT NULL DEFAULT '[]'  -- JSON: the tags an operator set (kept across registrations)
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

-- Many tasks made by one request; the counters count its tasks that ended, by final status.
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    mode TEXT NOT NULL,  -- each | spread
    target TEXT NOT NULL,  -- JSON: {"tags": [...]} | {"device_ids": [...]} | {"all": true}
    options TEXT NOT NULL,  -- JSON: what else was asked (priority, timeout, online_only, ...)
    status TEXT NOT NULL,  -- running | completed | aborted | cancelled
    total INTEGER NOT NULL,
    max_in_flight INTEGER,
    abort_failure_ratio REAL,
    abort_min_finished INTEGER,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    idempotency_key TEXT,
    idempotency_scope TEXT,
    request_hash TEXT
);
CREATE INDEX IF NOT EXISTS batches_created ON batches (created_at);
CREATE INDEX IF NOT EXISTS batches_idempotency ON batches (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Recurring dispatches: each fire time of ``cron`` (in ``timezone``) creates ``body`` (a task or a batch) once.
CREATE TABLE IF NOT EXISTS schedules (
    schedule_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    kind TEXT NOT NULL,  -- task | batch
    body TEXT NOT NULL,  -- JSON: the dispatch or batch body, as validated
    enabled INTEGER NOT NULL,
    misfire TEXT NOT NULL,  -- coalesce | skip
    next_run_at REAL,  -- the next fire time not yet run (NULL while disabled)
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run_at) WHERE enabled = 1;
-- One row per fire time run: the primary key makes each fire time create its task or batch once.
CREATE TABLE IF NOT EXISTS schedule_runs (
    schedule_id TEXT NOT NULL,
    fire_at REAL NOT NULL,
    ran_at REAL NOT NULL,
    task_id TEXT,
    batch_id TEXT,
    error TEXT,  -- JSON {message, error_code}: the run created nothing
    PRIMARY KEY (schedule_id, fire_at)
);

CREATE TABLE IF NOT EXISTS store_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at REAL NOT NULL
);
