-- Streaming ingest (POST /v1/jobs with Content-Type: application/x-ndjson): a job's items may
-- still be arriving. While `ingesting` is 1, `total` counts the items stored so far (so
-- `done <= total` still holds), the API shows `total: null`, and the job is never completed:
-- the writer completes it only once the upload has ended and every item has a result.
alter table jobs add column ingesting integer not null default 0 check (ingesting in (0, 1));
