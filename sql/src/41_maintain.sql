-- Partition upkeep for realtime.messages; the sidecar (or pg_cron) runs it every hour or so.
--
--   * creates the daily partitions from yesterday to today + premake (UTC days);
--   * drops the partitions whose whole range is older than now() - retention, and deletes such
--     rows from the default partition;
--   * moves the rows that landed in the default partition (their day had no partition) into a
--     new partition for their day: a partition cannot be attached while the default partition
--     holds rows of its range. Only days inside the window (from the retention cutoff's day to today
--     + premake) get a partition: rows dated later (or at +infinity) stay in the default
--     partition until the window reaches them, rows dated earlier (or at -infinity) expire.
-- A failure while making one day's partition is reported in a line starting with 'failed' and
-- the other days go on.
-- The partitions it creates become members of the extension (see below). Returns one line per
-- action taken, nothing when there was nothing to do.
--
-- Idempotent, and safe to run concurrently: runs are serialized by an advisory lock, and the
-- catalog reads after it see what the previous run committed (hence READ COMMITTED only). A row
-- inside the retention window is never deleted, and a send is never turned away: new partitions
-- are attached while inserts that might be routed to the default partition are held back.
-- Run it in a transaction of its own: the locks it takes last until that transaction ends. While
-- it waits for a lock that conflicts with sends or reads, those queue behind it; so it waits at
-- most 1 s for each lock, and when the table is kept busy (long transactions, a running pg_dump)
-- it leaves that step to a later run and says so in a line starting with 'skipped'.
--
-- SECURITY DEFINER because it creates and drops tables; EXECUTE is revoked from PUBLIC below.
create function realtime.maintain(
    retention interval default interval '3 days',
    premake integer default 3
)
returns setof text
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
set datestyle = 'ISO, YMD'
-- Never hold every send back for long: each lock is awaited at most this long (see above).
set lock_timeout = '1s'
as $$
declare
    -- UTC, like the inserted_at default, so these are the days rows are routed by.
    v_now timestamp := pg_catalog.timezone('utc', pg_catalog.now());
    v_cutoff timestamp;
    v_first date;
    v_last date;
    v_parent_locked boolean := false;
    v_guarded boolean := false;
    v_horizon timestamp;
    v_columns text;
    v_rel regclass;
    v_day date;
    v_name text;
    v_count bigint;
begin
    if maintain.retention is null or maintain.retention < interval '0' then
        raise exception 'realtime.maintain: retention must be a non-negative interval, not %',
            coalesce(maintain.retention::text, 'null');
    end if;
    if maintain.premake is null or maintain.premake < 0 then
        raise exception 'realtime.maintain: premake must be a non-negative number of days, not %',
            coalesce(maintain.premake::text, 'null');
    end if;
    if pg_catalog.current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'realtime.maintain: run it in a READ COMMITTED transaction'
            using detail = 'A later snapshot would not see the partitions a concurrent run created.';
    end if;

    -- One run at a time in this database, until our transaction ends. The key is 'realtime'
    -- in ASCII.
    begin
        perform pg_catalog.pg_advisory_xact_lock(8243121312956329317);
    exception when lock_not_available then
        return next 'skipped: another realtime.maintain() is still running';
        return;
    end;

    v_cutoff := v_now - maintain.retention;
    -- From yesterday, but never a day that is wholly expired already (the next run would drop it).
    v_first := greatest(v_now::date - 1, v_cutoff::date);
    v_last := v_now::date + maintain.premake;

    -- 1. Partitions wholly older than the window.
    for v_rel in
        select p.partition_name from realtime.messages_partitions() as p where p.range_end <= v_cutoff
    loop
        v_name := v_rel::text;
        begin
            if not v_parent_locked then
                -- DROP takes this lock on the parent anyway. Taking it before any other keeps our
                -- lock order that of every insert and read (parent, then partitions): no deadlock.
                lock table realtime.messages in access exclusive mode;
                v_parent_locked := true;
            end if;
            -- A member of the extension (see below) must leave it before it can be dropped.
            if exists (
                select from pg_catalog.pg_depend as dep
                where dep.classid = 'pg_catalog.pg_class'::regclass and dep.objid = v_rel and dep.deptype = 'e'
            ) then
                execute pg_catalog.format('alter extension realtime drop table %s', v_name);
            end if;
            execute pg_catalog.format('drop table %s', v_name);
        exception when lock_not_available then
            -- The table is busy (see lock_timeout above): the rest waits for a later run.
            return next 'skipped dropping expired partitions: realtime.messages is busy';
            exit;
        end;
        return next pg_catalog.format('dropped %s', v_name);
    end loop;

    -- 2. Expired rows that sit in the default partition.
    delete from realtime.messages_default as m where m.inserted_at < v_cutoff;
    get diagnostics v_count = row_count;
    if v_count > 0 then
        return next pg_catalog.format('deleted %s expired rows from realtime.messages_default', v_count);
    end if;

    -- 3. Guard the attach when inserts may be headed for the default partition: it holds rows, or
    -- a missing partition covers a time that is here or less than a day away. An insert picks its
    -- partition from the partition set it saw when it started, and one routed to the default
    -- partition that runs after our attach would be rejected there (the row is now out of the
    -- default partition's range) and lost. With the parent locked against writes (reads go on),
    -- in-flight inserts finish first, new ones wait and then see the new partition. Steady state
    -- (every partition made days ahead) never takes this path.
    v_horizon := pg_catalog.timezone('utc', pg_catalog.clock_timestamp()) + interval '1 day';
    if exists (
            select from realtime.messages_default as m
            where m.inserted_at >= v_cutoff::date and m.inserted_at < v_last + 1
        )
        or exists (
            select
            from pg_catalog.generate_series(0, v_last - v_first) as g (i)
            where
                v_first + g.i < v_horizon
                and not exists (
                    select from realtime.messages_partitions() as p
                    where p.range_start < v_first + g.i + 1 and p.range_end > v_first + g.i
                )
        )
    then
        begin
            lock table realtime.messages in share row exclusive mode;
            lock table realtime.messages_default in access exclusive mode;
            v_guarded := true;
        exception when lock_not_available then
            -- Busy: do only what is safe unguarded now, the rest in a later run.
            return next 'skipped moving rows out of realtime.messages_default: realtime.messages is busy';
        end;
    end if;

    -- 4. Missing partitions: the days from v_first to v_last, and those of default-partition rows.
    select pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' order by a.attnum)
    into v_columns
    from pg_catalog.pg_attribute as a
    where a.attrelid = 'realtime.messages'::regclass and a.attnum > 0 and not a.attisdropped;

    for v_day in
        select d.day
        from (
            select v_first + g.i as day from pg_catalog.generate_series(0, v_last - v_first) as g (i)
            union
            -- Only days inside the window (retention to premake): a row far in the future (or at
            -- infinity) waits in the default partition, and never makes a partition of its own.
            select m.inserted_at::date from realtime.messages_default as m
            where v_guarded and m.inserted_at >= v_cutoff::date and m.inserted_at < v_last + 1
        ) as d
        where
            (v_guarded or d.day >= v_horizon)
            and not exists (
                select from realtime.messages_partitions() as p
                where p.range_start < d.day + 1 and p.range_end > d.day
            )
        order by d.day
    loop
        v_name := 'messages_' || pg_catalog.to_char(v_day, 'YYYY_MM_DD');
        if pg_catalog.to_regclass(pg_catalog.format('realtime.%I', v_name)) is not null then
            raise exception 'realtime.maintain: realtime.% exists but is not a partition of realtime.messages',
                v_name using hint = 'Attach, rename or drop it.';
        end if;
        begin
            -- Standalone, then attached: CREATE TABLE ... PARTITION OF would lock realtime.messages
            -- against reads and writes; ATTACH PARTITION locks it only against other DDL, and the
            -- default partition (kept empty, so scanned in no time) against everything, briefly.
            execute pg_catalog.format(
                'create table realtime.%I (like realtime.messages'
                ' including defaults including constraints including storage)',
                v_name
            );
            -- Partitions belong to the extension, as its own script's would: pg_dump leaves them
            -- (and their transient rows) to CREATE EXTENSION. As plain tables they would be dumped,
            -- and restoring them would collide with the partitions and partition indexes that
            -- CREATE EXTENSION makes. Inside CREATE EXTENSION the table is a member already.
            if not exists (
                select from pg_catalog.pg_depend as dep
                where
                    dep.classid = 'pg_catalog.pg_class'::regclass
                    and dep.objid = pg_catalog.format('realtime.%I', v_name)::regclass
                    and dep.deptype = 'e'
            ) then
                execute pg_catalog.format('alter extension realtime add table realtime.%I', v_name);
            end if;
            execute pg_catalog.format(
                'comment on table realtime.%I is %L',
                v_name,
                pg_catalog.format('Partition of realtime.messages for %s (UTC), made by realtime.maintain().', v_day)
            );
            v_count := 0;
            if v_guarded then
                -- Every column as it is (id, xid, seq...): the reader must see the same rows.
                execute pg_catalog.format(
                    'with moved as (delete from realtime.messages_default'
                    ' where inserted_at >= %L and inserted_at < %L returning %s)'
                    ' insert into realtime.%I (%s) select %s from moved',
                    v_day, v_day + 1, v_columns, v_name, v_columns, v_columns
                );
                get diagnostics v_count = row_count;
            end if;
            execute pg_catalog.format(
                'alter table realtime.messages attach partition realtime.%I for values from (%L) to (%L)',
                v_name, v_day, v_day + 1
            );
        exception
            when lock_not_available then
                -- Undone with the block; the next run tries again.
                return next pg_catalog.format(
                    'skipped creating realtime.%s and later days: realtime.messages is busy', v_name
                );
                exit;
            when others then
                -- One day's trouble (a row that does not fit the partition, say) is undone with the
                -- block and reported; the other days go on.
                return next pg_catalog.format('failed creating realtime.%s: %s', v_name, sqlerrm);
                continue;
        end;
        return next pg_catalog.format('created realtime.%s', v_name);
        if v_count > 0 then
            return next pg_catalog.format(
                'moved %s rows from realtime.messages_default to realtime.%s', v_count, v_name
            );
        end if;
    end loop;
end;
$$;

-- It creates and drops tables as its owner: only those an administrator chooses (the sidecar's
-- role) may run it.
revoke execute on function realtime.maintain(interval, integer) from public;

comment on function realtime.maintain(interval, integer) is
'Create the daily partitions of realtime.messages (yesterday to today + premake, UTC), drop those '
'older than retention, move rows out of the default partition. Returns the actions taken.';
