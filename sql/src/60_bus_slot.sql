-- Which of the three partitions of realtime.bus_attachments takes attachments written now: the
-- minute since the epoch, modulo 3. A partition is written for one minute, read for the next, and
-- emptied (realtime.bus_rotate()) before it is written again, so nothing deletes rows one by one.
create function realtime.bus_slot()
returns smallint
language sql
volatile
parallel safe
set search_path = pg_catalog, pg_temp
as $$
    select ((pg_catalog.floor(extract(epoch from pg_catalog.clock_timestamp()) / 60)::bigint % 3))::smallint
$$;

comment on function realtime.bus_slot() is
'The partition of realtime.bus_attachments that attachments written now go to (0, 1 or 2; one '
'minute each, in turn).';
