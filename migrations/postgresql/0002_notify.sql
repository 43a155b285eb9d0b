-- prisma-mail-outbox migration 0002_notify (postgresql). Written by hand (Prisma models have no triggers);
-- the same statements ship as prisma/postgresql/notify-trigger.sql for Prisma Migrate users.
-- mail-outbox: apply-on-baseline
--
-- Wakes idle relays when mail is enqueued: after each INSERT statement on mail_outbox (one
-- notification per statement, not per row), NOTIFY on channel "mail_outbox" with the table's
-- schema as payload. PostgreSQL delivers it only when the transaction commits, and drops it on
-- rollback, so a relay never wakes for mail it cannot see yet. Relays also poll, so a missed
-- notification only delays a mail until the next poll.
--
-- Turn it off without dropping anything (for example behind PgBouncer in transaction pooling,
-- where LISTEN does not work, or under very high insert rates where each notifying commit takes
-- a cluster-wide lock):
--   ALTER DATABASE mydb SET mail_outbox.notify = off;      -- or ALTER ROLE app SET ..., or SET in a session

CREATE OR REPLACE FUNCTION mail_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('mail_outbox.notify', true) IS DISTINCT FROM 'off' THEN
    PERFORM pg_notify('mail_outbox', TG_TABLE_SCHEMA);
  END IF;
  RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS mail_outbox_notify ON mail_outbox;

CREATE TRIGGER mail_outbox_notify
  AFTER INSERT ON mail_outbox
  FOR EACH STATEMENT
  EXECUTE FUNCTION mail_outbox_notify();
