/**
 * The application side of the sidecar example: a shop on PostgreSQL whose checkout writes the order,
 * takes the stock and enqueues the mails in one transaction.
 */
import { PrismaPg } from "@prisma/adapter-pg";
import { PrismaClient } from "./generated/client.js";
// In your application: import { mailOutbox } from "prisma-mail-outbox";
import { mailOutbox, parseDatabaseUrl, type EnqueueResult } from "../../src/index.js";

export const DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test?schema=example_sidecar";

/** The Prisma client of the app, extended with `outboxEmail.enqueue()` / `enqueueMany()`. */
export function createClient(databaseUrl: string) {
  const location = parseDatabaseUrl(databaseUrl);
  if (location.dialect !== "postgresql") throw new Error(`This example runs on PostgreSQL; DATABASE_URL must be postgresql://..., got ${databaseUrl}`);
  // Prisma reads `?schema=` from the URL; the pg driver does not, so it is passed to the adapter.
  const adapter = new PrismaPg({ connectionString: location.connectionString }, { schema: location.schema });
  return new PrismaClient({ adapter }).$extends(mailOutbox({ defaultFrom: { name: "Acme Shop", address: "orders@shop.example" } }));
}

export type AppClient = ReturnType<typeof createClient>;
export type AppTx = Parameters<Parameters<AppClient["$transaction"]>[0]>[0];

/** The app's tables as `prisma migrate dev` would create them from prisma/schema.prisma (the example skips Prisma Migrate). */
export const APP_TABLES_SQL = `
CREATE TABLE IF NOT EXISTS "Order" (
    "id" SERIAL NOT NULL,
    "customer" TEXT NOT NULL,
    "email" TEXT NOT NULL,
    "item" TEXT NOT NULL,
    "quantity" INTEGER NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'placed',
    "createdAt" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "Order_pkey" PRIMARY KEY ("id")
);
CREATE TABLE IF NOT EXISTS "Stock" (
    "item" TEXT NOT NULL,
    "available" INTEGER NOT NULL,
    CONSTRAINT "Stock_pkey" PRIMARY KEY ("item")
);`;

export interface Checkout {
  readonly customer: string;
  readonly email: string;
  readonly item: string;
  readonly quantity: number;
}

export class OutOfStockError extends Error {
  override name = "OutOfStockError";
}

/**
 * Place an order in the caller's transaction `tx`: write it, enqueue the customer's confirmation and
 * the warehouse's pick list (one `enqueueMany`), then take the items from stock. When the stock is
 * short the whole transaction rolls back: no order, no mails, though they were enqueued first.
 * `onEnqueued` sees the mails' ids as soon as they exist, before the transaction ends.
 */
export async function placeOrder(tx: AppTx, checkout: Checkout, onEnqueued?: (mails: EnqueueResult[]) => void) {
  const order = await tx.order.create({ data: { ...checkout } });
  const mails = await tx.outboxEmail.enqueueMany([
    {
      to: { name: checkout.customer, address: checkout.email },
      subject: `Order #${order.id} confirmed`,
      text: `Hello ${checkout.customer},\n\nwe received your order #${order.id}: ${checkout.quantity} x ${checkout.item}.\n\n-- Acme Shop\n`,
      idempotencyKey: `order-confirmation:${order.id}`,
      metadata: { orderId: order.id, kind: "confirmation" },
    },
    {
      to: "warehouse@shop.example",
      subject: `Pick list for order #${order.id}`,
      text: `${checkout.quantity} x ${checkout.item} for ${checkout.customer}\n`,
      priority: 10,
      metadata: { orderId: order.id, kind: "pick-list" },
    },
  ]);
  onEnqueued?.(mails);
  const taken = await tx.stock.updateMany({
    where: { item: checkout.item, available: { gte: checkout.quantity } },
    data: { available: { decrement: checkout.quantity } },
  });
  if (taken.count === 0) {
    const left = (await tx.stock.findUnique({ where: { item: checkout.item } }))?.available ?? 0;
    throw new OutOfStockError(`out of stock (${checkout.quantity} ordered, ${left} left)`);
  }
  return { order, mails };
}
