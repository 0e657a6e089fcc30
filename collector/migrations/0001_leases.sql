-- Cluster mode: which collectors are alive, and which owns each partition.
-- `cluster::lease` holds the rules; `cluster::pg` applies them as
-- compare-and-sets on (partition, epoch).

CREATE TABLE collectors (
    id           text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);

CREATE TABLE partition_leases (
    partition  integer PRIMARY KEY CHECK (partition >= 0),
    -- NULL: released (or never held).
    owner      text,
    -- Bumped on every change of owner; every state write carries it.
    epoch      bigint NOT NULL CHECK (epoch >= 0),
    expires_at timestamptz NOT NULL
);
