-- Cluster mode's webhook outbox (`cluster::webhooks`): the events table is
-- the queue; per agency, how far notifications are settled (delivered or
-- dead-lettered). Advanced only by the coordinator (the holder of
-- partition 0's lease), fenced by that lease.

CREATE TABLE webhook_cursors (
    agency       text PRIMARY KEY,
    settled_upto bigint NOT NULL CHECK (settled_upto >= 0)
);
