"""The grant a Supabase database makes is all that sending needs: no sequence privilege, no grant_access()."""

from __future__ import annotations

import psycopg
import pytest

from .conftest import WARN_PREFIX, Notices

# What Supabase's migrations grant on the table, and nothing on a sequence.
SUPABASE_GRANT = "grant select, insert, update on realtime.messages to {role}"


@pytest.mark.parametrize(
    ("attributes", "under_rls"),
    [("nologin", True), ("nologin bypassrls", False)],
    ids=["authenticated (row-level security)", "service_role (bypassrls)"],
)
def test_supabase_grant_is_enough_to_send(
    db: psycopg.Connection, notices: Notices, attributes: str, under_rls: bool
) -> None:
    role = "supabase_writer_" + ("rls" if under_rls else "bypass")
    db.execute(f"create role {role} {attributes}")
    try:
        check_sends(db, notices, role, under_rls)
    finally:
        db.execute("reset role")
        db.execute(f"drop owned by {role}")
        db.execute(f"drop role {role}")


def check_sends(db: psycopg.Connection, notices: Notices, role: str, under_rls: bool) -> None:
    db.execute(SUPABASE_GRANT.format(role=role))
    # Supabase-style policies, row-tied: the topic being written, and reading it back.
    db.execute(
        f"create policy writes on realtime.messages for insert to {role}"
        " with check (realtime.topic() = 'room' and topic = realtime.topic())"
    )
    db.execute(f"create policy reads on realtime.messages for select to {role} using (topic = 'room')")
    privileges = db.execute(
        """select has_sequence_privilege(%(r)s, 'realtime.messages_seq', 'usage, select, update'),
                  pg_has_role(%(r)s, r.rolname, 'usage')
           from pg_roles r where r.rolname = current_user""",
        {"r": role},
    ).fetchone()
    assert privileges == (False, False)  # not the owner, nothing on the sequence

    db.execute(f"set role {role}")
    with db.transaction():
        db.execute("""select realtime.send('{"n": 1}', 'e', 'room')""")
        db.execute("select realtime.send_binary('\\x01', 'e', 'room')")
        # As supabase-js and PostgREST do: a plain INSERT.
        db.execute(
            "insert into realtime.messages (topic, extension, event) values ('room', 'broadcast', 'direct')"
        )
        db.execute("""select realtime.send('{}', 'e', 'elsewhere')""")
    rows = db.execute("select topic, event, seq from realtime.messages order by xid, seq").fetchall()
    db.execute("reset role")

    expected_warnings = []
    if under_rls:
        # The policy still decides: only the topic it allows.
        expected_warnings = [WARN_PREFIX + 'new row violates row-level security policy for table "messages"']
    assert notices.warnings == expected_warnings
    assert [(topic, event) for topic, event, _ in rows] == [
        ("room", "e"),
        ("room", "e"),
        ("room", "direct"),
    ] + ([] if under_rls else [("elsewhere", "e")])
    # seq still orders the rows of the transaction as they were written.
    seqs = [seq for _, _, seq in rows]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
