-- Presence: who is on a channel topic. One row per tracked presence of a channel on a sidecar;
-- the sidecars keep it, as the source of truth for a joining client's presence_state. LOGGED, as
-- realtime.presence_events is: after a crash the table and its events still agree, and the
-- sidecars' first renewals remove (with leaves) whatever belonged to the processes of before.
create table realtime.presences (
    ref text primary key,
    topic text not null,
    private boolean not null,
    key text not null,
    sidecar_id uuid not null,
    meta jsonb not null,
    tracked_at timestamptz not null default pg_catalog.now()
);

-- A joining client's presence_state is the presences of one topic and visibility.
create index presences_topic_private_index on realtime.presences (topic, private);
-- A sidecar whose lease ran out loses its presences at once.
create index presences_sidecar_index on realtime.presences (sidecar_id);

-- The changes of realtime.presences, one row per topic and visibility per writing transaction,
-- in the shape of a presence_diff. The sidecars read them with the commit-safe read of
-- realtime.messages (the same statement, the same snapshot), so every sidecar sees every change
-- once, in commit order. Not in realtime.messages: Supabase's readers broadcast every row of that
-- table, and these are no broadcasts. Kept for ten minutes (realtime.sidecar_renew() trims).
create table realtime.presence_events (
    id uuid not null default pg_catalog.gen_random_uuid() primary key,
    topic text not null,
    private boolean not null,
    joins jsonb not null default '{}',
    leaves jsonb not null default '{}',
    sidecar_id uuid,
    xid xid8 not null default pg_catalog.pg_current_xact_id(),
    seq bigint generated always as identity (sequence name realtime.presence_events_seq cache 100),
    inserted_at timestamp not null default pg_catalog.timezone('utc', pg_catalog.now())
);

-- The commit-safe read looks events up by xid, the catch-up after a failover and the trim by time.
create index presence_events_xid_index on realtime.presence_events (xid);
create index presence_events_inserted_at_index on realtime.presence_events (inserted_at);

-- Only the sidecars write presence (as the owner, a superuser, or a role given
-- realtime.grant_sidecar()); the roles of client tokens track through a sidecar, whose row-level
-- security probes with extension = 'presence' on realtime.messages decide.
revoke all on table realtime.presences from public;
revoke all on table realtime.presence_events from public;

comment on table realtime.presences is
'Tracked presences: one row per channel that tracks on a sidecar, by topic, visibility and key.';
comment on column realtime.presences.ref is 'The presence''s phx_ref, unique.';
comment on column realtime.presences.topic is 'The channel topic without the "realtime:" prefix.';
comment on column realtime.presences.private is 'True for the presence set of private channels.';
comment on column realtime.presences.key is 'The presence key (config.presence.key, or one per join).';
comment on column realtime.presences.sidecar_id is
'The sidecar (realtime.sidecars.id) whose client tracks it.';
comment on column realtime.presences.meta is
'The tracked payload with phx_ref (and phx_ref_prev after an update).';
comment on column realtime.presences.tracked_at is 'When it was tracked.';
comment on table realtime.presence_events is
'Changes of realtime.presences as presence diffs, read by every sidecar in commit order.';
comment on column realtime.presence_events.id is 'Event id.';
comment on column realtime.presence_events.topic is 'The channel topic without the "realtime:" prefix.';
comment on column realtime.presence_events.private is 'True for the presence set of private channels.';
comment on column realtime.presence_events.joins is 'Presences that joined: {key: {metas: [...]}}.';
comment on column realtime.presence_events.leaves is 'Presences that left: {key: {metas: [...]}}.';
comment on column realtime.presence_events.sidecar_id is
'The sidecar that wrote it (null: a removal of lapsed sidecars).';
comment on column realtime.presence_events.xid is
'Top-level id of the writing transaction: the commit-safe reader selects rows by it.';
comment on column realtime.presence_events.seq is 'Insertion order within the writing transaction.';
comment on column realtime.presence_events.inserted_at is 'Insertion time (the transaction''s start), UTC.';
comment on sequence realtime.presence_events_seq is 'Supplies realtime.presence_events.seq (its identity).';
