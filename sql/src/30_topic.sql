-- The topic being written or checked, for use in row-level security policies. realtime.send()
-- sets it before its INSERT, and the sidecar sets it before its access probes.
-- LANGUAGE sql and no SET clause, so the planner can inline it into policies.
create function realtime.topic()
returns text
language sql
stable
as $$
    select nullif(pg_catalog.current_setting('realtime.topic', true), '')::text
$$;

comment on function realtime.topic() is
'The topic being written or checked (the transaction-local setting realtime.topic), '
'for row-level security policies; null when unset.';
