-- Version 2: several nodes. Each node's lease (renewed by the database clock, epoch seconds), and which node holds
-- each device's connection. Never edited once released; a later version adds a migration of its own.
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    incarnation TEXT NOT NULL,  -- the process holding the id: another process taking the id changes it
    joined_at DOUBLE PRECISION NOT NULL,
    renewed_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
ALTER TABLE devices ADD COLUMN node_id TEXT;  -- the node holding the device's connection (NULL: one node, or away)
CREATE INDEX devices_node ON devices (node_id) WHERE node_id IS NOT NULL;
