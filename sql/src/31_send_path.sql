-- Whether an INSERT of one message by the current role must run guarded, in a subtransaction:
-- only when what decides its fate cannot be checked beforehand without catching an error.
--   * Row-level security applies to the caller (not the owner, a superuser or BYPASSRLS): its
--     INSERT policies are arbitrary expressions, and a denial is an error.
--   * The role holds INSERT on some columns only: whether they cover the insert is the
--     executor's business.
--   * A private message with a topic over 2,000 bytes: the replay index holds the topic, and
--     whether such an entry fits a btree page depends on how well it compresses.
--   * A payload over 1 MB: adding its "id" could pass jsonb's 255 MB limit when the value was
--     compressed.
-- Everything else that can make the insert fail is known beforehand (see
-- realtime.insert_refusal()), so the common path takes no subtransaction id: one transaction
-- sending thousands of messages keeps its snapshot small (past 64 subtransactions every
-- snapshot in the cluster, standbys included, overflows and looks xids up in pg_subtrans).
-- LANGUAGE sql so that send() and the triggers get it inlined.
create function realtime.insert_needs_guard(topic text, private boolean, payload_size integer)
returns boolean
language sql
stable
as $$
    select
        pg_catalog.row_security_active('realtime.messages'::regclass)
        or (
            not pg_catalog.has_table_privilege('realtime.messages'::regclass, 'INSERT')
            and pg_catalog.has_any_column_privilege('realtime.messages'::regclass, 'INSERT')
        )
        or (insert_needs_guard.private and pg_catalog.octet_length(insert_needs_guard.topic) > 2000) is true
        or insert_needs_guard.payload_size > 1000000 is true
$$;

comment on function realtime.insert_needs_guard(text, boolean, integer) is
'Internal to send(): true when inserting this message must be tried in a subtransaction '
'(row-level security applies to the caller, column-only privileges, a very long private topic, '
'a payload over 1 MB).';

-- Why an INSERT of one message by the current role would fail, as PostgreSQL would say it (in
-- the order it checks), or null if it would succeed. Valid only where realtime.insert_needs_guard()
-- is false: no policy, no size limit is consulted here.
create function realtime.insert_refusal(topic text)
returns text
language sql
stable
as $$
    select case
        when pg_catalog.current_setting('transaction_read_only')::boolean
            then 'cannot execute INSERT in a read-only transaction'
        when not pg_catalog.has_table_privilege('realtime.messages'::regclass, 'INSERT')
            then 'permission denied for table messages'
        -- No sequence privilege: seq is an identity column, whose draws are not checked.
        when insert_refusal.topic is null
            then 'null value in column "topic" of relation "messages" violates not-null constraint'
    end
$$;

comment on function realtime.insert_refusal(text) is
'Internal to send(): why the current role could not insert a message on this topic (read-only '
'transaction, missing privileges, null topic), or null if it can.';

-- What looks wrong with a topic that send() was given, as far as SQL can see it, or null. No
-- client can join an empty topic, and clients add "realtime:" to a channel name themselves, so a
-- topic that starts with it (or carries stray spaces) reaches nobody who joined the plain name.
-- send() turns it into a NOTICE, never an error: such a topic may still be meant.
-- LANGUAGE sql so that send() gets it inlined, and STABLE because format() and to_json() are:
-- PostgreSQL inlines no IMMUTABLE function whose body is not, and a function it does not inline
-- is parsed and planned again in every transaction that calls it (measured in one-send transactions:
-- send() ran at 0.6 of the same function without this check, and at 0.9 once it was inlined).
create function realtime.topic_mistake(topic text)
returns text
language sql
stable
as $$
    select case
        when topic_mistake.topic = ''
            then 'the topic is empty: no channel can join it'
        when pg_catalog.lower(pg_catalog.left(topic_mistake.topic, 9)) = 'realtime:'
            then pg_catalog.format(
                'topic %s starts with "realtime:": clients add it to the channel name themselves, so '
                'a channel named %s receives what is sent to %s',
                pg_catalog.to_json(topic_mistake.topic),
                pg_catalog.to_json(pg_catalog.substr(topic_mistake.topic, 10)),
                pg_catalog.to_json(pg_catalog.substr(topic_mistake.topic, 10))
            )
        when topic_mistake.topic <> pg_catalog.btrim(topic_mistake.topic)
            then pg_catalog.format(
                'topic %s has leading or trailing spaces: a channel named %s does not receive it',
                pg_catalog.to_json(topic_mistake.topic),
                pg_catalog.to_json(pg_catalog.btrim(topic_mistake.topic))
            )
    end
$$;

comment on function realtime.topic_mistake(text) is
'Internal to send(): why a topic will likely reach nobody (empty, a "realtime:" prefix, stray '
'spaces), or null; send() raises it as a NOTICE SuspiciousBroadcastTopic.';

-- Whether send() may insert this message as it is, with nothing to check, catch or say: no guard
-- needed, nothing that would refuse the insert, no suspicious topic, and a payload that has an
-- "id" or can take one. One expression, so that the common path of send() evaluates one condition
-- and runs one INSERT: in a transaction of one send, PL/pgSQL prepares every expression it
-- evaluates anew, which costs about as much as the checks themselves (measured on a private
-- cluster, one send per transaction, 4 writers, CPU-bound, 3 rounds A B B A: 36,100 tps with
-- this condition against 34,700 with the same checks as separate statements; in another run,
-- 36,400 against 38,700 with no check at all).
-- LANGUAGE sql so that send() gets it inlined; null (a null payload, a null topic) means no.
create function realtime.send_goes_straight(payload jsonb, topic text, private boolean)
returns boolean
language sql
stable
as $$
    select
        not realtime.insert_needs_guard(send_goes_straight.topic, send_goes_straight.private,
            pg_catalog.pg_column_size(send_goes_straight.payload))
        and realtime.insert_refusal(send_goes_straight.topic) is null
        and realtime.topic_mistake(send_goes_straight.topic) is null
        and (send_goes_straight.payload ? 'id' or pg_catalog.jsonb_typeof(send_goes_straight.payload) = 'object')
$$;

comment on function realtime.send_goes_straight(jsonb, text, boolean) is
'Internal to send(): true when the message can be inserted directly, with no check to report '
'and no subtransaction.';

-- Set realtime.topic for the rest of the transaction (as SET LOCAL would) and return it: send()
-- calls it for the value of the row's topic, so that setting the topic costs no statement of
-- its own on the common path. The topic has been checked by then (not null, insertable).
-- LANGUAGE sql so that it is inlined.
create function realtime.topic_set(topic text)
returns text
language sql
volatile
as $$
    select pg_catalog.set_config('realtime.topic', topic_set.topic, true)
$$;

comment on function realtime.topic_set(text) is
'Internal to send(): sets realtime.topic for the rest of the transaction and returns it.';
