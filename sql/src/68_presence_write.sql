-- The presence diff of a set of removed and added presences, one event per topic and visibility.
-- p_left and p_joined are arrays of {topic, private, key, meta}; the metas are grouped by key.
create function realtime.presence_record(p_sidecar uuid, p_left jsonb, p_joined jsonb)
returns integer
language sql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
    with changes as (
        select c.topic, c.private, c.key, c.meta, false as joined
        from pg_catalog.jsonb_to_recordset(p_left) as c (topic text, private boolean, key text, meta jsonb)
        union all
        select c.topic, c.private, c.key, c.meta, true as joined
        from pg_catalog.jsonb_to_recordset(p_joined) as c (topic text, private boolean, key text, meta jsonb)
    ),

    per_key as (
        select
            ch.topic,
            ch.private,
            ch.joined,
            ch.key,
            pg_catalog.jsonb_build_object('metas', pg_catalog.jsonb_agg(ch.meta)) as metas
        from changes as ch
        group by ch.topic, ch.private, ch.joined, ch.key
    ),

    events as (
        insert into realtime.presence_events (topic, private, joins, leaves, sidecar_id)
        select
            pk.topic,
            pk.private,
            coalesce(pg_catalog.jsonb_object_agg(pk.key, pk.metas) filter (where pk.joined), '{}'),
            coalesce(pg_catalog.jsonb_object_agg(pk.key, pk.metas) filter (where not pk.joined), '{}'),
            p_sidecar
        from per_key as pk
        group by pk.topic, pk.private
        returning 1
    )

    select count(*)::integer from events;
$$;

revoke execute on function realtime.presence_record(uuid, jsonb, jsonb) from public;

comment on function realtime.presence_record(uuid, jsonb, jsonb) is
'Record presences that left and joined as realtime.presence_events, one per topic and visibility.';

-- One batch of a sidecar's presence changes, in one transaction: remove the presences p_untrack
-- names (or, with p_replace, every presence of the sidecar), add those of p_track (an array of
-- {ref, topic, private, key, meta}), and record the diff. False, with nothing written, when the
-- sidecar is not registered: its lease ran out and its presences were removed, so it must renew
-- and write all of its presences again (p_replace). The sidecar's row is locked (KEY SHARE) so
-- that no renewal removes it, and its presences, while this batch is being written. A batch
-- written twice (its commit was not confirmed) changes nothing the second time.
create function realtime.presence_write(p_sidecar uuid, p_untrack text[], p_track jsonb, p_replace boolean)
returns boolean
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    v_left jsonb;
    v_joined jsonb;
begin
    perform 1 from realtime.sidecars as s where s.id = p_sidecar for key share;
    if not found then
        return false;
    end if;
    if p_replace then
        with gone as (
            delete from realtime.presences as p
            where p.sidecar_id = p_sidecar
            returning p.topic, p.private, p.key, p.meta
        )

        select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(gone)), '[]') into v_left from gone;
    else
        -- By primary key: the sidecar's other presences (and their dead versions) are not read.
        -- IS NOT DISTINCT FROM is no index condition, so no plan scans the sidecar's index instead.
        with gone as (
            delete from realtime.presences as p
            where p.ref = any(p_untrack) and p.sidecar_id is not distinct from p_sidecar
            returning p.topic, p.private, p.key, p.meta
        )

        select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(gone)), '[]') into v_left from gone;
    end if;
    with added as (
        insert into realtime.presences as p (ref, topic, private, key, sidecar_id, meta)
        select t.ref, t.topic, t.private, t.key, p_sidecar, t.meta
        from pg_catalog.jsonb_to_recordset(p_track) as t (ref text, topic text, private boolean, key text, meta jsonb)
        on conflict (ref) do nothing
        returning p.topic, p.private, p.key, p.meta
    )

    select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(added)), '[]') into v_joined from added;
    perform realtime.presence_record(p_sidecar, v_left, v_joined);
    return true;
end;
$$;

revoke execute on function realtime.presence_write(uuid, text[], jsonb, boolean) from public;

comment on function realtime.presence_write(uuid, text[], jsonb, boolean) is
'Apply one batch of a sidecar''s presence changes and record them as realtime.presence_events; '
'false when the sidecar is not registered (it must renew and write all its presences again).';

-- Remove the presences of sidecars that are gone, with their leaves.
create function realtime.presence_reap(p_sidecars uuid[])
returns integer
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    v_left jsonb;
    v_count integer;
begin
    with gone as (
        delete from realtime.presences as p
        where p.sidecar_id = any(p_sidecars)
        returning p.topic, p.private, p.key, p.meta
    )

    select coalesce(pg_catalog.jsonb_agg(pg_catalog.to_jsonb(gone)), '[]'), count(*)::integer
    into v_left, v_count
    from gone;
    if v_count > 0 then
        perform realtime.presence_record(null, v_left, '[]');
    end if;
    return v_count;
end;
$$;

revoke execute on function realtime.presence_reap(uuid[]) from public;

comment on function realtime.presence_reap(uuid[]) is
'Remove the presences of the given sidecars and record their leaves; returns how many.';
