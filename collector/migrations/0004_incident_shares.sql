-- Cluster mode's agency-wide incidents (`rules::incident::Board`): each
-- partition's share of each (agency, probe, target) group, written by the
-- partition's owner in its fenced commits; the coordinator (the holder of
-- partition 0's lease) tails them by rev and decides incidents. A share
-- whose partition has no member left is kept with of_units = 0 (a tailing
-- reader cannot see a delete). Revs are taken under the commit's order
-- lock, like units.rev, so tailing by rev never skips a share.

CREATE SEQUENCE incident_shares_rev AS bigint;

CREATE TABLE incident_shares (
    agency    text NOT NULL,
    probe     text NOT NULL,
    target    text NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    of_units  integer NOT NULL CHECK (of_units >= 0),
    failing   jsonb NOT NULL,
    as_of_ms  bigint NOT NULL,
    rev       bigint NOT NULL,
    PRIMARY KEY (agency, probe, target, partition)
);

CREATE INDEX incident_shares_by_rev ON incident_shares (rev);
