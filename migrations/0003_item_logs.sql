-- Item logs: what a function printed while it ran (the optional "log" of a worker's result
-- entry), bounded by poold before it is stored. Null when the function printed nothing.
alter table results add column log text;
