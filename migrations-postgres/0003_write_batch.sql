-- The writes a batch is mostly made of (new jobs, job starts, chunk records) in one call, so
-- that such a batch costs the writer one round trip to the server instead of one per statement
-- (and one more for BEGIN and COMMIT each): a single statement commits on its own. Called by
-- `store::postgres::ops` (which builds the arrays); the comments below say what each step
-- does. A change to this function is a new migration with `create or replace function`.
--
-- The new jobs come first: nothing else in a batch can refer to them, since no one hears of a
-- job before its creation commits.
create function poold_write(
    node          text,      -- the writing node (it claims the chunks handed to its supervisor)
    new_jobs      json,      -- rows of `jobs`, by column name
    piece_jobs    text[],    -- per piece of new chunks: its job's id,
    pieces        text[],    --   the piece (a JSON array of [start, size, "items"]),
    piece_leases  bigint[],  --   the lease under which `node` claims its chunks, or null
    start_ids     text[],    -- jobs that started running,
    start_times   text[],    --   and when
    record_ids    text[],    -- per chunk record: its job's id,
    record_starts bigint[],  --   the chunk's start,
    record_failed bigint[],  --   its item errors,
    record_outs   text[],    --   its outcomes (JSON text, stored as given),
    record_fails  text[],    --   why its job fails (fail_fast), or null,
    record_leases bigint[],  --   the claim it ran under
    recorded_at   text,      -- when the records were taken (finishes jobs they complete)
    notices       text[]     -- payloads for the other nodes (channel `poold`)
) returns bigint             -- how many records marked their chunk done
language plpgsql as $$
declare
    marked bigint := 0;
begin
    if json_array_length(new_jobs) > 0 then
        with j as (
            insert into jobs (id, function, kwargs, star, chunksize, timeout_s, max_attempts,
                              on_error, priority, metadata, status, total, created_at,
                              started_at, finished_at, idempotency_key, request_hash,
                              ingesting, codec, max_concurrency, upload_node)
            select r.id, r.function, r.kwargs, r.star, r.chunksize, r.timeout_s,
                   r.max_attempts, r.on_error, r.priority, r.metadata, r.status, r.total,
                   r.created_at, r.started_at, r.finished_at, r.idempotency_key,
                   r.request_hash, r.ingesting, r.codec, r.max_concurrency, r.upload_node
            from json_populate_recordset(null::jobs, new_jobs) as r
            returning key, id)
        insert into chunks (job, start, size, items, state, owner, lease)
        select j.key, (e ->> 0)::bigint, (e ->> 1)::bigint, e ->> 2, 0,
               case when p.lease is not null then node end, p.lease
        from unnest(piece_jobs, pieces, piece_leases) as p(id, piece, lease)
        join j on j.id = p.id
        cross join lateral json_array_elements(p.piece::json) as e;
    end if;

    if cardinality(start_ids) > 0 or cardinality(record_ids) > 0 then
        -- One statement for the job starts and the chunk records, so that each job row
        -- changes once. Its steps:
        -- `locked`: the rows of the jobs started or recorded, locked in key order (held to the
        --   commit; one order, so two nodes never wait on each other in a circle). A row
        --   another node changed since this statement began is read as that node committed
        --   it.
        -- `h`: completion numbers for the records, from the job's `recorded` under that lock:
        --   a job's chunks become visible in the order of their numbers, whichever node
        --   records them. A number spent on a record refused below is simply skipped.
        -- `m`: the recorded chunks that are still queued and still claimed by this node under
        --   the record's lease are marked done, with their outcomes and numbers. A chunk
        --   recorded already, of a job that ended, or whose claim went to another node
        --   meanwhile is skipped. The owner is compared through `coalesce` so that the
        --   planner finds the chunks by their primary key (on the index of claims, whose
        --   statistics lag behind a new job's chunks, it once matched every claim against
        --   every record).
        -- `counted`: each job's numbers handed out, its counters moved by what `m` marked
        --   (only those count), completed at its total, failed when a record says fail_fast
        --   tripped, running when it started.
        with r as (
                 select * from unnest(record_ids, record_starts, record_failed, record_outs,
                                      record_fails, record_leases)
                     with ordinality as r(id, start, failed, outcomes, fail, lease, ord)),
             n as (
                 select coalesce(s.id, rn.id) as id, s.at, coalesce(rn.n, 0) as n
                 from (select id, min(at) as at from unnest(start_ids, start_times) as s(id, at)
                       group by id) as s
                 full join (select id, count(*) as n from r group by id) as rn on rn.id = s.id),
             locked as (
                 select key, id, recorded from jobs where id in (select id from n)
                 order by key for update),
             h as (
                 select l.key as job, r.start, r.failed, r.outcomes, r.fail, r.lease,
                        l.recorded + row_number() over (partition by r.id order by r.ord) as seq
                 from r join locked as l on l.id = r.id),
             m as (
                 update chunks set state = 1, seq = h.seq, failed = h.failed,
                                   outcomes = h.outcomes, items = '', owner = null, lease = null
                 from h
                 where chunks.job = h.job and chunks.start = h.start and chunks.state = 0
                   and coalesce(chunks.owner, '') = node and chunks.lease = h.lease
                 returning chunks.job, chunks.size, h.failed, h.fail),
             c as (
                 select l.key as job, n.n, n.at, coalesce(sum(m.size), 0)::bigint as items,
                        coalesce(sum(m.failed), 0)::bigint as errors, max(m.fail) as fail
                 from locked as l join n on n.id = l.id left join m on m.job = l.key
                 group by l.key, n.n, n.at),
             counted as (
                 update jobs set
                     recorded = jobs.recorded + c.n,
                     done = jobs.done + c.items,
                     failed = jobs.failed + c.errors,
                     status = case when jobs.status not in ('queued', 'running') then jobs.status
                                   when c.fail is not null then 'failed'
                                   when jobs.done + c.items >= jobs.total and not jobs.ingesting
                                       then 'completed'
                                   when c.at is not null then 'running'
                                   else jobs.status end,
                     started_at = case when jobs.status = 'queued' and c.at is not null then c.at
                                       else jobs.started_at end,
                     error = case when jobs.status in ('queued', 'running') and c.fail is not null
                                  then c.fail else jobs.error end,
                     ingesting = case when c.fail is not null then false else jobs.ingesting end,
                     finished_at = case when jobs.status in ('queued', 'running')
                                             and (c.fail is not null
                                                  or (jobs.done + c.items >= jobs.total
                                                      and not jobs.ingesting))
                                        then recorded_at else jobs.finished_at end
                 from c
                 where jobs.key = c.job)
        select count(*) into marked from m;

        -- The queued chunks of jobs whose fail_fast tripped and that failed are dropped.
        if cardinality(array_remove(record_fails, null)) > 0 then
            update chunks set state = 2
            where state = 0 and job in (
                select key from jobs
                where status = 'failed'
                  and id in (select f.id from unnest(record_ids, record_fails) as f(id, fail)
                             where f.fail is not null));
        end if;
    end if;

    perform pg_notify('poold', p) from unnest(notices) as p;
    return marked;
end
$$;
