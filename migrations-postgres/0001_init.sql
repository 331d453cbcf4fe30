-- poold's schema on PostgreSQL: the same tables as SQLite's after migrations/0007_store_v2.sql
-- (see that file for what each column means), in PostgreSQL's types. This folder is
-- append-only, like `migrations/`: never edit a migration that has landed, add the next one.
-- Times are RFC 3339 text, as on SQLite, so that both backends return the same texts.

create table jobs (
    key             bigint generated always as identity primary key, -- grows with creation
    id              text not null unique,       -- UUIDv7, the public id
    function        text not null,
    kwargs          text not null,              -- JSON object, returned as given
    star            boolean not null,
    chunksize       bigint not null check (chunksize >= 1),
    timeout_s       double precision check (timeout_s is null or timeout_s > 0),
    max_attempts    bigint not null check (max_attempts >= 1),
    on_error        text not null check (on_error in ('continue', 'fail_fast')),
    priority        bigint not null,
    metadata        text not null,              -- JSON object, returned as given
    codec           text not null default 'json' check (codec in ('json', 'pickle')),
    max_concurrency bigint check (max_concurrency is null or max_concurrency >= 1),
    status          text not null check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    -- While true, items are still being uploaded: `total` counts those stored so far.
    ingesting       boolean not null default false,
    total           bigint not null check (total >= 0),
    done            bigint not null default 0 check (done >= 0 and done <= total),
    failed          bigint not null default 0 check (failed >= 0 and failed <= done),
    error           text,
    created_at      text not null,              -- RFC 3339
    started_at      text,
    finished_at     text,
    idempotency_key text,
    request_hash    text                        -- SHA-256 of the normalized request
);
create index jobs_by_status on jobs (status, key);
create unique index jobs_by_idempotency_key on jobs (idempotency_key) where idempotency_key is not null;

-- A chunk is queued (0) until its outcomes are recorded, in the same statement that makes it
-- done (1), so it is recorded once; a chunk of a job that ended first is dropped (2).
-- A done chunk's items are emptied (nothing reads them again).
create table chunks (
    job      bigint not null references jobs (key) on delete cascade,
    start    bigint not null,                   -- index of its first item
    size     bigint not null check (size >= 1),
    state    smallint not null check (state in (0, 1, 2)),
    seq      bigint,                            -- when done: the order chunks were recorded in
    failed   bigint,                            -- when done: item errors among its outcomes
    outcomes text,                              -- when done: JSON array, one entry per item
    items    text not null,                     -- JSON array of its items; '' once done
    check ((state = 1) = (outcomes is not null and seq is not null and failed is not null)),
    primary key (job, start)
);
-- Completion order (imap_unordered) within a job.
create index chunks_by_seq on chunks (job, seq) where seq is not null;
-- Jobs with item errors, for `results?failed=true`.
create index chunks_failed on chunks (job, start) where failed > 0;

-- Completion numbers (`chunks.seq`) come from this sequence, not from a counter in one
-- writer's memory, so that they stay unique while several nodes record chunks.
create sequence chunks_seq as bigint;
