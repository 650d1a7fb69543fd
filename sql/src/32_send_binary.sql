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
