-- Store v2: one row per chunk holds its items and, once it has run, all its outcomes (values,
-- errors and logs together), instead of one `results` row per item; jobs get an integer key
-- (the public id stays the UUIDv7 text). The data of the earlier schema is carried over: every
-- job keeps its key fields and counters, every chunk its items and state, and the results of
-- each done chunk become that chunk's outcomes, in item order, with the order in which chunks
-- were recorded kept as `seq`.

alter table jobs rename to jobs_v1;
alter table chunks rename to chunks_v1;
alter table results rename to results_v1;

create table jobs (
    key             integer primary key,        -- internal key (the rowid); grows with creation
    id              text not null unique,       -- UUIDv7, the public id
    function        text not null,
    kwargs          text not null,              -- JSON object
    star            integer not null check (star in (0, 1)),
    chunksize       integer not null check (chunksize >= 1),
    timeout_s       real check (timeout_s is null or timeout_s > 0),
    max_attempts    integer not null check (max_attempts >= 1),
    on_error        text not null check (on_error in ('continue', 'fail_fast')),
    priority        integer not null,
    metadata        text not null,              -- JSON object, returned as given
    codec           text not null default 'json' check (codec in ('json', 'pickle')),
    max_concurrency integer check (max_concurrency is null or max_concurrency >= 1),
    status          text not null check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    -- While 1, items are still being uploaded: `total` counts those stored so far.
    ingesting       integer not null default 0 check (ingesting in (0, 1)),
    total           integer not null check (total >= 0),
    done            integer not null default 0 check (done >= 0 and done <= total),
    failed          integer not null default 0 check (failed >= 0 and failed <= done),
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
-- The outcomes come before the items, and a done chunk's items are emptied (nothing reads
-- them again): reading a page of outcomes never walks through the items' overflow pages.
create table chunks (
    job      integer not null references jobs (key) on delete cascade,
    start    integer not null,                  -- index of its first item
    size     integer not null check (size >= 1),
    state    integer not null check (state in (0, 1, 2)),
    seq      integer,                           -- when done: the order chunks were recorded in
    failed   integer,                           -- when done: item errors among its outcomes
    outcomes text,                              -- when done: JSON array, one entry per item
    items    text not null,                     -- JSON array of its items; '' once done
    check ((state = 1) = (outcomes is not null and seq is not null and failed is not null)),
    primary key (job, start)
) without rowid;
-- Completion order (imap_unordered) within a job.
create index chunks_by_seq on chunks (job, seq) where seq is not null;
-- Jobs with item errors, for `results?failed=true`.
create index chunks_failed on chunks (job, start) where failed > 0;

insert into jobs (id, function, kwargs, star, chunksize, timeout_s, max_attempts, on_error,
                  priority, metadata, codec, max_concurrency, status, ingesting, total, done,
                  failed, error, created_at, started_at, finished_at, idempotency_key,
                  request_hash)
select id, function, kwargs, star, chunksize, timeout_s, max_attempts, on_error, priority,
       metadata, codec, max_concurrency, status, ingesting, total, done, failed, error,
       created_at, started_at, finished_at, idempotency_key, request_hash
from jobs_v1 order by id;

-- A done chunk's outcomes: its results rows in item order; `seq` follows the order its first
-- result was recorded in (results' rowid). Each result finds its chunk through an index on the
-- chunks' start (dropped with the old table).
create index chunks_v1_by_start on chunks_v1 (job_id, start_index);

insert into chunks (job, start, size, items, state, seq, outcomes, failed)
select j.key, c.start_index, c.size, case when c.status = 'done' then '' else c.items end,
       case c.status when 'queued' then 0 when 'done' then 1 else 2 end,
       case when c.status = 'done' then coalesce(r.first_rowid, 0) end,
       case when c.status = 'done' then coalesce(r.outcomes, '[]') end,
       case when c.status = 'done' then coalesce(r.failed, 0) end
from chunks_v1 as c
join jobs as j on j.id = c.job_id
left join (
    select o.job_id, o.chunk_start, min(o.rowid) as first_rowid,
           json_group_array(json(o.outcome) order by o.item_index) as outcomes,
           sum(o.is_error) as failed
    from (
        select r.rowid, r.job_id, r.item_index,
               (select max(c2.start_index) from chunks_v1 as c2
                where c2.job_id = r.job_id and c2.start_index <= r.item_index) as chunk_start,
               case when r.error is null
                    then case when r.log is null then json_object('value', json(r.value))
                              else json_object('value', json(r.value), 'log', r.log) end
                    else case when r.log is null then json_object('error', json(r.error))
                              else json_object('error', json(r.error), 'log', r.log) end
               end as outcome,
               r.error is not null as is_error
        from results_v1 as r
    ) as o
    group by o.job_id, o.chunk_start
) as r on r.job_id = c.job_id and r.chunk_start = c.start_index;

drop table results_v1;
drop table chunks_v1;
drop table jobs_v1;
