/**
 * The application side of the signup example: a Prisma client with the outbox extension, and a
 * signup that writes the user and its welcome mail in one transaction.
 */
import { PrismaBetterSqlite3 } from "@prisma/adapter-better-sqlite3";
import { PrismaClient } from "./generated/client.js";
// In your application: import { mailOutbox } from "prisma-mail-outbox";
import { mailOutbox, parseDatabaseUrl, type EnqueueResult } from "../../src/index.js";

/** The Prisma client of the app, extended with `outboxEmail.enqueue()` / `enqueueMany()`. */
export function createClient(databaseUrl: string) {
  const { filename } = sqliteFile(databaseUrl);
  return new PrismaClient({ adapter: new PrismaBetterSqlite3({ url: `file:${filename}` }) }).$extends(
    mailOutbox({ defaultFrom: { name: "Acme", address: "hello@acme.example" } }),
  );
}

export type AppClient = ReturnType<typeof createClient>;
/** What `prisma.$transaction(async (tx) => ...)` hands to its callback. */
export type AppTx = Parameters<Parameters<AppClient["$transaction"]>[0]>[0];

/** The `User` table as `prisma migrate dev` would create it from prisma/schema.prisma (the example skips Prisma Migrate). */
export const USER_TABLE_SQL = `
CREATE TABLE IF NOT EXISTS "User" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "email" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "plan" TEXT NOT NULL DEFAULT 'free',
    "createdAt" DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE UNIQUE INDEX IF NOT EXISTS "User_email_key" ON "User"("email");`;

export function sqliteFile(databaseUrl: string): { filename: string } {
  const location = parseDatabaseUrl(databaseUrl);
  if (location.dialect !== "sqlite") throw new Error(`This example runs on SQLite; DATABASE_URL must be file:..., got ${databaseUrl}`);
  return location;
}

export interface Signup {
  readonly name: string;
  readonly email: string;
  readonly plan: "free" | "pro";
  /** Charged for the first month of the pro plan. */
  readonly card?: string;
}

export class PaymentDeclinedError extends Error {
  override name = "PaymentDeclinedError";
}

/** A stand-in for a payment provider: this test card number is always declined. */
export const DECLINED_CARD = "4000 0000 0000 0002";

async function chargeFirstMonth(card: string | undefined): Promise<void> {
  if (card === undefined || card === DECLINED_CARD) throw new PaymentDeclinedError("card declined");
}

/**
 * Sign a user up: create the row, enqueue the welcome mail, and charge pro users. All of it runs in
 * the caller's transaction `tx`, so it commits or rolls back as one: a signup whose payment fails
 * leaves no user and no mail, even though the mail was enqueued before the payment was tried.
 * `onEnqueued` sees the mail's ids as soon as they exist, before the transaction ends.
 */
export async function signUp(tx: AppTx, person: Signup, onEnqueued?: (mail: EnqueueResult) => void) {
  const user = await tx.user.create({ data: { email: person.email, name: person.name, plan: person.plan } });
  const mail = await tx.outboxEmail.enqueue({
    to: { name: person.name, address: person.email },
    subject: `Welcome to Acme, ${person.name}`,
    text: `Hello ${person.name},\n\nyour Acme account (${person.plan} plan) is ready.\n\n-- Acme\n`,
    // One welcome mail per user, even if this code ran twice for the same user.
    idempotencyKey: `welcome:${user.id}`,
    metadata: { userId: user.id },
  });
  onEnqueued?.(mail);
  if (person.plan === "pro") await chargeFirstMonth(person.card);
  return { user, mail };
}
