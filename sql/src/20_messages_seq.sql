-- Insertion order of the rows written by one transaction.
--
-- Only the order of rows *within* a transaction matters (the reader orders by transaction, then
-- by seq), and a transaction runs in one backend, whose cached values are strictly increasing.
-- So a per-backend cache of 100 values is safe and keeps nextval() off the shared sequence page.
create sequence realtime.messages_seq as bigint cache 100;

comment on sequence realtime.messages_seq is
'Supplies realtime.messages.seq: increasing within a transaction (per-backend cache), '
'not comparable across transactions.';
