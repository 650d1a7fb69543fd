-- One renewal: remove the sidecars whose lease ran out (and their presences, with leaves), record
-- or refresh this one, trim old presence events, and return the cluster as it stands, oldest
-- first. renewed is true on the caller's row when its lease was still held: false there after a
-- first registration, or when the lease had run out and the sidecar was removed (its presences
-- with it), which the caller must then write again. The caller's row is locked first, so no other
-- renewal removes it between that test and the refresh; the caller never removes itself (its own
-- presences, if its lease had lapsed, are rewritten by the caller, which is told so).
create function realtime.sidecar_renew(
    p_id uuid, p_name text, p_address text, p_started_at timestamptz, p_lease interval
)
returns table (
    id uuid,
    name text,
    address text,
    started_at timestamptz,
    renewed_at timestamptz,
    expires_at timestamptz,
    renewed boolean
)
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    v_held boolean;
    v_gone uuid [];
begin
    perform 1 from realtime.sidecars as s where s.id = p_id for no key update;
    v_held := found;

    with gone as (
        delete from realtime.sidecars as s
        where s.expires_at < pg_catalog.clock_timestamp() and s.id <> p_id
        returning s.id
    )

    select pg_catalog.array_agg(gone.id) into v_gone from gone;
    if not v_held then
        -- A first registration, or one after the lease lapsed, or after a crash of the database
        -- (realtime.sidecars is unlogged, so it comes back empty while realtime.presences does not):
        -- presences of sidecars that are not registered at all belong to processes that are gone.
        v_gone := coalesce(v_gone, '{}') || array(
            select distinct p.sidecar_id
            from realtime.presences as p
            where
                p.sidecar_id <> p_id
                and not exists (select from realtime.sidecars as s where s.id = p.sidecar_id)
        );
    end if;
    if v_gone is not null and pg_catalog.cardinality(v_gone) > 0 then
        perform realtime.presence_reap(v_gone);
    end if;

    insert into realtime.sidecars as s (id, name, address, started_at, renewed_at, expires_at)
    values (
        p_id, p_name, p_address, p_started_at,
        pg_catalog.clock_timestamp(), pg_catalog.clock_timestamp() + p_lease
    )
    on conflict on constraint sidecars_pkey do update
    set name = excluded.name, address = excluded.address,
        renewed_at = excluded.renewed_at, expires_at = excluded.expires_at;

    delete from realtime.presence_events as e
    where e.inserted_at < pg_catalog.timezone('utc', pg_catalog.now()) - interval '10 minutes';

    return query
    select s.id, s.name, s.address, s.started_at, s.renewed_at, s.expires_at, (s.id = p_id and v_held)
    from realtime.sidecars as s
    order by s.started_at, s.id;
end;
$$;

revoke execute on function realtime.sidecar_renew(uuid, text, text, timestamptz, interval) from public;

comment on function realtime.sidecar_renew(uuid, text, text, timestamptz, interval) is
'Renew a sidecar''s lease for p_lease (recording it if new), remove sidecars whose lease ran out '
'with their presences, and return the sidecars serving this database (renewed: the caller''s '
'lease was still held).';
