-- poold's schema. Append-only: never edit a migration that has landed; add a new file.

-- One row per map job. Counters `done`/`failed` are kept in step with `results` by the
-- single writer, in the same transaction that records a chunk's results.
create table jobs (
    id            text primary key,          -- UUIDv7: sorts by creation time
    function      text not null,
    kwargs        text not null,             -- JSON object (functools.partial keywords)
    star          integer not null check (star in (0, 1)),
    chunksize     integer not null check (chunksize >= 1),
    timeout_s     real check (timeout_s is null or timeout_s > 0),
    max_attempts  integer not null check (max_attempts >= 1),
    on_error      text not null check (on_error in ('continue', 'fail_fast')),
    priority      integer not null,
    metadata      text not null,             -- JSON object, returned as given
    status        text not null check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    total         integer not null check (total >= 0),
    done          integer not null default 0 check (done >= 0 and done <= total),
    failed        integer not null default 0 check (failed >= 0 and failed <= done),
    error         text,
    created_at    text not null,             -- RFC 3339
    started_at    text,
    finished_at   text
);
create index jobs_status on jobs (status, id);

-- The job's items, split in chunks as they are dispatched to workers. A chunk's results are
-- recorded in the same transaction that moves it to 'done', so a chunk is recorded once.
create table chunks (
    job_id       text not null references jobs (id) on delete cascade,
    chunk_index  integer not null,
    start_index  integer not null,           -- item index of the chunk's first item
    size         integer not null check (size >= 1),
    items        text not null,              -- JSON array of the chunk's items
    status       text not null check (status in ('queued', 'done', 'cancelled')),
    primary key (job_id, chunk_index)
) without rowid;

-- One row per item that has an outcome. Exactly one of value/error is set. The rowid keeps
-- completion order, for imap_unordered-style streams.
create table results (
    job_id      text not null references jobs (id) on delete cascade,
    item_index  integer not null,
    value       text,                        -- JSON text
    error       text,                        -- JSON {"type","message","traceback"}
    check ((value is null) <> (error is null))
);
create unique index results_job_item on results (job_id, item_index);
