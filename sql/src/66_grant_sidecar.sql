-- Let a role that is neither the extension's owner nor a superuser run a sidecar's side of the
-- cluster: the bus attachments, the sidecar registry and presence. (Reading realtime.messages past
-- RLS is separate: the role needs BYPASSRLS and realtime.grant_access().)
create function realtime.grant_sidecar(role_name name)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    execute pg_catalog.format(
        'grant select, insert on table realtime.bus_attachments to %I', grant_sidecar.role_name
    );
    execute pg_catalog.format(
        'grant truncate on table realtime.bus_attachments_0, realtime.bus_attachments_1, '
        'realtime.bus_attachments_2 to %I',
        grant_sidecar.role_name
    );
    execute pg_catalog.format(
        'grant select, insert, update, delete on table realtime.sidecars to %I', grant_sidecar.role_name
    );
    execute pg_catalog.format(
        'grant select, insert, delete on table realtime.presences, realtime.presence_events to %I',
        grant_sidecar.role_name
    );
    execute pg_catalog.format(
        'grant execute on function realtime.bus_rotate(), '
        'realtime.sidecar_renew(uuid, text, text, timestamptz, interval), '
        'realtime.sidecar_leave(uuid), realtime.presence_write(uuid, text[], jsonb, boolean), '
        'realtime.presence_record(uuid, jsonb, jsonb), realtime.presence_reap(uuid[]) to %I',
        grant_sidecar.role_name
    );
end;
$$;

-- As realtime.grant_access(): granting is an administrator's decision.
revoke execute on function realtime.grant_sidecar(name) from public;

comment on function realtime.grant_sidecar(name) is
'Grant a sidecar''s login role what the cluster bus and the sidecar registry need (the '
'attachments of realtime.bus_attachments, realtime.sidecars, the presence tables and their '
'functions).';
