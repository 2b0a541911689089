-- stem Postgres schema, version 3: pauses scoped to a worker, and signed.
-- A pause row is keyed by (namespace, worker, queue): worker is '' for
-- every worker of the control namespace, a node name, or a full worker id;
-- a worker applies only the rows that designate it. sig is the record's
-- HMAC (STEM_CONTROL_SIGNING_KEY), '' when unsigned. Existing pauses become
-- namespace-wide, unsigned.
ALTER TABLE {schema}.paused_queues ADD COLUMN worker text NOT NULL DEFAULT '';
ALTER TABLE {schema}.paused_queues ADD COLUMN requested_by text NOT NULL DEFAULT '';
ALTER TABLE {schema}.paused_queues ADD COLUMN sig text NOT NULL DEFAULT '';
ALTER TABLE {schema}.paused_queues DROP CONSTRAINT paused_queues_pkey;
ALTER TABLE {schema}.paused_queues ADD PRIMARY KEY (namespace, worker, queue);
