-- The realtime schema.
--
-- realtime.control places the extension in pg_catalog (as pg_cron does), so this block creates
-- the schema, which makes it a member of the extension that DROP EXTENSION removes with
-- everything in it. (Were the control file to name realtime, CREATE EXTENSION would create the
-- schema before this script runs, owned by the installing role but not a member, and PostgreSQL
-- refuses to add the schema that holds the extension to it: DROP EXTENSION would leave it.) A
-- realtime schema that exists already is used as it is, and stays after DROP EXTENSION. Every
-- object below is schema-qualified and never depends on search_path.
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
