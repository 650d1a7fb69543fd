-- The broadcast message log: one row per realtime.send() and per client broadcast that the
-- server stores. The first nine columns are Supabase's, with the same names, types and
-- defaults (except the time zone of the timestamps, see below), so SQL and policies written for
-- Supabase work unchanged.
create table realtime.messages (
    topic text not null,
    extension text not null,
    payload jsonb,
    event text,
    private boolean default false,
    -- timestamp without time zone, as in Supabase, but always UTC: plain now() would convert to
    -- the session's TimeZone, so the partition a row lands in (and its retention) would depend on
    -- the writer's settings. The daily partitions are UTC days.
    updated_at timestamp not null default pg_catalog.timezone('utc', pg_catalog.now()),
    inserted_at timestamp not null default pg_catalog.timezone('utc', pg_catalog.now()),
    id uuid not null default pg_catalog.gen_random_uuid(),
    binary_payload bytea,
    -- The writing transaction's top-level id (top-level even inside send()'s exception-block
    -- subtransaction). The sidecar reads the rows of every transaction that committed since its
    -- previous snapshot by this column, which follows commit visibility where ids, sequences and
    -- timestamps do not.
    xid xid8 not null default pg_catalog.pg_current_xact_id(),
    -- Insertion order within the writing transaction (see realtime.messages_seq and
    -- realtime.messages_next_seq()).
    seq bigint not null default realtime.messages_next_seq(),
    constraint messages_pkey primary key (id, inserted_at),
    constraint messages_payload_exclusive check (payload is null or binary_payload is null)
) partition by range (inserted_at);

alter sequence realtime.messages_seq owned by realtime.messages.seq;

-- Replay reads the newest private broadcasts of a topic.
create index messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic)
where extension = 'broadcast' and private is true;

-- The sidecar's commit-safe read is an index lookup on xid, never a scan of the retention window.
create index messages_xid_index on realtime.messages (xid);

-- Who may read and write which topic is decided by policies that the database's owner writes
-- (none ship with the extension). Not FORCE: the owner, like the sidecar's reader, bypasses them.
alter table realtime.messages enable row level security;

comment on table realtime.messages is
'Broadcast messages, partitioned by UTC day of inserted_at. Write with realtime.send(); '
'read and write access is decided by row-level security policies.';
comment on column realtime.messages.topic is
'The channel topic without the "realtime:" prefix.';
comment on column realtime.messages.extension is
'Kind of message: broadcast or presence.';
comment on column realtime.messages.payload is
'JSON payload (null when binary_payload is set).';
comment on column realtime.messages.event is
'The broadcast event name.';
comment on column realtime.messages.private is
'True: delivered only to private channels (after an RLS read check); false: only to public ones.';
comment on column realtime.messages.updated_at is
'Last update time, UTC.';
comment on column realtime.messages.inserted_at is
'Insertion time (the transaction''s start), UTC; the partition key.';
comment on column realtime.messages.id is
'Message id; realtime.send() also puts it in the payload''s "id" unless the payload has one.';
comment on column realtime.messages.binary_payload is
'Binary payload (null when payload is set).';
comment on column realtime.messages.xid is
'Top-level id of the writing transaction: the commit-safe reader selects rows by it.';
comment on column realtime.messages.seq is
'Insertion order within the writing transaction; not comparable across transactions.';
