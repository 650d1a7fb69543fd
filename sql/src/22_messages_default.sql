-- Rows whose UTC day has no partition land here instead of failing: a send never fails for want
-- of a partition. realtime.maintain() moves them into a partition for their day.
create table realtime.messages_default partition of realtime.messages default;

comment on table realtime.messages_default is
'Catch-all partition of realtime.messages; realtime.maintain() moves its rows into daily partitions.';
