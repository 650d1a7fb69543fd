-- A sidecar that stops in order removes itself at once rather than waiting for its lease to run out.
create function realtime.sidecar_leave(p_id uuid)
returns void
language sql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
    delete from realtime.sidecars as s where s.id = p_id;
$$;

revoke execute on function realtime.sidecar_leave(uuid) from public;

comment on function realtime.sidecar_leave(uuid) is
'Remove a sidecar from realtime.sidecars (it is stopping).';
