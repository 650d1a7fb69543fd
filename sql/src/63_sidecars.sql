-- The sidecars serving this database: each one records itself at start and renews its lease
-- every few seconds; one whose lease ran out (stopped, killed, cut off) is removed by the next
-- renewal of any other. UNLOGGED: the rows describe running processes, which re-register within
-- seconds after a crash, and renewals then write no WAL.
create unlogged table realtime.sidecars (
    id uuid primary key,
    name text not null,
    address text not null,
    started_at timestamptz not null,
    renewed_at timestamptz not null,
    expires_at timestamptz not null
);

revoke all on table realtime.sidecars from public;

comment on table realtime.sidecars is
'The pg-realtime sidecars serving this database (one row per running process), kept by '
'realtime.sidecar_renew() and realtime.sidecar_leave().';
comment on column realtime.sidecars.id is 'Random id of the process, new at every start.';
comment on column realtime.sidecars.name is 'Human-readable name: host and process id.';
comment on column realtime.sidecars.address is 'host:port the sidecar listens on.';
comment on column realtime.sidecars.started_at is 'When the process started.';
comment on column realtime.sidecars.renewed_at is 'Its last renewal.';
comment on column realtime.sidecars.expires_at is 'When it counts as gone unless renewed.';
