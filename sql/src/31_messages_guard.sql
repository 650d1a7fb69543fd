-- What a role subject to row-level security may not choose when it inserts a message, as
-- restrictive INSERT policies. PostgreSQL applies them to exactly the roles that row-level
-- security applies to, ANDed with the permissive policies the database's owner writes, and they
-- cost the trusted writers (the owner, the sidecar's reader, superusers) nothing: a BEFORE ROW
-- trigger did the same, but made every insert evaluate its WHEN clause and check the row against
-- its partition's bounds once more.
--
--   * The topic: when realtime.topic() is set, the row's topic must be that topic. Any session can
--     set realtime.topic (it is a plain setting), so a policy that tests only realtime.topic()
--     would otherwise let a role insert on any topic by first setting it to one it may write.
--   * inserted_at: the partition key, which realtime.maintain() and retention rely on. It must be
--     the default (the transaction's start, UTC).
--   * xid: the reader selects rows by it, so a row claiming another transaction's id could be
--     hidden from it or surface at another time. It must be the writer's own (the default).
-- seq orders the rows of the writer's own transaction only, so the writer may give it: that can
-- reorder only its own messages. The id stays the caller's when given (send() gives its own, the
-- one it puts in the payload).
create policy messages_topic_is_realtime_topic on realtime.messages
as restrictive
for insert
to public
with check (realtime.topic() is null or topic = realtime.topic());

create policy messages_inserted_at_is_now on realtime.messages
as restrictive
for insert
to public
with check (inserted_at = pg_catalog.timezone('utc', pg_catalog.now()));

create policy messages_xid_is_the_writers on realtime.messages
as restrictive
for insert
to public
with check (xid = pg_catalog.pg_current_xact_id());

comment on policy messages_topic_is_realtime_topic on realtime.messages is
'A role under row-level security inserts only on the topic realtime.topic is set to, when set.';
comment on policy messages_inserted_at_is_now on realtime.messages is
'A role under row-level security leaves inserted_at (the partition key) to the database.';
comment on policy messages_xid_is_the_writers on realtime.messages is
'A role under row-level security leaves xid (what the sidecar reads by) to the database.';
