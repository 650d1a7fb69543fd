-- Generated from sql/src/*.sql by make; edit those files, not this one.
\echo Use "CREATE EXTENSION realtime" to load this file. \quit

-- sql/src/10_schema.sql
-- The realtime schema.
--
-- realtime.control names this schema, so CREATE EXTENSION creates it (owned by the installing
-- role, not a member of the extension) before this script runs; PostgreSQL then refuses to add
-- the schema to the extension, because the extension lives in it. If the control file leaves the
-- schema out, this block creates it here instead, which makes it a member that DROP EXTENSION
-- removes. Either way every object below is schema-qualified and never depends on search_path.
do $$
begin
    if pg_catalog.to_regnamespace('realtime') is null then
        create schema realtime;
    end if;
end
$$;

comment on schema realtime is
'Supabase-compatible Realtime Broadcast: the messages table and the send(), send_binary(), '
'broadcast_changes() and topic() functions.';

-- Every role may look up the functions: send(), send_binary(), broadcast_changes() and topic()
-- are SECURITY INVOKER, so what a caller may do is still decided by the table's own grants and
-- its row-level security policies, not by schema access.
grant usage on schema realtime to public;

-- sql/src/20_messages_seq.sql
-- Insertion order of the rows written by one transaction.
--
-- Only the order of rows *within* a transaction matters (the reader orders by transaction, then
-- by seq), and a transaction runs in one backend, whose cached values are strictly increasing.
-- So a per-backend cache of 100 values is safe and keeps nextval() off the shared sequence page.
create sequence realtime.messages_seq as bigint cache 100;

comment on sequence realtime.messages_seq is
'Supplies realtime.messages.seq: increasing within a transaction (per-backend cache), '
'not comparable across transactions.';

-- sql/src/21_messages.sql
-- The broadcast message log: one row per realtime.send() and per client broadcast that the
-- server stores. The first nine columns are Supabase's, with the same names, types and
-- defaults (except the time zone of the timestamps, see below), so SQL and policies written for
-- Supabase work unchanged.
create table realtime.messages (
    topic text not null,
    extension text not null,
    payload jsonb,
    event text,
    private boolean default false,
    -- timestamp without time zone, as in Supabase, but always UTC: plain now() would convert to
    -- the session's TimeZone, so the partition a row lands in (and its retention) would depend on
    -- the writer's settings. The daily partitions are UTC days.
    updated_at timestamp not null default pg_catalog.timezone('utc', pg_catalog.now()),
    inserted_at timestamp not null default pg_catalog.timezone('utc', pg_catalog.now()),
    id uuid not null default pg_catalog.gen_random_uuid(),
    binary_payload bytea,
    -- The writing transaction's top-level id (top-level even inside send()'s exception-block
    -- subtransaction). The sidecar reads the rows of every transaction that committed since its
    -- previous snapshot by this column, which follows commit visibility where ids, sequences and
    -- timestamps do not.
    xid xid8 not null default pg_catalog.pg_current_xact_id(),
    -- Insertion order within the writing transaction (see realtime.messages_seq).
    seq bigint not null default pg_catalog.nextval('realtime.messages_seq'::regclass),
    constraint messages_pkey primary key (id, inserted_at),
    constraint messages_payload_exclusive check (payload is null or binary_payload is null)
) partition by range (inserted_at);

alter sequence realtime.messages_seq owned by realtime.messages.seq;

-- Replay reads the newest private broadcasts of a topic.
create index messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic)
where extension = 'broadcast' and private is true;

-- The sidecar's commit-safe read is an index lookup on xid, never a scan of the retention window.
create index messages_xid_index on realtime.messages (xid);

-- Who may read and write which topic is decided by policies that the database's owner writes
-- (none ship with the extension). Not FORCE: the owner, like the sidecar's reader, bypasses them.
alter table realtime.messages enable row level security;

comment on table realtime.messages is
'Broadcast messages, partitioned by UTC day of inserted_at. Write with realtime.send(); '
'read and write access is decided by row-level security policies.';
comment on column realtime.messages.topic is
'The channel topic without the "realtime:" prefix.';
comment on column realtime.messages.extension is
'Kind of message: broadcast or presence.';
comment on column realtime.messages.payload is
'JSON payload (null when binary_payload is set).';
comment on column realtime.messages.event is
'The broadcast event name.';
comment on column realtime.messages.private is
'True: delivered only to private channels (after an RLS read check); false: only to public ones.';
comment on column realtime.messages.updated_at is
'Last update time, UTC.';
comment on column realtime.messages.inserted_at is
'Insertion time (the transaction''s start), UTC; the partition key.';
comment on column realtime.messages.id is
'Message id; realtime.send() also puts it in the payload''s "id" unless the payload has one.';
comment on column realtime.messages.binary_payload is
'Binary payload (null when payload is set).';
comment on column realtime.messages.xid is
'Top-level id of the writing transaction: the commit-safe reader selects rows by it.';
comment on column realtime.messages.seq is
'Insertion order within the writing transaction; not comparable across transactions.';

-- sql/src/22_messages_default.sql
-- Rows whose UTC day has no partition land here instead of failing: a send never fails for want
-- of a partition. realtime.maintain() moves them into a partition for their day.
create table realtime.messages_default partition of realtime.messages default;

comment on table realtime.messages_default is
'Catch-all partition of realtime.messages; realtime.maintain() moves its rows into daily partitions.';

-- sql/src/30_topic.sql
-- The topic being written or checked, for use in row-level security policies. realtime.send()
-- sets it before its INSERT, and the sidecar sets it before its access probes.
-- LANGUAGE sql and no SET clause, so the planner can inline it into policies.
create function realtime.topic()
returns text
language sql
stable
as $$
    select nullif(pg_catalog.current_setting('realtime.topic', true), '')::text
$$;

comment on function realtime.topic() is
'The topic being written or checked (the transaction-local setting realtime.topic), '
'for row-level security policies; null when unset.';

-- sql/src/31_send.sql
-- Broadcast a JSON message to a topic, in the caller's transaction: it is delivered once that
-- transaction commits, and never if it rolls back.
--
-- It never raises. Whatever goes wrong (a row-level security denial, a null topic, missing
-- privileges...) becomes a WARNING starting with WarnSendingBroadcastMessage, and the caller's
-- transaction goes on: the exception block is a subtransaction, so only the failed insert (and
-- the realtime.topic setting) is rolled back.
--
-- SECURITY INVOKER: the caller's own grants and INSERT policies on realtime.messages apply.
-- The parameter names are Supabase's (callers pass them by name: private => false), so the body
-- qualifies them with the function's name.
create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql
volatile
security invoker
as $$
declare
    v_id uuid;
    v_payload jsonb;
begin
    begin
        v_id := pg_catalog.gen_random_uuid();
        -- The payload carries the message id unless the caller chose its own "id".
        if send.payload ? 'id' then
            v_payload := send.payload;
        else
            v_payload := pg_catalog.jsonb_set(send.payload, '{id}', pg_catalog.to_jsonb(v_id));
        end if;
        -- Transaction-local (like SET LOCAL), so INSERT policies can call realtime.topic().
        perform pg_catalog.set_config('realtime.topic', send.topic, true);
        insert into realtime.messages (id, payload, event, topic, private, extension)
        values (v_id, v_payload, send.event, send.topic, send.private, 'broadcast');
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end;
$$;

comment on function realtime.send(jsonb, text, text, boolean) is
'Broadcast a JSON payload on a topic when the calling transaction commits; private (the default) '
'reaches only private channels. Never raises: failures become a WARNING WarnSendingBroadcastMessage.';

-- sql/src/32_send_binary.sql
-- realtime.send() for a binary payload: stored in binary_payload as is (no id is added to it).
-- Same guarantees: never raises, runs with the caller's rights.
create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language plpgsql
volatile
security invoker
as $$
begin
    begin
        perform pg_catalog.set_config('realtime.topic', send_binary.topic, true);
        insert into realtime.messages (id, binary_payload, event, topic, private, extension)
        values (
            pg_catalog.gen_random_uuid(),
            send_binary.payload,
            send_binary.event,
            send_binary.topic,
            send_binary.private,
            'broadcast'
        );
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end;
$$;

comment on function realtime.send_binary(bytea, text, text, boolean) is
'Broadcast a binary payload on a topic when the calling transaction commits; private by default. '
'Never raises: failures become a WARNING WarnSendingBroadcastMessage.';

-- sql/src/33_broadcast_changes.sql
-- Broadcast a row change from a row-level trigger:
--   perform realtime.broadcast_changes('topic:' || NEW.id, TG_OP, TG_OP, TG_TABLE_NAME,
--                                      TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
-- The payload is {"id", "schema", "table", "operation", "record", "old_record"}, with JSON null
-- for the record that does not exist (OLD on INSERT, NEW on DELETE); the message is private.
--
-- Unlike send(), its own errors (a statement-level trigger, an unknown operation) abort the
-- caller's statement: they are mistakes in the trigger, not conditions of one message. Errors
-- inside send() are still only warnings.
create function realtime.broadcast_changes(
    topic_name text,
    event_name text,
    operation text,
    table_name text,
    table_schema text,
    new record,
    old record,
    level text default 'ROW'
)
returns void
language plpgsql
volatile
security invoker
as $$
declare
    v_row_data jsonb;
begin
    if broadcast_changes.level = 'STATEMENT' then
        raise exception 'function can only be triggered for each row, not for each statement';
    end if;
    if broadcast_changes.operation in ('INSERT', 'UPDATE', 'DELETE') then
        v_row_data := pg_catalog.jsonb_build_object(
            'old_record', broadcast_changes.old,
            'record', broadcast_changes.new,
            'operation', broadcast_changes.operation,
            'table', broadcast_changes.table_name,
            'schema', broadcast_changes.table_schema
        );
        perform realtime.send(v_row_data, broadcast_changes.event_name, broadcast_changes.topic_name);
    else
        raise exception 'Unexpected operation type: %', broadcast_changes.operation;
    end if;
exception when others then
    raise exception 'Failed to process the row: %', sqlerrm;
end;
$$;

comment on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) is
'From a FOR EACH ROW trigger: broadcast the change (schema, table, operation, record, old_record) '
'as a private message on topic_name. Raises, aborting the statement, if misused.';

-- sql/src/40_messages_partitions.sql
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

-- sql/src/41_maintain.sql
-- Partition upkeep for realtime.messages; the sidecar (or pg_cron) runs it every hour or so.
--
--   * creates the daily partitions from yesterday to today + premake (UTC days);
--   * drops the partitions whose whole range is older than now() - retention, and deletes such
--     rows from the default partition;
--   * moves the rows that landed in the default partition (their day had no partition) into a
--     new partition for their day: a partition cannot be attached while the default partition
--     holds rows of its range.
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
    if exists (select from realtime.messages_default)
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
            select m.inserted_at::date from realtime.messages_default as m where v_guarded
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
        exception when lock_not_available then
            -- Undone with the block; the next run tries again.
            return next pg_catalog.format(
                'skipped creating realtime.%s and later days: realtime.messages is busy', v_name
            );
            exit;
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

-- sql/src/50_grant_access.sql
-- Let a role send and receive broadcasts, as Supabase's anon, authenticated and service_role
-- may: SELECT, INSERT and UPDATE on realtime.messages (no DELETE), and the sequence behind the
-- seq column's default, which every INSERT draws from. Row-level security policies still decide
-- which rows and topics.
create function realtime.grant_access(role_name name)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    execute pg_catalog.format(
        'grant select, insert, update on table realtime.messages to %I', grant_access.role_name
    );
    execute pg_catalog.format(
        'grant usage on sequence realtime.messages_seq to %I', grant_access.role_name
    );
end;
$$;

-- Granting is an administrator's decision; SECURITY INVOKER means a caller could only grant what
-- it may grant anyway, but the function is kept off the API that roles see.
revoke execute on function realtime.grant_access(name) from public;

comment on function realtime.grant_access(name) is
'Grant a role what sending and receiving broadcasts needs (SELECT, INSERT, UPDATE on '
'realtime.messages and USAGE on its sequence); row-level security policies still apply.';

-- sql/src/90_initial_grants.sql
-- Supabase's roles get the access they have there, when they exist at install time (they are
-- cluster-wide, and the extension does not create them). Other roles, and these when created
-- later, get it from realtime.grant_access(). Grants made here belong to the extension: pg_dump
-- leaves them to CREATE EXTENSION.
select realtime.grant_access(r.rolname)
from pg_catalog.pg_roles as r
where r.rolname in ('anon', 'authenticated', 'service_role')
order by r.rolname;

-- sql/src/91_initial_partitions.sql
-- Partitions from yesterday to today + 3 exist as soon as CREATE EXTENSION returns.
select realtime.maintain();
