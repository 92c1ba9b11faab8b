-- Version 4: the GIN index of devices' tags takes each change at once (fastupdate off). A device's row changes each
-- time it starts or ends a task, and each change went to the index's pending list, which every look for a free device
-- with some tags read whole: a backlog of tasks for tags slowed every dispatch. Never edited once released; a later
-- version adds a migration of its own.
ALTER INDEX devices_tags SET (fastupdate = off);
SELECT gin_clean_pending_list('devices_tags'::regclass);
