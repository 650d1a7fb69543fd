-- realtime.send() for a binary payload: stored in binary_payload as is (no id is added to it).
-- Same guarantees: never raises for a problem of the message, takes no subtransaction unless
-- the caller's INSERT policies must decide, runs with the caller's rights.
create function realtime.send_binary(payload bytea, event text, topic text, private boolean default true)
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
