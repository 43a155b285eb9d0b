-- prisma-mail-outbox: the notify trigger for PostgreSQL, for projects whose Prisma Migrate owns the
-- outbox tables. Prisma models cannot describe triggers, so add it to a migration by hand:
--
--   npx prisma migrate dev --create-only --name mail_outbox_notify
--   # paste this file at the end of the new migration.sql, then
--   npx prisma migrate dev
--
-- (`mail-outbox migrate` creates the same trigger as migrations/postgresql/0002_notify.sql;
-- test/schema-drift.test.ts keeps the two files' statements identical.)
--
-- After each INSERT statement on mail_outbox it sends NOTIFY on channel "mail_outbox" (payload:
-- the table's schema), delivered when the transaction commits, so idle relays wake at once
-- instead of at their next poll. Turn it off without dropping it:
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
