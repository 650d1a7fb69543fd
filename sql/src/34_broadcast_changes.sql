-- Broadcast a row change from a row-level trigger:
--   perform realtime.broadcast_changes('topic:' || NEW.id, TG_OP, TG_OP, TG_TABLE_NAME,
--                                      TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
-- The payload is {"id", "schema", "table", "operation", "record", "old_record"}, with JSON null
-- for the record that does not exist (OLD on INSERT, NEW on DELETE); the message is private.
-- For statements that change many rows, realtime.broadcast_changes_statement() does the same
-- with one INSERT per statement.
--
-- Unlike send(), its own errors (a statement-level trigger, an unknown operation) abort the
-- caller's statement: they are mistakes in the trigger, not conditions of one message. Errors
-- inside send() are still only warnings. It raises them directly, with no exception block: an
-- UPDATE of many rows takes no subtransaction per row.
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
