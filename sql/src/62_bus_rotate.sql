-- Empty the partition of realtime.bus_attachments that is written next (it holds what was written
-- two to three minutes ago, long read), if it holds anything. Every sidecar calls it every few
-- seconds; when the partition is already empty nothing is locked. One sidecar at a time rotates
-- (a transaction advisory lock; two TRUNCATEs of one partition would deadlock), and TRUNCATE waits
-- at most a second for a reader: the next call tries again.
create function realtime.bus_rotate()
returns boolean
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
set lock_timeout = '1s'
as $$
declare
    v_next smallint := ((realtime.bus_slot() + 1) % 3)::smallint;
begin
    if not pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('realtime.bus_rotate')) then
        return false;
    end if;
    if not exists (select 1 from realtime.bus_attachments as a where a.slot = v_next) then
        return false;
    end if;
    execute pg_catalog.format('truncate table realtime.%I', 'bus_attachments_' || v_next);
    return true;
end;
$$;

revoke execute on function realtime.bus_rotate() from public;

comment on function realtime.bus_rotate() is
'Truncate the partition of realtime.bus_attachments written next, if it is not empty; true if it '
'truncated.';
