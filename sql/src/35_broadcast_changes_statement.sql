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
    v_new_t text;
    v_old_t text;
    v_topic text;
    v_rows text;
    v_nulls bigint;
    v_guarded bigint;
    v_count bigint;
    v_refusal text;
begin
    if tg_level <> 'STATEMENT' then
        raise exception 'broadcast_changes_statement: use it in a FOR EACH STATEMENT trigger';
    end if;
    if tg_nargs not in (1, 2) then
        raise exception 'broadcast_changes_statement: arguments are a topic, or a topic prefix and a column name';
    end if;

    -- Each changed row as (ord, old_record, record, topic), in the order of the change. The
    -- transition tables keep that order, and an UPDATE's old and new rows pair up by position.
    -- The rows are taken whole as n.* and o.*, which no column name can shadow; t is the topic
    -- column's value as text (null without one), and the topic its prefix followed by t.
    if tg_nargs = 2 then
        v_topic := pg_catalog.quote_literal(tg_argv[0]) || ' || coalesce(n.t, o.t)';
        v_new_t := pg_catalog.format('n.%I::text', tg_argv[1]);
        v_old_t := pg_catalog.format('o.%I::text', tg_argv[1]);
    else
        v_topic := pg_catalog.quote_literal(tg_argv[0]);
        v_new_t := 'null';
        v_old_t := 'null';
    end if;
    case tg_op
        when 'INSERT' then
            v_rows := pg_catalog.format(
                'select n.ord, null::jsonb as old_record, n.j as record, %s as topic'
                ' from (select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(n.*) as j,'
                ' %s as t from new_rows as n) as n, (select null::text as t) as o',
                v_topic, v_new_t
            );
        when 'DELETE' then
            v_rows := pg_catalog.format(
                'select o.ord, o.j as old_record, null::jsonb as record, %s as topic'
                ' from (select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(o.*) as j,'
                ' %s as t from old_rows as o) as o, (select null::text as t) as n',
                v_topic, v_old_t
            );
        when 'UPDATE' then
            v_rows := pg_catalog.format(
                'select o.ord, o.j as old_record, n.j as record, %s as topic'
                ' from (select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(o.*) as j,'
                ' %s as t from old_rows as o) as o'
                ' inner join (select pg_catalog.row_number() over () as ord, pg_catalog.to_jsonb(n.*) as j,'
                ' %s as t from new_rows as n) as n on o.ord = n.ord',
                v_topic, v_old_t, v_new_t
            );
        else
            raise exception 'broadcast_changes_statement: Unexpected operation type: %', tg_op;
    end case;

    -- Rows whose insert send() would guard: if any, every row goes through send(), in order.
    execute pg_catalog.format(
        'select pg_catalog.count(*), pg_catalog.count(*) filter (where c.topic is null),'
        ' pg_catalog.count(*) filter (where realtime.insert_needs_guard(c.topic, true, 0))'
        ' from (%s) as c',
        v_rows
    ) into v_count, v_nulls, v_guarded;
    if v_guarded > 0 then
        execute pg_catalog.format(
            'select realtime.send(pg_catalog.jsonb_build_object(''old_record'', c.old_record,'
            ' ''record'', c.record, ''operation'', $1, ''table'', $2, ''schema'', $3), $1, c.topic)'
            ' from (%s order by ord) as c',
            v_rows
        ) using tg_op, tg_table_name, tg_table_schema;
        return null;
    end if;

    -- What send() would refuse every message for (a read-only transaction, privileges), then
    -- what it refuses a row with a null topic for: one warning per message, as send() gives.
    v_refusal := realtime.insert_refusal('');
    if v_refusal is not null then
        v_nulls := v_count;
    else
        v_refusal := realtime.insert_refusal(null);
    end if;
    for i in 1..v_nulls loop
        raise warning 'WarnSendingBroadcastMessage: %', v_refusal;
    end loop;
    if v_nulls = v_count then
        return null;
    end if;

    -- One INSERT for the statement. The ids are drawn per row (a volatile function keeps the
    -- subquery from being merged), and the rows go in change order, so seq follows it.
    execute pg_catalog.format(
        'insert into realtime.messages (id, payload, event, topic, private, extension)'
        ' select m.id, pg_catalog.jsonb_build_object(''id'', m.id, ''old_record'', m.old_record,'
        ' ''record'', m.record, ''operation'', $1, ''table'', $2, ''schema'', $3), $1, m.topic, true,'
        ' ''broadcast'''
        ' from (select realtime.message_id() as id, c.* from (%s order by ord) as c'
        ' where c.topic is not null) as m',
        v_rows
    ) using tg_op, tg_table_name, tg_table_schema;
    return null;
end;
$$;

comment on function realtime.broadcast_changes_statement() is
'Trigger function for FOR EACH STATEMENT triggers with transition tables new_rows/old_rows: '
'broadcasts every changed row as broadcast_changes() would, in one INSERT. Arguments: topic, '
'or topic prefix and column name.';
