-- The payload of one broadcast row change, as broadcast_changes() sends it: the statement-level
-- helper below makes each message's payload from one of these.
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

-- Broadcast every row a statement changed, from a statement-level trigger with transition
-- tables, in one INSERT ... SELECT: the choice for bulk writes, where a row-level trigger
-- calls send() once per row. The messages are those of broadcast_changes(): one per changed
-- row, in the order the rows were changed, private, event and operation TG_OP, payload
-- {"id", "schema", "table", "operation", "record", "old_record"}.
--
--   create trigger items_broadcast_update after update on public.items
--   referencing old table as old_rows new table as new_rows
--   for each statement execute function realtime.broadcast_changes_statement('items:', 'id');
--
-- PostgreSQL allows transition tables only on a trigger for a single event, so a table gets one
-- trigger per event: INSERT with "new table as new_rows", DELETE with "old table as old_rows",
-- UPDATE with both (the names are fixed). Arguments: the topic, or its prefix when a second
-- argument names a column whose value (as text, of the new row, or the old one on DELETE or
-- when the new one is null) completes it.
--
-- Like send() it never raises for a problem of a message: a row whose topic comes out null gets
-- send()'s warning and no message. When the caller is subject to row-level security (each
-- message's INSERT policies must see its own topic in realtime.topic()), or anything else makes
-- send() guard its insert, each row goes through send() instead, with send()'s result row by
-- row. The set-based path does not set realtime.topic. Misuse (a row-level trigger, another
-- operation, transition tables missing) raises and aborts the statement.
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
