-- The range partitions of realtime.messages with their bounds (the default partition is not
-- listed). PostgreSQL shows partition bounds only as text, so this parses that text; DateStyle is
-- pinned because both the text and its cast back to timestamp follow it. An unbounded side
-- (MINVALUE/MAXVALUE) reads as -infinity/infinity.
create function realtime.messages_partitions()
returns table (partition_name regclass, range_start timestamp, range_end timestamp)
language sql
stable
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD'
as $$
    select
        c.oid::regclass,
        coalesce(substring(b.bound from 'FROM \(''([^'']*)''\)')::timestamp, '-infinity'::timestamp),
        coalesce(substring(b.bound from 'TO \(''([^'']*)''\)')::timestamp, 'infinity'::timestamp)
    from pg_inherits as i
    inner join pg_class as c on i.inhrelid = c.oid
    cross join lateral (select pg_get_expr(c.relpartbound, c.oid) as bound) as b
    where i.inhparent = 'realtime.messages'::regclass and b.bound <> 'DEFAULT'
    order by 2, 3
$$;

-- EXECUTE stays with PUBLIC: it shows only what pg_inherits and pg_class show every role anyway.

comment on function realtime.messages_partitions() is
'The range partitions of realtime.messages and their bounds (UTC), oldest first.';
