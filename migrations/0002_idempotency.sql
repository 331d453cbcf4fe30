-- Idempotency-Key on POST /v1/jobs: a repeat with the same key and body returns the same job.
-- `request_hash` is the SHA-256 of the normalized request, to tell "same body" from "other body".
alter table jobs add column idempotency_key text;
alter table jobs add column request_hash text;
create unique index jobs_idempotency_key on jobs (idempotency_key) where idempotency_key is not null;
