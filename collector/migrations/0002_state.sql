-- Cluster mode: the collector's state (`store::PgStore`, the PostgreSQL
-- `Store`). Every u64 is a bigint: event ids, revs, times (unix ms) and
-- seqs fit in 63 bits; a boot id is random, so it is stored as
-- `boot XOR 2^63` (bigint order is then u64 order). The contract is at the
-- top of `collector/src/store/pg_store.rs`.

-- Watermarks and counters, one row each:
-- * raw_pruned_before: raw samples before this minute are gone (or going);
--   a sample committed below it is `late` and merged into its rollups.
-- * minutes_pruned_before / hours_pruned_before: minute and hour rollups
--   before these are gone.
-- * events_pruned_through: the highest event id prune deleted (event ids
--   are never given twice, even once every event is pruned).
CREATE TABLE store_meta (
    key   text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO store_meta (key, value) VALUES
    ('raw_pruned_before', 0),
    ('minutes_pruned_before', 0),
    ('hours_pruned_before', 0),
    ('events_pruned_through', 0);

-- The unit registry. `rev` grows with every upsert (taken under the
-- state-order lock, so revs become visible in order: a reader paging by rev
-- never skips one); `partition` is `cluster::partition::of` the unit.
CREATE SEQUENCE units_rev AS bigint;
CREATE TABLE units (
    agency    text NOT NULL,
    unit      text NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    rev       bigint NOT NULL,
    record    jsonb NOT NULL,
    PRIMARY KEY (agency, unit)
);
CREATE INDEX units_by_rev ON units (rev);
CREATE INDEX units_by_partition ON units (partition);

-- Raw records: the wire encoding of a one-record message. `late`: committed
-- with an event time below raw_pruned_before (retention merges and deletes
-- these; the others are deleted by time).
CREATE TABLE samples (
    agency  text NOT NULL,
    unit    text NOT NULL,
    boot    bigint NOT NULL,
    seq     bigint NOT NULL,
    at_ms   bigint NOT NULL,
    late    boolean NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (agency, unit, boot, seq)
);
CREATE INDEX samples_by_time ON samples (agency, unit, at_ms, boot, seq);
CREATE INDEX samples_at ON samples (at_ms);

-- Minutes that got records since retention last rolled them.
-- `marked_at`: the marking transaction's start; a retention round takes the
-- marks from before it started.
CREATE TABLE dirty_minutes (
    agency    text NOT NULL,
    unit      text NOT NULL,
    minute_ms bigint NOT NULL,
    marked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agency, unit, minute_ms)
);

-- Minute and hour rollups (`store::rollup::encode`).
CREATE TABLE rollups (
    agency   text NOT NULL,
    unit     text NOT NULL,
    res      text NOT NULL CHECK (res IN ('minute', 'hour')),
    start_ms bigint NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (agency, unit, res, start_ms)
);
CREATE INDEX rollups_by_start ON rollups (res, start_ms);

-- Status transitions and incident changes; ids from the store (commit).
-- `unit`: a transition's unit, NULL for an incident. `at_ms`: the event's
-- time for retention (an incident's end, else its start).
CREATE TABLE events (
    id     bigint PRIMARY KEY CHECK (id > 0),
    agency text NOT NULL,
    unit   text,
    at_ms  bigint NOT NULL,
    change jsonb NOT NULL
);
CREATE INDEX events_by_agency ON events (agency, id);
CREATE INDEX events_by_unit ON events (agency, unit, id) WHERE unit IS NOT NULL;
CREATE INDEX events_at ON events (at_ms);

-- The latest version of every incident (agency-wide, not partitioned).
CREATE TABLE incidents (
    id       text PRIMARY KEY,
    agency   text NOT NULL,
    ended_ms bigint,
    incident jsonb NOT NULL
);
CREATE INDEX incidents_ended ON incidents (ended_ms) WHERE ended_ms IS NOT NULL;

CREATE TABLE enrollments (
    agency     text NOT NULL,
    unit       text NOT NULL,
    enrollment jsonb NOT NULL,
    PRIMARY KEY (agency, unit)
);
