-- realtime.send() for a binary payload: stored in binary_payload as is (no id is added to it).
-- Same guarantees: never raises for a problem of the message, takes no subtransaction unless
-- the caller's INSERT policies must decide, runs with the caller's rights.
create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
returns void
language plpgsql
volatile
security invoker
as $$
declare
    v_refusal text;
begin
    -- No id goes into a binary payload, so its size is no reason to guard.
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

    v_refusal := realtime.insert_refusal(send_binary.topic);
    if v_refusal is not null then
        raise warning 'WarnSendingBroadcastMessage: %', v_refusal;
        return;
    end if;
    perform pg_catalog.set_config('realtime.topic', send_binary.topic, true);
    insert into realtime.messages (binary_payload, event, topic, private, extension)
    values (send_binary.payload, send_binary.event, send_binary.topic, send_binary.private, 'broadcast');
end;
$$;

comment on function realtime.send_binary(bytea, text, text, boolean) is
'Broadcast a binary payload on a topic when the calling transaction commits; private by default. '
'Never raises: failures become a WARNING WarnSendingBroadcastMessage.';
