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
