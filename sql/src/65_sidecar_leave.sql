-- A sidecar that stops in order removes itself, and its presences with leaves, at once rather than
-- waiting for its lease to run out.
create function realtime.sidecar_leave(p_id uuid)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    delete from realtime.sidecars as s where s.id = p_id;
    perform realtime.presence_reap(array[p_id]);
end;
$$;

revoke execute on function realtime.sidecar_leave(uuid) from public;

comment on function realtime.sidecar_leave(uuid) is
'Remove a sidecar from realtime.sidecars, and its presences with their leaves (it is stopping).';
