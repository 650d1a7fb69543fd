-- Upgrade of the realtime extension from 0.1.0 to 0.2.0: only what changed, each with why.
-- Hand-written, and frozen once released, like the full scripts; tests/sql/test_upgrade.py checks
-- that the schema it leaves is the one a fresh install of 0.2.0 makes.
\echo Use "ALTER EXTENSION realtime UPDATE TO '0.2.0'" to load this file. \quit

-- 1. The realtime schema becomes a member of the extension, so that DROP EXTENSION removes it.
-- 0.1.0's control file named the schema, so PostgreSQL created it outside the extension and
-- recorded it as the extension's schema, which it refuses to add as a member. 0.2.0's control
-- file names pg_catalog, as pg_cron's does (and a fresh install makes the schema in its script).
-- An update keeps the recorded schema, so it is moved here: the update runs as a superuser
-- (superuser = true), which may write the catalog. pg_catalog is pinned, so the extension's
-- dependency on its schema is not recorded for it: the old one is deleted, not repointed.
update pg_catalog.pg_extension
set extnamespace = 'pg_catalog'::regnamespace
where extname = 'realtime';
delete from pg_catalog.pg_depend
where
    classid = 'pg_catalog.pg_extension'::regclass
    and objid = (select e.oid from pg_catalog.pg_extension as e where e.extname = 'realtime')
    and refclassid = 'pg_catalog.pg_namespace'::regclass
    and refobjid = 'realtime'::regnamespace
    and deptype = 'n';
-- Adding records the schema's current privileges (USAGE to PUBLIC) as its initial ones, as the
-- GRANT in a fresh install's script does; pg_dump leaves both to CREATE EXTENSION.
alter extension realtime add schema realtime;

-- 2. Take back the UPDATE on realtime.messages that 0.1.0's grant_access() (and the install's
-- grants to Supabase's roles) gave: an UPDATE could move a row to another topic or day, or change
-- the columns the reader relies on, and nothing ever updates a message. Those roles are the ones
-- that hold a privilege on realtime.messages_seq (0.1.0 granted both together; nothing else
-- needed the sequence). The privileges on the sequence go with it (see 3). An UPDATE granted by an
-- administrator without the sequence, as Supabase grants, is the administrator's and is left
-- alone.
--
-- A GRANT or REVOKE inside an extension script records the object's whole resulting ACL as the
-- extension's initial privileges, the ones pg_dump leaves to CREATE EXTENSION. Revoking on the
-- table as it is would record every privilege granted since the install (by grant_access() or by
-- hand) as the extension's, and a dump would then lose them. So the revoke is made twice: once on
-- the install's privileges alone (the table's ACL set to them for the moment), which records
-- those, minus UPDATE, as a fresh install would; then on the real ACL, after which that record is
-- put back.
do $$
declare
    v_roles text[];
    v_role text;
    v_acl aclitem[];
    v_init aclitem[];
begin
    select pg_catalog.array_agg(distinct
        case when a.grantee = 0 then 'public' else pg_catalog.quote_ident(r.rolname) end)
    into v_roles
    from pg_catalog.pg_class as c
    cross join lateral pg_catalog.aclexplode(c.relacl) as a
    left join pg_catalog.pg_roles as r on a.grantee = r.oid
    where c.oid = 'realtime.messages_seq'::regclass and a.grantee <> c.relowner;
    if v_roles is null then
        return;
    end if;

    select c.relacl into v_acl from pg_catalog.pg_class as c where c.oid = 'realtime.messages'::regclass;
    select i.initprivs into v_init
    from pg_catalog.pg_init_privs as i
    where
        i.classoid = 'pg_catalog.pg_class'::regclass and i.objoid = 'realtime.messages'::regclass
        and i.objsubid = 0 and i.privtype = 'e';
    if v_init is not null then
        update pg_catalog.pg_class set relacl = v_init where oid = 'realtime.messages'::regclass;
        foreach v_role in array v_roles loop
            execute pg_catalog.format('revoke update on table realtime.messages from %s', v_role);
        end loop;
        select i.initprivs into v_init
        from pg_catalog.pg_init_privs as i
        where
            i.classoid = 'pg_catalog.pg_class'::regclass and i.objoid = 'realtime.messages'::regclass
            and i.objsubid = 0 and i.privtype = 'e';
        update pg_catalog.pg_class set relacl = v_acl where oid = 'realtime.messages'::regclass;
    end if;

    foreach v_role in array v_roles loop
        execute pg_catalog.format('revoke update on table realtime.messages from %s', v_role);
    end loop;

    if v_init is not null then
        update pg_catalog.pg_init_privs as i
        set initprivs = v_init
        where
            i.classoid = 'pg_catalog.pg_class'::regclass and i.objoid = 'realtime.messages'::regclass
            and i.objsubid = 0 and i.privtype = 'e';
    end if;
end
$$;

-- 3. seq becomes an identity column: PostgreSQL draws an identity's values without checking the
-- writer's privileges on its sequence, so INSERT on realtime.messages is all a writer needs, as
-- with Supabase's grants (which give nothing on a sequence). The old sequence, behind a
-- nextval() default that took USAGE, is dropped with its privileges, and the identity's gets its
-- name. Its values start again at 1: seq orders the rows of one transaction only, and no
-- transaction that wrote a row is still running (these statements wait for them and hold off
-- writers until the upgrade commits). DROP DEFAULT on the partitioned table drops the partitions'
-- defaults too; the identity stays the parent's, through which every row is inserted.
alter table realtime.messages alter column seq drop default;
drop sequence realtime.messages_seq;
alter table realtime.messages alter column seq
add generated by default as identity (sequence name realtime.messages_seq cache 100);
comment on sequence realtime.messages_seq is
'Supplies realtime.messages.seq (its identity): increasing within a transaction (per-backend '
'cache), not comparable across transactions.';
comment on column realtime.messages.seq is
'Insertion order within the writing transaction; not comparable across transactions.';

-- 4. Time-ordered message ids (version 7 UUIDs): they sort by creation, and an index on them takes
-- new ids at its right-hand edge instead of on random pages.
create function realtime.message_id()
returns uuid
language sql
volatile
as $$
    select pg_catalog.encode(
        pg_catalog.overlay(
            pg_catalog.uuid_send(pg_catalog.gen_random_uuid()),
            pg_catalog.int8send(
                ((pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000)::bigint << 16)
                | 28672  -- 0x7000: version 7
                | (pg_catalog.random() * 4095)::bigint
            ),
            1,
            8
        ),
        'hex'
    )::uuid
$$;

comment on function realtime.message_id() is
'A new message id: a version 7 UUID (time-ordered), as send() and the triggers assign.';

-- The primary key becomes the key the reader reads by, (xid, seq, inserted_at), in place of
-- (id, inserted_at) and the separate index on xid: one index per row instead of two (a quarter
-- less WAL per send). The upgrade's lock holds readers and writers until the new key is there.
alter table realtime.messages drop constraint messages_pkey;
alter table realtime.messages add constraint messages_pkey primary key (xid, seq, inserted_at);
drop index realtime.messages_xid_index;

-- 5. A role under row-level security may no longer choose a row's topic (other than
-- realtime.topic()), inserted_at (the partition key) or xid (what the reader relies on).
-- What a role subject to row-level security may not choose when it inserts a message, as
-- restrictive INSERT policies. PostgreSQL applies them to exactly the roles that row-level
-- security applies to, ANDed with the permissive policies the database's owner writes, and they
-- cost the trusted writers (the owner, the sidecar's reader, superusers) nothing: a BEFORE ROW
-- trigger did the same, but made every insert evaluate its WHEN clause and check the row against
-- its partition's bounds once more.
--
--   * The topic: when realtime.topic() is set, the row's topic must be that topic. Any session can
--     set realtime.topic (it is a plain setting), so a policy that tests only realtime.topic()
--     would otherwise let a role insert on any topic by first setting it to one it may write.
--   * inserted_at: the partition key, which realtime.maintain() and retention rely on. It must be
--     the default (the transaction's start, UTC).
--   * xid: the reader selects rows by it, so a row claiming another transaction's id could be
--     hidden from it or surface at another time. It must be the writer's own (the default).
-- seq orders the rows of the writer's own transaction only, so the writer may give it: that can
-- reorder only its own messages. The id stays the caller's when given (send() gives its own, the
-- one it puts in the payload).
create policy messages_topic_is_realtime_topic on realtime.messages
as restrictive
for insert
to public
with check (realtime.topic() is null or topic = realtime.topic());

create policy messages_inserted_at_is_now on realtime.messages
as restrictive
for insert
to public
with check (inserted_at = pg_catalog.timezone('utc', pg_catalog.now()));

create policy messages_xid_is_the_writers on realtime.messages
as restrictive
for insert
to public
with check (xid = pg_catalog.pg_current_xact_id());

comment on policy messages_topic_is_realtime_topic on realtime.messages is
'A role under row-level security inserts only on the topic realtime.topic is set to, when set.';
comment on policy messages_inserted_at_is_now on realtime.messages is
'A role under row-level security leaves inserted_at (the partition key) to the database.';
comment on policy messages_xid_is_the_writers on realtime.messages is
'A role under row-level security leaves xid (what the sidecar reads by) to the database.';

-- 6. send() and send_binary() check beforehand what they can, and take a subtransaction only when
-- the caller's INSERT policies (or another condition that cannot be known beforehand) decide: a
-- transaction sending thousands of messages kept thousands of subtransaction ids.
create function realtime.insert_needs_guard(topic text, private boolean, payload_size integer)
returns boolean
language sql
stable
as $$
    select
        pg_catalog.row_security_active('realtime.messages'::regclass)
        or (
            not pg_catalog.has_table_privilege('realtime.messages'::regclass, 'INSERT')
            and pg_catalog.has_any_column_privilege('realtime.messages'::regclass, 'INSERT')
        )
        or (insert_needs_guard.private and pg_catalog.octet_length(insert_needs_guard.topic) > 2000) is true
        or insert_needs_guard.payload_size > 1000000 is true
$$;

comment on function realtime.insert_needs_guard(text, boolean, integer) is
'Internal to send(): true when inserting this message must be tried in a subtransaction '
'(row-level security applies to the caller, column-only privileges, a very long private topic, '
'a payload over 1 MB).';

-- Why an INSERT of one message by the current role would fail, as PostgreSQL would say it (in
-- the order it checks), or null if it would succeed. Valid only where realtime.insert_needs_guard()
-- is false: no policy, no size limit is consulted here.
create function realtime.insert_refusal(topic text)
returns text
language sql
stable
as $$
    select case
        when pg_catalog.current_setting('transaction_read_only')::boolean
            then 'cannot execute INSERT in a read-only transaction'
        when not pg_catalog.has_table_privilege('realtime.messages'::regclass, 'INSERT')
            then 'permission denied for table messages'
        -- No sequence privilege: seq is an identity column, whose draws are not checked.
        when insert_refusal.topic is null
            then 'null value in column "topic" of relation "messages" violates not-null constraint'
    end
$$;

comment on function realtime.insert_refusal(text) is
'Internal to send(): why the current role could not insert a message on this topic (read-only '
'transaction, missing privileges, null topic), or null if it can.';

-- 6b. send() warns (a NOTICE, never an error) of a topic that will likely reach nobody: the
-- commonest reason a stored message never arrives.
-- What looks wrong with a topic that send() was given, as far as SQL can see it, or null. No
-- client can join an empty topic, and clients add "realtime:" to a channel name themselves, so a
-- topic that starts with it (or carries stray spaces) reaches nobody who joined the plain name.
-- send() turns it into a NOTICE, never an error: such a topic may still be meant.
-- LANGUAGE sql so that send() gets it inlined, and STABLE because format() and to_json() are:
-- PostgreSQL inlines no IMMUTABLE function whose body is not, and a function it does not inline
-- is parsed and planned again in every transaction that calls it (measured in one-send transactions:
-- send() ran at 0.6 of the same function without this check, and at 0.9 once it was inlined).
create function realtime.topic_mistake(topic text)
returns text
language sql
stable
as $$
    select case
        when topic_mistake.topic = ''
            then 'the topic is empty: no channel can join it'
        when pg_catalog.lower(pg_catalog.left(topic_mistake.topic, 9)) = 'realtime:'
            then pg_catalog.format(
                'topic %s starts with "realtime:": clients add it to the channel name themselves, so '
                'a channel named %s receives what is sent to %s',
                pg_catalog.to_json(topic_mistake.topic),
                pg_catalog.to_json(pg_catalog.substr(topic_mistake.topic, 10)),
                pg_catalog.to_json(pg_catalog.substr(topic_mistake.topic, 10))
            )
        when topic_mistake.topic <> pg_catalog.btrim(topic_mistake.topic)
            then pg_catalog.format(
                'topic %s has leading or trailing spaces: a channel named %s does not receive it',
                pg_catalog.to_json(topic_mistake.topic),
                pg_catalog.to_json(pg_catalog.btrim(topic_mistake.topic))
            )
    end
$$;

comment on function realtime.topic_mistake(text) is
'Internal to send(): why a topic will likely reach nobody (empty, a "realtime:" prefix, stray '
'spaces), or null; send() raises it as a NOTICE SuspiciousBroadcastTopic.';

-- 6c. send() and send_binary() test the common case in one condition and insert in one statement.
-- Whether send() may insert this message as it is, with nothing to check, catch or say: no guard
-- needed, nothing that would refuse the insert, no suspicious topic, and a payload that has an
-- "id" or can take one. One expression, so that the common path of send() evaluates one condition
-- and runs one INSERT: in a transaction of one send, PL/pgSQL prepares every expression it
-- evaluates anew, which costs about as much as the checks themselves (measured on a private
-- cluster, one send per transaction, 4 writers, CPU-bound, 3 rounds A B B A: 36,100 tps with
-- this condition against 34,700 with the same checks as separate statements; in another run,
-- 36,400 against 38,700 with no check at all).
-- LANGUAGE sql so that send() gets it inlined; null (a null payload, a null topic) means no.
create function realtime.send_goes_straight(payload jsonb, topic text, private boolean)
returns boolean
language sql
stable
as $$
    select
        not realtime.insert_needs_guard(send_goes_straight.topic, send_goes_straight.private,
            pg_catalog.pg_column_size(send_goes_straight.payload))
        and realtime.insert_refusal(send_goes_straight.topic) is null
        and realtime.topic_mistake(send_goes_straight.topic) is null
        and (send_goes_straight.payload ? 'id' or pg_catalog.jsonb_typeof(send_goes_straight.payload) = 'object')
$$;

comment on function realtime.send_goes_straight(jsonb, text, boolean) is
'Internal to send(): true when the message can be inserted directly, with no check to report '
'and no subtransaction.';

-- Set realtime.topic for the rest of the transaction (as SET LOCAL would) and return it: send()
-- calls it for the value of the row's topic, so that setting the topic costs no statement of
-- its own on the common path. The topic has been checked by then (not null, insertable).
-- LANGUAGE sql so that it is inlined.
create function realtime.topic_set(topic text)
returns text
language sql
volatile
as $$
    select pg_catalog.set_config('realtime.topic', topic_set.topic, true)
$$;

comment on function realtime.topic_set(text) is
'Internal to send(): sets realtime.topic for the rest of the transaction and returns it.';

-- Broadcast a JSON message to a topic, in the caller's transaction: it is delivered once that
-- transaction commits, and never if it rolls back.
--
-- A topic that will likely reach nobody (empty, starting with "realtime:", stray spaces) gets a
-- NOTICE starting with SuspiciousBroadcastTopic, and is sent all the same.
--
-- It never raises for a problem of the message. A null topic, a payload that cannot take an
-- "id", missing privileges, a read-only transaction or a row-level security denial becomes a
-- WARNING starting with WarnSendingBroadcastMessage, and the caller's transaction goes on.
-- Those conditions are checked before the INSERT, so the common path inserts directly and takes
-- no subtransaction. Only where the outcome cannot be known beforehand (the caller is subject to
-- row-level security, so its INSERT policies decide; see realtime.insert_needs_guard()) is the
-- INSERT tried in an exception block, a subtransaction, as Supabase's send() always does.
-- Errors that are not the message's (a lock or statement timeout, a serialization failure, a
-- full disk) abort the caller's statement as they would any other.
--
-- SECURITY INVOKER: the caller's own grants and INSERT policies on realtime.messages apply.
-- The parameter names are Supabase's (callers pass them by name: private => false), so the body
-- qualifies them with the function's name.
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql
volatile
security invoker
as $$
declare
    v_id uuid := realtime.message_id();
    v_payload jsonb;
    v_refusal text;
    v_mistake text;
begin
    -- The common case: one condition, one INSERT. The payload takes the message id unless it has
    -- an "id" of its own; the row's topic is set as realtime.topic on the way.
    if realtime.send_goes_straight(send.payload, send.topic, send.private) then
        insert into realtime.messages (id, payload, event, topic, private, extension)
        values (
            v_id,
            case
                when send.payload ? 'id' then send.payload
                else pg_catalog.jsonb_set(send.payload, '{id}', pg_catalog.to_jsonb(v_id))
            end,
            send.event,
            realtime.topic_set(send.topic),
            send.private,
            'broadcast'
        );
        return;
    end if;

    -- Anything else: say what there is to say, guard where policies decide.
    v_payload := send.payload;
    v_mistake := realtime.topic_mistake(send.topic);
    if v_mistake is not null then
        raise notice 'SuspiciousBroadcastTopic: %', v_mistake;
    end if;
    if realtime.insert_needs_guard(send.topic, send.private, pg_catalog.pg_column_size(send.payload)) then
        begin
            if not v_payload ? 'id' then
                v_payload := pg_catalog.jsonb_set(v_payload, '{id}', pg_catalog.to_jsonb(v_id));
            end if;
            -- Transaction-local (like SET LOCAL), so INSERT policies can call realtime.topic().
            perform pg_catalog.set_config('realtime.topic', send.topic, true);
            insert into realtime.messages (id, payload, event, topic, private, extension)
            values (v_id, v_payload, send.event, send.topic, send.private, 'broadcast');
        exception when others then
            raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        end;
        return;
    end if;

    -- The payload carries the message id unless the caller chose its own "id" (as jsonb_set()
    -- would, a payload that is not an object cannot take one).
    if not v_payload ? 'id' then
        case pg_catalog.jsonb_typeof(v_payload)
            when 'object' then
                v_payload := pg_catalog.jsonb_set(v_payload, '{id}', pg_catalog.to_jsonb(v_id));
            when 'array' then
                v_refusal := 'path element at position 1 is not an integer: "id"';
            else
                v_refusal := 'cannot set path in scalar';
        end case;
    end if;
    v_refusal := coalesce(v_refusal, realtime.insert_refusal(send.topic));
    if v_refusal is not null then
        raise warning 'WarnSendingBroadcastMessage: %', v_refusal;
        return;
    end if;
    -- As on the guarded path: realtime.topic() is the topic until the transaction ends.
    perform pg_catalog.set_config('realtime.topic', send.topic, true);
    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (v_id, v_payload, send.event, send.topic, send.private, 'broadcast');
end;
$$;

comment on function realtime.send(jsonb, text, text, boolean) is
'Broadcast a JSON payload on a topic when the calling transaction commits; private (the default) '
'reaches only private channels. Never raises: failures become a WARNING WarnSendingBroadcastMessage.';

-- realtime.send() for a binary payload: stored in binary_payload as is (no id is added to it).
-- Same guarantees: never raises for a problem of the message, takes no subtransaction unless
-- the caller's INSERT policies must decide, runs with the caller's rights.
create or replace function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language plpgsql
volatile
security invoker
as $$
begin
    -- The common case: one condition, one INSERT (see send()). No id goes into a binary
    -- payload, so its size is no reason to guard. The row's topic is set as realtime.topic on
    -- the way.
    if not realtime.insert_needs_guard(send_binary.topic, send_binary.private, 0)
        and realtime.insert_refusal(send_binary.topic) is null
    then
        insert into realtime.messages (binary_payload, event, topic, private, extension)
        values (
            send_binary.payload, send_binary.event, realtime.topic_set(send_binary.topic),
            send_binary.private, 'broadcast'
        );
        return;
    end if;

    if realtime.insert_needs_guard(send_binary.topic, send_binary.private, 0) then
        begin
            perform pg_catalog.set_config('realtime.topic', send_binary.topic, true);
            insert into realtime.messages (binary_payload, event, topic, private, extension)
            values (send_binary.payload, send_binary.event, send_binary.topic, send_binary.private, 'broadcast');
        exception when others then
            raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        end;
        return;
    end if;
    raise warning 'WarnSendingBroadcastMessage: %', realtime.insert_refusal(send_binary.topic);
end;
$$;

comment on function realtime.send_binary(bytea, text, text, boolean) is
'Broadcast a binary payload on a topic when the calling transaction commits; private by default. '
'Never raises: failures become a WARNING WarnSendingBroadcastMessage.';

-- 7. broadcast_changes() raises its own errors directly instead of through an exception block: an
-- UPDATE of many rows took a subtransaction per row. The messages keep their text.
create or replace function realtime.broadcast_changes(
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
begin
    if broadcast_changes.level = 'STATEMENT' then
        raise exception 'Failed to process the row: function can only be triggered for each row, not for each statement';
    end if;
    if broadcast_changes.operation in ('INSERT', 'UPDATE', 'DELETE') then
        perform realtime.send(
            pg_catalog.jsonb_build_object(
                'old_record', broadcast_changes.old,
                'record', broadcast_changes.new,
                'operation', broadcast_changes.operation,
                'table', broadcast_changes.table_name,
                'schema', broadcast_changes.table_schema
            ),
            broadcast_changes.event_name,
            broadcast_changes.topic_name
        );
    else
        raise exception 'Failed to process the row: Unexpected operation type: %', broadcast_changes.operation;
    end if;
end;
$$;

comment on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) is
'From a FOR EACH ROW trigger: broadcast the change (schema, table, operation, record, old_record) '
'as a private message on topic_name. Raises, aborting the statement, if misused.';

-- 8. A statement-level counterpart of broadcast_changes(), for bulk writes: one INSERT per
-- statement instead of one send() per row.
create type realtime.change_payload as (
    id uuid,
    old_record jsonb,
    record jsonb,
    operation text,
    "table" text,
    schema text
);

comment on type realtime.change_payload is
'Internal to broadcast_changes_statement(): the payload of one broadcast row change.';

create function realtime.broadcast_changes_statement()
returns trigger
language plpgsql
volatile
security invoker
as $$
declare
    v_old_t text := 'null::text';
    v_new_t text := 'null::text';
    v_rows text;
    v_count bigint;
    v_longest_bytes integer;
    v_sent bigint;
    v_refusal text;
begin
    if tg_level <> 'STATEMENT' then
        raise exception 'broadcast_changes_statement: use it in a FOR EACH STATEMENT trigger';
    end if;
    if tg_nargs not in (1, 2) then
        raise exception 'broadcast_changes_statement: arguments are a topic, or a topic prefix and a column name';
    end if;
    if tg_op not in ('INSERT', 'UPDATE', 'DELETE') then
        raise exception 'broadcast_changes_statement: Unexpected operation type: %', tg_op;
    end if;

    -- Each changed row as (ord, old_record, record, topic), in the order of the change. The
    -- transition tables keep that order, and an UPDATE's old and new rows pair up by position,
    -- so the arrays built from them are zipped by ROWS FROM. Rows are taken whole as o.* and n.*,
    -- which no column name can shadow; the topic is the prefix followed by the column's value
    -- as text, the new row's unless that is null.
    if tg_nargs = 2 then
        v_old_t := pg_catalog.format('o.%I::text', tg_argv[1]);
        v_new_t := pg_catalog.format('n.%I::text', tg_argv[1]);
    end if;
    v_rows := pg_catalog.format(
        'select u.ord, u.old_record, u.record, %L%s as topic'
        ' from rows from (pg_catalog.unnest(%s), pg_catalog.unnest(%s), pg_catalog.unnest(%s),'
        ' pg_catalog.unnest(%s)) with ordinality as u (old_record, record, old_t, new_t, ord)',
        tg_argv[0],
        case when tg_nargs = 2 then ' || coalesce(u.new_t, u.old_t)' else '' end,
        case when tg_op = 'INSERT' then 'null::jsonb[]' else 'array(select pg_catalog.to_jsonb(o.*) from old_rows as o)' end,
        case when tg_op = 'DELETE' then 'null::jsonb[]' else 'array(select pg_catalog.to_jsonb(n.*) from new_rows as n)' end,
        case when tg_op = 'INSERT' then 'null::text[]' else pg_catalog.format('array(select %s from old_rows as o)', v_old_t) end,
        case when tg_op = 'DELETE' then 'null::text[]' else pg_catalog.format('array(select %s from new_rows as n)', v_new_t) end
    );
    -- How many rows changed, and the length of the longest topic value (old or new): whether
    -- send() would guard any of the inserts, without building a single payload. Aggregates, not
    -- a sort: each transition table is read once more, and nothing is kept.
    execute pg_catalog.format(
        'select pg_catalog.count(*) from %s', case when tg_op = 'DELETE' then 'old_rows' else 'new_rows' end
    ) into v_count;
    if tg_nargs = 2 then
        execute pg_catalog.format(
            'select greatest(%s, %s)',
            case when tg_op = 'INSERT' then 'null' else pg_catalog.format(
                '(select pg_catalog.max(pg_catalog.octet_length(%s)) from old_rows as o)', v_old_t
            ) end,
            case when tg_op = 'DELETE' then 'null' else pg_catalog.format(
                '(select pg_catalog.max(pg_catalog.octet_length(%s)) from new_rows as n)', v_new_t
            ) end
        ) into v_longest_bytes;
    end if;
    -- A topic's length is all that insert_needs_guard() looks at, so a stand-in as long as the
    -- longest topic asks it the question for every row at once.
    if realtime.insert_needs_guard(
        tg_argv[0] || pg_catalog.repeat('x', coalesce(v_longest_bytes, 0)), true, 0
    ) then
        -- Each row through send(), in order: its policies see its own topic.
        execute pg_catalog.format(
            'select realtime.send(pg_catalog.jsonb_build_object(''old_record'', c.old_record,'
            ' ''record'', c.record, ''operation'', $1, ''table'', $2, ''schema'', $3), $1, c.topic)'
            ' from (%s order by u.ord) as c',
            v_rows
        ) using tg_op, tg_table_name, tg_table_schema;
        return null;
    end if;

    -- What send() would refuse every message for (a read-only transaction, privileges): one
    -- warning per message, as send() gives.
    v_refusal := realtime.insert_refusal('');
    if v_refusal is not null then
        for i in 1..v_count loop
            raise warning 'WarnSendingBroadcastMessage: %', v_refusal;
        end loop;
        return null;
    end if;

    -- One INSERT for the statement, rows whose topic column is null left out. The ids are drawn
    -- per row (a volatile function keeps the subquery from being merged), and the rows go in
    -- change order, so seq follows it. Each payload is a realtime.change_payload row made JSON:
    -- the object jsonb_build_object() would make, for a tenth less time on the whole statement
    -- (measured on a 10,000-row UPDATE), as the named row type's columns are looked up once.
    execute pg_catalog.format(
        'insert into realtime.messages (id, payload, event, topic, private, extension)'
        ' select m.id, pg_catalog.to_jsonb('
        'row(m.id, m.old_record, m.record, $1, $2, $3)::realtime.change_payload), $1, m.topic, true,'
        ' ''broadcast'''
        ' from (select realtime.message_id() as id, c.* from (%s order by u.ord) as c'
        ' where c.topic is not null) as m',
        v_rows
    ) using tg_op, tg_table_name, tg_table_schema;
    get diagnostics v_sent = row_count;
    -- The rows left out get send()'s warning for a null topic.
    for i in 1..(v_count - v_sent) loop
        raise warning 'WarnSendingBroadcastMessage: %', realtime.insert_refusal(null);
    end loop;
    return null;
end;
$$;

comment on function realtime.broadcast_changes_statement() is
'Trigger function for FOR EACH STATEMENT triggers with transition tables new_rows/old_rows: '
'broadcasts every changed row as broadcast_changes() would, in one INSERT. Arguments: topic, '
'or topic prefix and column name.';

-- 9. maintain() makes partitions only inside its window (a row dated far ahead, or at +/-infinity,
-- made one partition per run), and reports one day's failure and goes on to the others instead of
-- failing the run. CREATE OR REPLACE keeps the function's privileges (EXECUTE revoked from PUBLIC).
create or replace function realtime.maintain(
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


comment on function realtime.maintain(interval, integer) is
'Create the daily partitions of realtime.messages (yesterday to today + premake, UTC), drop those '
'older than retention, move rows out of the default partition. Returns the actions taken.';

-- 10. grant_access() grants no UPDATE (an UPDATE could move a row to another topic or day, or change
-- the columns the reader relies on, and nothing ever updates a message) and nothing on the
-- sequence (see 3). Its privileges (EXECUTE revoked from PUBLIC) are kept.
create or replace function realtime.grant_access(role_name name)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    execute pg_catalog.format(
        'grant select, insert on table realtime.messages to %I', grant_access.role_name
    );
end;
$$;


comment on function realtime.grant_access(name) is
'Grant a role what sending and receiving broadcasts needs (SELECT and INSERT on '
'realtime.messages); row-level security policies still apply.';

-- 11. Many sidecars, one service: the cluster bus's attachments (for client broadcasts too large
-- for one notification), the registry of running sidecars, and presence kept across them (the
-- presences, their events, and the functions that write them). New objects, created as a fresh
-- install creates them.

-- 60_bus_slot.sql
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

-- 61_bus_attachments.sql
-- Client broadcasts travel between sidecars as NOTIFY payloads on the channel realtime_bus; a
-- message too large for one notification (8000 bytes) is written here by the sending sidecar in
-- the same transaction as its NOTIFY, and the notification names it by (origin, n). UNLOGGED: an
-- attachment matters for seconds and never survives a crash usefully, and an unlogged write makes
-- the bus transaction commit without a WAL flush. Three list partitions in turn (see
-- realtime.bus_slot()) are emptied by TRUNCATE, never by DELETE: no dead rows, no vacuum.
create table realtime.bus_attachments (
    slot smallint not null default realtime.bus_slot(),
    origin uuid not null,
    n bigint not null,
    body bytea not null
) partition by list (slot);

create unlogged table realtime.bus_attachments_0
partition of realtime.bus_attachments for values in (0);
create unlogged table realtime.bus_attachments_1
partition of realtime.bus_attachments for values in (1);
create unlogged table realtime.bus_attachments_2
partition of realtime.bus_attachments for values in (2);

-- The receiving sidecar looks its attachments up by sender and number.
create index bus_attachments_origin_n_idx on realtime.bus_attachments (origin, n);

-- Only the sidecars use the bus, as the extension's owner or a superuser (or a role given
-- realtime.grant_sidecar()); the roles of client tokens never see it.
revoke all on table realtime.bus_attachments from public;
revoke all on table realtime.bus_attachments_0 from public;
revoke all on table realtime.bus_attachments_1 from public;
revoke all on table realtime.bus_attachments_2 from public;

comment on table realtime.bus_attachments is
'Bodies of client broadcasts too large for a NOTIFY on realtime_bus, named in the notification by '
'(origin, n); unlogged, three partitions emptied in turn by realtime.bus_rotate().';
comment on table realtime.bus_attachments_0 is 'Attachments of minutes 0, 3, 6... (see realtime.bus_slot()).';
comment on table realtime.bus_attachments_1 is 'Attachments of minutes 1, 4, 7... (see realtime.bus_slot()).';
comment on table realtime.bus_attachments_2 is 'Attachments of minutes 2, 5, 8... (see realtime.bus_slot()).';
comment on column realtime.bus_attachments.slot is 'The partition (realtime.bus_slot() at write time).';
comment on column realtime.bus_attachments.origin is 'The sending sidecar''s id for this run.';
comment on column realtime.bus_attachments.n is 'The attachment''s number, unique per origin.';
comment on column realtime.bus_attachments.body is 'The encoded message, as the notification would carry it.';

-- 62_bus_rotate.sql
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

-- 63_sidecars.sql
-- The sidecars serving this database: each one records itself at start and renews its lease
-- every few seconds; one whose lease ran out (stopped, killed, cut off) is removed by the next
-- renewal of any other. UNLOGGED: the rows describe running processes, which re-register within
-- seconds after a crash, and renewals then write no WAL.
create unlogged table realtime.sidecars (
    id uuid primary key,
    name text not null,
    address text not null,
    started_at timestamptz not null,
    renewed_at timestamptz not null,
    expires_at timestamptz not null
);

revoke all on table realtime.sidecars from public;

comment on table realtime.sidecars is
'The pg-realtime sidecars serving this database (one row per running process), kept by '
'realtime.sidecar_renew() and realtime.sidecar_leave().';
comment on column realtime.sidecars.id is 'Random id of the process, new at every start.';
comment on column realtime.sidecars.name is 'Human-readable name: host and process id.';
comment on column realtime.sidecars.address is 'host:port the sidecar listens on.';
comment on column realtime.sidecars.started_at is 'When the process started.';
comment on column realtime.sidecars.renewed_at is 'Its last renewal.';
comment on column realtime.sidecars.expires_at is 'When it counts as gone unless renewed.';

-- 64_sidecar_renew.sql
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

-- 65_sidecar_leave.sql
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

-- 66_grant_sidecar.sql
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

-- 67_presences.sql
-- Presence: who is on a channel topic. One row per tracked presence of a channel on a sidecar;
-- the sidecars keep it, as the source of truth for a joining client's presence_state. LOGGED, as
-- realtime.presence_events is: after a crash the table and its events still agree, and the
-- sidecars' first renewals remove (with leaves) whatever belonged to the processes of before.
create table realtime.presences (
    ref text primary key,
    topic text not null,
    private boolean not null,
    key text not null,
    sidecar_id uuid not null,
    meta jsonb not null,
    tracked_at timestamptz not null default pg_catalog.now()
);

-- A joining client's presence_state is the presences of one topic and visibility.
create index presences_topic_private_index on realtime.presences (topic, private);
-- A sidecar whose lease ran out loses its presences at once.
create index presences_sidecar_index on realtime.presences (sidecar_id);

-- The changes of realtime.presences, one row per topic and visibility per writing transaction,
-- in the shape of a presence_diff. The sidecars read them with the commit-safe read of
-- realtime.messages (the same statement, the same snapshot), so every sidecar sees every change
-- once, in commit order. Not in realtime.messages: Supabase's readers broadcast every row of that
-- table, and these are no broadcasts. Kept for ten minutes (realtime.sidecar_renew() trims).
create table realtime.presence_events (
    id uuid not null default pg_catalog.gen_random_uuid() primary key,
    topic text not null,
    private boolean not null,
    joins jsonb not null default '{}',
    leaves jsonb not null default '{}',
    sidecar_id uuid,
    xid xid8 not null default pg_catalog.pg_current_xact_id(),
    seq bigint generated always as identity (sequence name realtime.presence_events_seq cache 100),
    inserted_at timestamp not null default pg_catalog.timezone('utc', pg_catalog.now())
);

-- The commit-safe read looks events up by xid, the catch-up after a failover and the trim by time.
create index presence_events_xid_index on realtime.presence_events (xid);
create index presence_events_inserted_at_index on realtime.presence_events (inserted_at);

-- Only the sidecars write presence (as the owner, a superuser, or a role given
-- realtime.grant_sidecar()); the roles of client tokens track through a sidecar, whose row-level
-- security probes with extension = 'presence' on realtime.messages decide.
revoke all on table realtime.presences from public;
revoke all on table realtime.presence_events from public;

comment on table realtime.presences is
'Tracked presences: one row per channel that tracks on a sidecar, by topic, visibility and key.';
comment on column realtime.presences.ref is 'The presence''s phx_ref, unique.';
comment on column realtime.presences.topic is 'The channel topic without the "realtime:" prefix.';
comment on column realtime.presences.private is 'True for the presence set of private channels.';
comment on column realtime.presences.key is 'The presence key (config.presence.key, or one per join).';
comment on column realtime.presences.sidecar_id is
'The sidecar (realtime.sidecars.id) whose client tracks it.';
comment on column realtime.presences.meta is
'The tracked payload with phx_ref (and phx_ref_prev after an update).';
comment on column realtime.presences.tracked_at is 'When it was tracked.';
comment on table realtime.presence_events is
'Changes of realtime.presences as presence diffs, read by every sidecar in commit order.';
comment on column realtime.presence_events.id is 'Event id.';
comment on column realtime.presence_events.topic is 'The channel topic without the "realtime:" prefix.';
comment on column realtime.presence_events.private is 'True for the presence set of private channels.';
comment on column realtime.presence_events.joins is 'Presences that joined: {key: {metas: [...]}}.';
comment on column realtime.presence_events.leaves is 'Presences that left: {key: {metas: [...]}}.';
comment on column realtime.presence_events.sidecar_id is
'The sidecar that wrote it (null: a removal of lapsed sidecars).';
comment on column realtime.presence_events.xid is
'Top-level id of the writing transaction: the commit-safe reader selects rows by it.';
comment on column realtime.presence_events.seq is 'Insertion order within the writing transaction.';
comment on column realtime.presence_events.inserted_at is 'Insertion time (the transaction''s start), UTC.';
comment on sequence realtime.presence_events_seq is 'Supplies realtime.presence_events.seq (its identity).';

-- 68_presence_write.sql
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
