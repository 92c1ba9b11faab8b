-- Version 3: fleet operations. Tags on tasks and devices, batches (and their held tasks), schedules. Never edited
-- once released; a later version adds a migration of its own.
ALTER TABLE tasks ADD COLUMN target_tags JSON;  -- sorted tags a device must all have to take the task (NULL: any)
ALTER TABLE tasks ADD COLUMN batch_id TEXT;  -- the batch that made the task
ALTER TABLE tasks ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;  -- waits for room under its batch's max_in_flight
-- The pending queue in parts (as in the SQLite schema): tasks for any device, pinned to one, for devices with some
-- tags; tasks scheduled for later; batch tasks held back.
DROP INDEX tasks_queue;
CREATE INDEX tasks_queue ON tasks (priority DESC, created_at, seq)
    WHERE status = 'pending' AND due AND target_device_id IS NULL AND target_tags IS NULL;
CREATE INDEX tasks_queue_tagged ON tasks ((target_tags::text), priority DESC, created_at, seq)
    WHERE status = 'pending' AND due AND target_tags IS NOT NULL;
DROP INDEX tasks_scheduled;
CREATE INDEX tasks_scheduled ON tasks (not_before) WHERE status = 'pending' AND NOT due AND NOT held;
CREATE INDEX tasks_held ON tasks (batch_id, created_at, seq) WHERE status = 'pending' AND held;
CREATE INDEX tasks_batch ON tasks (batch_id, status) WHERE batch_id IS NOT NULL;

ALTER TABLE devices ADD COLUMN tags JSONB NOT NULL DEFAULT '[]';  -- sorted union of device_info.tags and operator_tags
ALTER TABLE devices ADD COLUMN operator_tags JSON NOT NULL DEFAULT '[]';  -- the tags an operator set
-- sorted by code point, as Python sorts them (COLLATE "C"), whatever the database's collation
UPDATE devices SET tags = (
    SELECT COALESCE(jsonb_agg(DISTINCT (tag #>> '{}') COLLATE "C" ORDER BY (tag #>> '{}') COLLATE "C"), '[]'::jsonb)
    FROM json_array_elements(device_info -> 'tags') AS tag WHERE json_typeof(tag) = 'string')
WHERE json_typeof(device_info -> 'tags') = 'array';
CREATE INDEX devices_tags ON devices USING GIN (tags);

-- Many tasks made by one request; the counters count its tasks that ended, by final status.
CREATE TABLE batches (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    batch_id TEXT PRIMARY KEY,
    task_type TEXT NOT NULL,
    mode TEXT NOT NULL,  -- each | spread
    target JSON NOT NULL,  -- {"tags": [...]} | {"device_ids": [...]} | {"all": true}
    options JSON NOT NULL,  -- what else was asked (priority, timeout, online_only, ...)
    status TEXT NOT NULL,  -- running | completed | aborted | cancelled
    total INTEGER NOT NULL,
    max_in_flight INTEGER,
    abort_failure_ratio DOUBLE PRECISION,
    abort_min_finished INTEGER,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    idempotency_key TEXT,  -- as on tasks: whose key (scope) and a hash of what was asked
    idempotency_scope TEXT,
    request_hash TEXT
);
CREATE INDEX batches_created ON batches (created_at, seq);
CREATE INDEX batches_idempotency ON batches (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Recurring dispatches: each fire time of ``cron`` (in ``timezone``) creates ``body`` (a task or a batch) once.
CREATE TABLE schedules (
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    schedule_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    kind TEXT NOT NULL,  -- task | batch
    body JSON NOT NULL,  -- the dispatch or batch body, as validated
    enabled BOOLEAN NOT NULL,
    misfire TEXT NOT NULL,  -- coalesce | skip
    next_run_at DOUBLE PRECISION,  -- the next fire time not yet run (NULL while disabled)
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE enabled;
-- One row per fire time run: the primary key makes each fire time create its task or batch once.
CREATE TABLE schedule_runs (
    schedule_id TEXT NOT NULL,
    fire_at DOUBLE PRECISION NOT NULL,
    ran_at DOUBLE PRECISION NOT NULL,
    task_id TEXT,
    batch_id TEXT,
    error JSON,  -- {message, error_code}: the run created nothing
    PRIMARY KEY (schedule_id, fire_at)
);
