-- The writes a batch is mostly made of (new jobs, job starts, chunk records) in one call, so
-- that such a batch costs the writer one round trip to the server instead of one per statement
-- (and one more for BEGIN and COMMIT each): a single statement commits on its own. Called by
-- `store::postgres::ops`, which documents each step; a change to this function is a new
-- migration with `create or replace function`.
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
    seq_ids  text[];
    seq_prev bigint[];
    marked   bigint := 0;
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

    if cardinality(start_ids) > 0 then
        update jobs set status = 'running', started_at = s.at
        from unnest(start_ids, start_times) as s(id, at)
        where jobs.id = s.id and jobs.status = 'queued';
    end if;

    if cardinality(record_ids) > 0 then
        -- Completion numbers, taken from each job's row under its lock (held to the commit;
        -- jobs locked in one order, so two nodes never wait on each other in a circle): a
        -- job's chunks become visible in the order of their numbers, whichever node records
        -- them. A number spent on a record that is refused below is simply skipped.
        with n as (select id, count(*) as n from unnest(record_ids) as r(id) group by id),
             locked as (select key, id from jobs where id in (select id from n)
                        order by key for update),
             u as (update jobs set recorded = jobs.recorded + n.n
                   from locked join n on n.id = locked.id
                   where jobs.key = locked.key
                   returning jobs.id, jobs.recorded - n.n as prev)
        select coalesce(array_agg(u.id), '{}'), coalesce(array_agg(u.prev), '{}')
        into seq_ids, seq_prev
        from u;

        -- Mark the recorded chunks that are still queued and still claimed by this node under
        -- the record's lease done, with their outcomes and numbers, and move their jobs'
        -- counters by what was marked (completing a job at its total, failing one whose
        -- record says fail_fast tripped), in one statement, so that only the chunks marked
        -- here count. A chunk recorded already, of a job that ended, or whose claim went to
        -- another node meanwhile is skipped. The owner is compared through `coalesce` so that
        -- the planner finds the chunks by their primary key (on the index of claims, whose
        -- statistics lag behind a new job's chunks, it once matched every claim against
        -- every record).
        with r as (
                 select * from unnest(record_ids, record_starts, record_failed, record_outs,
                                      record_fails, record_leases)
                     with ordinality as r(id, start, failed, outcomes, fail, lease, ord)),
             h as (
                 select j.key as job, r.start, r.failed, r.outcomes, r.fail, r.lease,
                        s.prev + row_number() over (partition by r.id order by r.ord) as seq
                 from r
                 join unnest(seq_ids, seq_prev) as s(id, prev) on s.id = r.id
                 join jobs as j on j.id = r.id),
             m as (
                 update chunks set state = 1, seq = h.seq, failed = h.failed,
                                   outcomes = h.outcomes, items = '', owner = null, lease = null
                 from h
                 where chunks.job = h.job and chunks.start = h.start and chunks.state = 0
                   and coalesce(chunks.owner, '') = node and chunks.lease = h.lease
                 returning chunks.job, chunks.size, h.failed, h.fail),
             c as (
                 select job, sum(size)::bigint as items, sum(failed)::bigint as errors,
                        max(fail) as fail
                 from m group by job),
             counted as (
                 update jobs set
                     done = jobs.done + c.items,
                     failed = jobs.failed + c.errors,
                     status = case when jobs.status not in ('queued', 'running') then jobs.status
                                   when c.fail is not null then 'failed'
                                   when jobs.done + c.items >= jobs.total and not jobs.ingesting
                                       then 'completed'
                                   else jobs.status end,
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
