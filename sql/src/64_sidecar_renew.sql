-- One renewal: drop the sidecars whose lease ran out, record (or refresh) this one, and return
-- the cluster as it stands, oldest first. Statements of a SQL function each see the ones before.
create function realtime.sidecar_renew(
    p_id uuid, p_name text, p_address text, p_started_at timestamptz, p_lease interval
)
returns setof realtime.sidecars
language sql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
    delete from realtime.sidecars as s where s.expires_at < pg_catalog.clock_timestamp();

    insert into realtime.sidecars as s (id, name, address, started_at, renewed_at, expires_at)
    values (
        p_id, p_name, p_address, p_started_at,
        pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp() + p_lease
    )
    on conflict (id) do update
    set name = excluded.name, address = excluded.address,
        renewed_at = excluded.renewed_at, expires_at = excluded.expires_at;

    select s.* from realtime.sidecars as s order by s.started_at, s.id;
$$;

revoke execute on function realtime.sidecar_renew(uuid, text, text, timestamptz, interval) from public;

comment on function realtime.sidecar_renew(uuid, text, text, timestamptz, interval) is
'Renew a sidecar''s lease for p_lease (recording it if new), remove sidecars whose lease ran out, '
'and return the sidecars serving this database.';
