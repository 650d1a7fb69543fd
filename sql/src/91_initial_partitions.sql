-- Partitions from yesterday to today + 3 exist as soon as CREATE EXTENSION returns.
select realtime.maintain();
