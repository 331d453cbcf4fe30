-- `GET /v1/jobs/{id}/results?failed=true` (the dashboard's "latest failed items"): the item
-- errors of a job in index order, without scanning its successful results.
create index results_failed on results (job_id, item_index) where error is not null;
