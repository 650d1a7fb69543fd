-- What a role subject to row-level security may not choose when it inserts a message.
--
--   * The topic: when realtime.topic() is set, the row's topic must be that topic. Any session can
--     set realtime.topic (it is a plain setting), so a policy that tests only realtime.topic()
--     would otherwise let a role insert on any topic by first setting it to one it may write.
--   * inserted_at: the partition key, which realtime.maintain() and retention rely on. It must be
--     the default (the transaction's start, UTC); a row cannot be moved to another partition from
--     here, so another value is refused rather than replaced.
--   * xid and seq: the reader selects rows by xid and orders them by seq, so they are always the
--     database's (the transaction's top-level id, the next value of realtime.messages_seq).
-- The id stays the caller's when given (send() gives its own, the one it puts in the payload).
-- Roles that bypass row-level security (the owner, the sidecar's reader, superusers) are trusted
-- and left alone: the sidecar's read probe gives inserted_at and id while privileged.
create function realtime.messages_guard()
returns trigger
language plpgsql
volatile
security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
    if realtime.topic() is not null and new.topic is distinct from realtime.topic() then
        raise exception 'realtime.messages: topic "%" differs from realtime.topic() "%"',
            new.topic, realtime.topic()
            using errcode = 'insufficient_privilege',
            hint = 'Insert a row only on the topic that realtime.topic is set to.';
    end if;
    if new.inserted_at is distinct from pg_catalog.timezone('utc', pg_catalog.now()) then
        raise exception 'realtime.messages: inserted_at is set by the database'
            using errcode = 'insufficient_privilege';
    end if;
    new.xid := pg_catalog.pg_current_xact_id();
    new.seq := pg_catalog.nextval('realtime.messages_seq'::regclass);
    return new;
end;
$$;

comment on function realtime.messages_guard() is
'Trigger of realtime.messages: for roles subject to row-level security, the topic must be '
'realtime.topic() when set, inserted_at must be the default, and xid and seq are the database''s.';

-- The WHEN clause spares privileged writers the function call.
create trigger messages_guard before insert on realtime.messages
for each row
when (pg_catalog.row_security_active('realtime.messages'::regclass))
execute function realtime.messages_guard();
