-- The realtime schema.
--
-- realtime.control names this schema, so CREATE EXTENSION creates it (owned by the installing
-- role, not a member of the extension) before this script runs; PostgreSQL then refuses to add
-- the schema to the extension, because the extension lives in it. If the control file leaves the
-- schema out, this block creates it here instead, which makes it a member that DROP EXTENSION
-- removes. Either way every object below is schema-qualified and never depends on search_path.
do $$
begin
    if pg_catalog.to_regnamespace('realtime') is null then
        create schema realtime;
    end if;
end
$$;

comment on schema realtime is
'Supabase-compatible Realtime Broadcast: the messages table and the send(), send_binary(), '
'broadcast_changes() and topic() functions.';

-- Every role may look up the functions: send(), send_binary(), broadcast_changes() and topic()
-- are SECURITY INVOKER, so what a caller may do is still decided by the table's own grants and
-- its row-level security policies, not by schema access.
grant usage on schema realtime to public;
