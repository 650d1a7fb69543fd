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
create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
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
