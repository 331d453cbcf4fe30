-- Several nodes on one database: each node claims the chunks it runs, heartbeats, and
-- re-queues the chunks of a node that stopped heartbeating (see `store::postgres::cluster`).

-- The poold processes sharing this database, one row per start (a restarted process is a new
-- node). `heartbeat_at` is the server's clock, so nodes' clocks never matter.
create table nodes (
    id           text primary key,              -- UUIDv7, new at every start
    name         text not null,                 -- --node-name
    address      text not null,                 -- where it listens
    started_at   text not null,                 -- RFC 3339
    heartbeat_at timestamptz not null,
    lease_s      double precision not null check (lease_s > 0), -- --node-lease
    workers      bigint not null,
    -- alive; draining (shutting down); stopped (shut down, its claims released); lost (its
    -- heartbeat went older than its lease: its claims were re-queued by another node).
    state        text not null check (state in ('alive', 'draining', 'stopped', 'lost')),
    pool         text not null default '{"queued_chunks":0,"workers":[]}' -- its last pool snapshot (JSON)
);

-- A queued chunk a node runs (or is about to) is claimed: its node (`owner`) and a number the
-- node gave this claim (`lease`), both checked when the chunk is recorded, so that a node
-- whose claim was taken away (it was paused past its lease) cannot record it. `attempts`
-- counts the runs lost with a node.
alter table chunks add column owner text;
alter table chunks add column lease bigint;
alter table chunks add column attempts bigint not null default 0;
-- Unclaimed queued chunks, in order (what a claim takes)…
create index chunks_unclaimed on chunks (job, start) where state = 0 and owner is null;
-- …and the claims of a node (what a re-queue releases).
create index chunks_claimed on chunks (owner) where owner is not null and state = 0;

-- The node whose connection uploads the job's items (NDJSON), while it does: if that node
-- goes, the upload can never end, and the job fails.
alter table jobs add column upload_node text;
-- Completion numbers are handed out per job under the job row's lock, so that chunks of a
-- job become visible in the order of their numbers, whichever node records them (a reader
-- resuming after number N never misses a smaller one committed later).
alter table jobs add column recorded bigint not null default 0;

-- What applies to the whole cluster: `POST /v1/pool/close` and `/open`.
create table cluster (
    one       boolean primary key default true check (one),
    accepting boolean not null
);
insert into cluster (accepting) values (true);
-- Jobs recorded before this migration go on from their highest number (from `chunks_seq`).
update jobs set recorded = coalesce((select max(seq) from chunks where chunks.job = jobs.key), 0);
