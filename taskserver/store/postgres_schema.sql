-- The PostgreSQL schema at version 1, created unqualified in the connection's search_path. A later version adds a
-- migration to POSTGRES_MIGRATIONS in postgres.py; this file is never edited once released.
CREATE TABLE tasks (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,  -- insertion order: ties of created_at
    task_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    data JSON NOT NULL,
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
    result JSON,
    error_code TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    dispatched_at DOUBLE PRECISION,
    delivered_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    not_before DOUBLE PRECISION,
    idempotency_key TEXT,
    idempotency_scope TEXT,
    request_hash TEXT,
    due BOOLEAN NOT NULL DEFAULT TRUE  -- false while a pending task's not_before was still ahead
);
-- The pending queue in three parts (as in the SQLite schema): tasks for any device, tasks pinned to one, both in
-- dispatch order and due; and tasks scheduled for later, by time.
CREATE INDEX tasks_queue ON tasks (priority DESC, created_at, seq)
    WHERE status = 'pending' AND due AND target_device_id IS NULL;
CREATE INDEX tasks_queue_pinned ON tasks (target_device_id, priority DESC, created_at, seq)
    WHERE status = 'pending' AND due AND target_device_id IS NOT NULL;
CREATE INDEX tasks_scheduled ON tasks (not_before) WHERE status = 'pending' AND NOT due;
CREATE INDEX tasks_active ON tasks (device_id) WHERE status IN ('dispatched', 'running');
CREATE INDEX tasks_device ON tasks (device_id, status);
CREATE INDEX tasks_created ON tasks (created_at, seq);
CREATE INDEX tasks_status_created ON tasks (status, created_at);
CREATE INDEX tasks_type_created ON tasks (task_type, created_at);
CREATE INDEX tasks_target ON tasks (target_device_id);
CREATE INDEX tasks_status_type ON tasks (status, task_type);
CREATE INDEX tasks_idempotency ON tasks (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_finished ON tasks (finished_at, status) WHERE finished_at IS NOT NULL;

CREATE TABLE device_tokens (
    device_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL
);

-- the cancel_task of an attempt that ended while its device was away, sent when the device registers again
CREATE TABLE owed_cancels (
    device_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (device_id, task_id)
);

CREATE TABLE task_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    device_id TEXT,
    attempt INTEGER,
    detail JSON
);
CREATE INDEX task_events_task ON task_events (task_id, id);
CREATE INDEX task_events_device ON task_events (device_id, at);

CREATE TABLE devices (
    device_id TEXT PRIMARY KEY,
    device_name TEXT NOT NULL,
    device_info JSON NOT NULL,
    capacity INTEGER NOT NULL,
    connected BOOLEAN NOT NULL DEFAULT FALSE,
    sid TEXT,
    registered_at DOUBLE PRECISION,
    last_heartbeat DOUBLE PRECISION,
    disconnected_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    active_tasks INTEGER NOT NULL DEFAULT 0,
    disabled BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX devices_connected ON devices (connected);
-- exactly the devices that can take a task now
CREATE INDEX devices_free ON devices (active_tasks, registered_at)
    WHERE connected AND NOT disabled AND active_tasks < capacity;

CREATE TABLE device_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail JSON
);
CREATE INDEX device_events_device ON device_events (device_id, at);

CREATE TABLE store_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at DOUBLE PRECISION NOT NULL
);
