-- Let a role send and receive broadcasts, as Supabase's anon, authenticated and service_role
-- may: SELECT and INSERT on realtime.messages, and the sequence behind the seq column's default,
-- which every INSERT draws from. Row-level security policies still decide which rows and topics.
-- No UPDATE (Supabase grants it, but neither its server nor this sidecar ever updates a message,
-- and an UPDATE could move a row to another topic or day, or change the columns the reader
-- relies on) and no DELETE.
create function realtime.grant_access(role_name name)
returns void
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    execute pg_catalog.format(
        'grant select, insert on table realtime.messages to %I', grant_access.role_name
    );
    execute pg_catalog.format(
        'grant usage on sequence realtime.messages_seq to %I', grant_access.role_name
    );
end;
$$;

-- Granting is an administrator's decision; SECURITY INVOKER means a caller could only grant what
-- it may grant anyway, but the function is kept off the API that roles see.
revoke execute on function realtime.grant_access(name) from public;

comment on function realtime.grant_access(name) is
'Grant a role what sending and receiving broadcasts needs (SELECT and INSERT on '
'realtime.messages and USAGE on its sequence); row-level security policies still apply.';
