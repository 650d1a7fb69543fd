-- Supabase Realtime's own realtime.messages and realtime.send(), as the reference server defines
-- them (see docs/benchmarks.md), in a schema of their own so that they run beside ours: the
-- anchor bench.send compares against. Written from the published definitions: same columns,
-- defaults, keys, indexes and function body; only the schema name differs.
create schema supabase_realtime;

create table supabase_realtime.messages (
    topic text not null,
    extension text not null,
    payload jsonb,
    event text,
    private boolean default false,
    updated_at timestamp not null default now(),
    inserted_at timestamp not null default now(),
    id uuid not null default gen_random_uuid(),
    binary_payload bytea,
    constraint messages_pkey primary key (id, inserted_at)
) partition by range (inserted_at);

alter table supabase_realtime.messages
    add constraint messages_payload_exclusive check (payload is null or binary_payload is null) not valid;

create index messages_inserted_at_topic_index on only supabase_realtime.messages (inserted_at desc, topic)
where extension = 'broadcast' and private is true;

alter table supabase_realtime.messages enable row level security;

-- The server makes yesterday's to today + 3's daily partitions (UTC dates).
do $$
declare
    v_day date;
begin
    for v_day in
        select d::date from generate_series(now()::date - 1, now()::date + 3, interval '1 day') as d
    loop
        execute format(
            'create table supabase_realtime.%I partition of supabase_realtime.messages'
            ' for values from (%L) to (%L)',
            'messages_' || to_char(v_day, 'YYYY_MM_DD'), v_day, v_day + 1
        );
    end loop;
end
$$;

create function supabase_realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql
as $$
declare
    generated_id uuid;
    final_payload jsonb;
begin
    begin
        generated_id := gen_random_uuid();
        if payload ? 'id' then
            final_payload := payload;
        else
            final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
        end if;
        execute format('set local realtime.topic to %L', topic);
        insert into supabase_realtime.messages (id, payload, event, topic, private, extension)
        values (generated_id, final_payload, event, topic, private, 'broadcast');
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
    end;
end;
$$;
