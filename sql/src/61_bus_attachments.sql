-- Client broadcasts travel between sidecars as NOTIFY payloads on the channel realtime_bus; a
-- message too large for one notification (8000 bytes) is written here by the sending sidecar in
-- the same transaction as its NOTIFY, and the notification names it by (origin, n). UNLOGGED: an
-- attachment matters for seconds and never survives a crash usefully, and an unlogged write makes
-- the bus transaction commit without a WAL flush. Three list partitions in turn (see
-- realtime.bus_slot()) are emptied by TRUNCATE, never by DELETE: no dead rows, no vacuum.
create table realtime.bus_attachments (
    slot smallint not null default realtime.bus_slot(),
    origin uuid not null,
    n bigint not null,
    body bytea not null
) partition by list (slot);

create unlogged table realtime.bus_attachments_0
partition of realtime.bus_attachments for values in (0);
create unlogged table realtime.bus_attachments_1
partition of realtime.bus_attachments for values in (1);
create unlogged table realtime.bus_attachments_2
partition of realtime.bus_attachments for values in (2);

-- The receiving sidecar looks its attachments up by sender and number.
create index bus_attachments_origin_n_idx on realtime.bus_attachments (origin, n);

-- Only the sidecars use the bus, as the extension's owner or a superuser (or a role given
-- realtime.grant_sidecar()); the roles of client tokens never see it.
revoke all on table realtime.bus_attachments from public;
revoke all on table realtime.bus_attachments_0 from public;
revoke all on table realtime.bus_attachments_1 from public;
revoke all on table realtime.bus_attachments_2 from public;

comment on table realtime.bus_attachments is
'Bodies of client broadcasts too large for a NOTIFY on realtime_bus, named in the notification by '
'(origin, n); unlogged, three partitions emptied in turn by realtime.bus_rotate().';
comment on table realtime.bus_attachments_0 is 'Attachments of minutes 0, 3, 6... (see realtime.bus_slot()).';
comment on table realtime.bus_attachments_1 is 'Attachments of minutes 1, 4, 7... (see realtime.bus_slot()).';
comment on table realtime.bus_attachments_2 is 'Attachments of minutes 2, 5, 8... (see realtime.bus_slot()).';
comment on column realtime.bus_attachments.slot is 'The partition (realtime.bus_slot() at write time).';
comment on column realtime.bus_attachments.origin is 'The sending sidecar''s id for this run.';
comment on column realtime.bus_attachments.n is 'The attachment''s number, unique per origin.';
comment on column realtime.bus_attachments.body is 'The encoded message, as the notification would carry it.';
