-- The next value of realtime.messages_seq, for the seq column's default and the guard trigger.
--
-- nextval() checks the caller's USAGE on the sequence, so a plain `nextval(...)` default made every
-- writer need a grant on it, beyond INSERT on the table: a database that grants the way Supabase
-- does (SELECT, INSERT, UPDATE on realtime.messages, nothing on a sequence) could not send. As
-- SECURITY DEFINER the draw is the owner's, and INSERT on the table is all a writer needs. Drawing
-- values gives a role nothing: seq only orders the rows of one transaction, and the guard trigger
-- sets it for roles under row-level security anyway. The order is the sequence's, as before.
-- Chosen over an identity column, whose draws are not privilege-checked either: that would
-- redefine the column of the table and of every partition in an upgrade of an existing install,
-- where a new default is one ALTER. The cost is one function call per row (a SECURITY DEFINER
-- function is never inlined); its search_path is fixed, as every SECURITY DEFINER function's.
create function realtime.messages_next_seq()
returns bigint
language sql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
    select pg_catalog.nextval('realtime.messages_seq'::regclass)
$$;

-- EXECUTE stays with PUBLIC: every writer's INSERT evaluates the default with its own rights.

comment on function realtime.messages_next_seq() is
'Default of realtime.messages.seq: the next value of realtime.messages_seq, drawn with the '
'owner''s rights so that INSERT on the table is all a writer needs.';
