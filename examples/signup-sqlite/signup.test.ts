/**
 * How an application tests its own mail: `expectEnqueued` / `expectNotEnqueued` from
 * "prisma-mail-outbox/testing" check what a transaction put in the outbox, without a relay or an MTA.
 *
 *   npm run example:signup:test
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
// In your application: import { expectEnqueued, expectNotEnqueued } from "prisma-mail-outbox/testing";
import { expectEnqueued, expectNotEnqueued } from "../../src/testing.js";
// In your application: import { migrate, openDatabase } from "prisma-mail-outbox";
import { migrate, openDatabase } from "../../src/index.js";
import { createClient, DECLINED_CARD, PaymentDeclinedError, signUp, USER_TABLE_SQL, type AppClient } from "./signup.js";

/** A fresh SQLite file with the outbox tables and User, deleted after the test. */
async function freshClient(t: { after(fn: () => Promise<void>): void }): Promise<AppClient> {
  const file = path.join(tmpdir(), `signup-example-test-${randomUUID()}.db`);
  const db = await openDatabase(`file:${file}`);
  await migrate(db);
  if (db.dialect === "sqlite") db.db.exec(USER_TABLE_SQL);
  await db.close();
  const prisma = createClient(`file:${file}`);
  t.after(async () => {
    await prisma.$disconnect();
    for (const suffix of ["", "-wal", "-shm"]) await rm(file + suffix, { force: true });
  });
  return prisma;
}

test("a signup enqueues exactly one welcome mail to the new user, in its transaction", async (t) => {
  const prisma = await freshClient(t);
  await prisma.$transaction(async (tx) => {
    const { user } = await signUp(tx, { name: "Ann Lee", email: "ann@example.com", plan: "free" });
    // Checked inside the transaction: the mail is there before anything commits.
    await expectEnqueued(tx, { to: "ann@example.com", subject: /welcome/i, metadata: { userId: user.id }, count: 1 });
  });
});

test("a signup whose payment is declined leaves no user and no welcome mail", async (t) => {
  const prisma = await freshClient(t);
  await assert.rejects(
    prisma.$transaction((tx) => signUp(tx, { name: "Carol Diaz", email: "carol@example.com", plan: "pro", card: DECLINED_CARD })),
    PaymentDeclinedError,
  );
  await expectNotEnqueued(prisma, { to: "carol@example.com" });
  assert.equal(await prisma.user.count(), 0);
});
