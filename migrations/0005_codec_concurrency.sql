-- How a job's items, kwargs and values travel, and how many of its chunks may run at once.
-- `codec`: 'json' (plain JSON values) or 'pickle' (each item, each kwargs value and each value is
-- a JSON string holding a base64 pickle; poold stores them as opaque text and never unpickles).
-- `max_concurrency`: at most this many chunks of the job in flight at once across the pool
-- (`Pool(processes=N)`); null is no cap.
alter table jobs add column codec text not null default 'json' check (codec in ('json', 'pickle'));
alter table jobs add column max_concurrency integer check (max_concurrency is null or max_concurrency >= 1);
