-- The job and chunk tables lose their check constraints and the chunks' foreign key: on the
-- one-item path they were a third of what the writer's statements cost the server.
-- PostgreSQL prepares a table's check constraints again for each statement that writes to it
-- (it parses them from their stored text: `jobs` had ten, and a batch writes `jobs` twice and
-- `chunks` twice), and checks each inserted chunk's job with a query of its own. Measured on
-- workload 7 of `benches/run.py` (10,000 one-item jobs): `poold_write` took 264 µs of the
-- server's time per job with them, 181 without.
--
-- What they guarded is guarded before the database: every value comes from poold, which
-- validates a job's fields when it is submitted (`jobs::spec`) and computes the rest. The
-- SQLite store keeps the same checks (it compiles them once per prepared statement), and the
-- tests run on both stores, so a change that would break one still fails there. A chunk is
-- inserted only with its job's row (a new job) or under its lock (an upload's next piece,
-- which updates the row first and inserts nothing once the job ended), so no chunk outlives
-- its job's row; deleting a job now deletes its chunks in the same statement
-- (`store::postgres::ops`), as the foreign key's cascade did.
alter table chunks
    drop constraint chunks_job_fkey,
    drop constraint chunks_size_check,
    drop constraint chunks_state_check,
    drop constraint chunks_check;
alter table jobs
    drop constraint jobs_chunksize_check,
    drop constraint jobs_timeout_s_check,
    drop constraint jobs_max_attempts_check,
    drop constraint jobs_on_error_check,
    drop constraint jobs_codec_check,
    drop constraint jobs_max_concurrency_check,
    drop constraint jobs_status_check,
    drop constraint jobs_total_check,
    drop constraint jobs_check,
    drop constraint jobs_check1;
