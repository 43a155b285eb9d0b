/**
 * The application side of the MariaDB example: a Prisma client on `@prisma/adapter-mariadb` with the
 * outbox extension, and a signup that writes the user and its welcome mail in one transaction.
 */
import { PrismaMariaDb } from "@prisma/adapter-mariadb";
import { PrismaClient } from "./generated/client.js";
// In your application: import { mailOutbox, DuplicateIdempotencyKeyError } from "prisma-mail-outbox";
import { DuplicateIdempotencyKeyError, mailOutbox, type EnqueueResult } from "../../src/index.js";

export const DEFAULT_DATABASE_URL = "mysql://root@127.0.0.1:3306/example_signup";

/**
 * The Prisma client of the app, extended with `outboxEmail.enqueue()` / `enqueueMany()`. Prisma's
 * MariaDB adapter (for MySQL too) takes the URL's parts; it writes and reads DATETIME as UTC.
 */
export function createClient(databaseUrl: string) {
  const u = new URL(databaseUrl);
  const adapter = new PrismaMariaDb({
    host: u.hostname,
    port: Number(u.port || 3306),
    user: decodeURIComponent(u.username),
    ...(u.password !== "" ? { password: decodeURIComponent(u.password) } : {}),
    database: decodeURIComponent(u.pathname.slice(1)),
    connectionLimit: 4,
  });
  return new PrismaClient({ adapter }).$extends(mailOutbox({ defaultFrom: { name: "Acme", address: "hello@acme.example" } }));
}

export type AppClient = ReturnType<typeof createClient>;
/** What `prisma.$transaction(async (tx) => ...)` hands to its callback. */
export type AppTx = Parameters<Parameters<AppClient["$transaction"]>[0]>[0];

/** The `User` table as `prisma migrate dev` would create it from prisma/schema.prisma (the example skips Prisma Migrate). */
export const USER_TABLE_SQL = `
CREATE TABLE IF NOT EXISTS \`User\` (
    \`id\` INTEGER NOT NULL AUTO_INCREMENT,
    \`email\` VARCHAR(191) NOT NULL,
    \`name\` VARCHAR(191) NOT NULL,
    \`plan\` VARCHAR(191) NOT NULL DEFAULT 'free',
    \`createdAt\` DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),

    UNIQUE INDEX \`User_email_key\`(\`email\`),
    PRIMARY KEY (\`id\`)
) DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci`;

export interface Signup {
  readonly name: string;
  readonly email: string;
  readonly plan: "free" | "pro";
  /** Charged for the first month of the pro plan. */
  readonly card?: string;
}

/** A stand-in for a payment provider: this test card number is always declined. */
export const DECLINED_CARD = "4000 0000 0000 0002";

function welcome(person: Signup, key: string, metadata: Record<string, string | number>) {
  return {
    to: { name: person.name, address: person.email },
    subject: `Welcome to Acme, ${person.name}`,
    text: `Hello ${person.name},\n\nyour Acme account (${person.plan} plan) is ready.\n\n-- Acme\n`,
    // One welcome mail per user, even if the signup request is retried.
    idempotencyKey: key,
    metadata,
  };
}

/**
 * Sign a user up in the caller's transaction `tx`: create (or, for a retried request, find) the
 * user, enqueue the welcome mail, charge pro users. A retried request finds the welcome mail's key
 * in the outbox: `DuplicateIdempotencyKeyError`, caught here, and the transaction goes on (on
 * MySQL/MariaDB as on PostgreSQL: nothing failed in the database, the key was looked up first).
 * `onEnqueued` sees the mail as soon as it exists, before the transaction ends.
 */
export async function signUp(tx: AppTx, person: Signup, onEnqueued?: (mail: EnqueueResult) => void) {
  const user = await tx.user.upsert({ where: { email: person.email }, create: { email: person.email, name: person.name, plan: person.plan }, update: {} });
  let mail: EnqueueResult | null = null;
  try {
    mail = await tx.outboxEmail.enqueue(welcome(person, `welcome:${user.id}`, { userId: user.id }));
    onEnqueued?.(mail);
  } catch (err) {
    if (!(err instanceof DuplicateIdempotencyKeyError)) throw err;
    // Sent (or about to be) by an earlier request: nothing to do.
  }
  if (person.plan === "pro" && (person.card === undefined || person.card === DECLINED_CARD)) throw new Error("card declined");
  return { user, mail };
}

/** The batch form: the user and the mail in one `$transaction([...])`, for code without an interactive transaction. */
export async function signUpBatch(prisma: AppClient, person: Signup) {
  const [user, mail] = await prisma.$transaction([
    prisma.user.create({ data: { email: person.email, name: person.name, plan: person.plan } }),
    prisma.outboxEmail.enqueue(welcome(person, `welcome:${person.email}`, { email: person.email })),
  ]);
  return { user, mail };
}
