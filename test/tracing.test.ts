/**
 * OpenTelemetry traces with the SDK's in-memory exporter: `enqueue()` stores the caller's active span
 * context (a W3C traceparent) with the mail, on real SQLite files and the real PostgreSQL server, and
 * the relay's hand-off to a real SMTP server (in this process) is a span linked to it, with the
 * Message-ID, the queue id of the server's reply and the outcome. Without `@opentelemetry/api`
 * (simulated in a child process) nothing is stored or traced; a Prisma model without the
 * `traceContext` field (a generated client of the old schema) still enqueues.
 */
import { describe, it, before, after } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { fileURLToPath, pathToFileURL } from "node:url";
import { context, trace, SpanKind, SpanStatusCode, type SpanContext } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { createRelay, mailOutbox, openDatabase, type EnqueueResult } from "../src/index.js";
import {
  activeTraceparent,
  formatTraceparent,
  modelHasTraceContext,
  parseTraceparent,
  startHandoffSpan,
  traceContextFor,
  transportKind,
  TRACER_NAME,
} from "../src/tracing.js";
import { freshSqlite, freshPostgres, prismaClientFor, sqliteOf } from "./support/db.js";
import { needPostgres } from "./support/services.js";
import { startTestSmtp, type StartTestSmtpOptions } from "../testkit/smtp.js";

const root = fileURLToPath(new URL("../", import.meta.url));
const quiet = { logger: false as const };

// The application's side: an SDK with the in-memory exporter, and the async-hooks context manager.
const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
trace.setGlobalTracerProvider(provider);
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
const appTracer = trace.getTracer("shop");
after(async () => {
  await provider.shutdown();
  trace.disable();
  context.disable();
});

/** Run `fn` inside an active application span ("signup"); returns what `fn` returned and that span's context. */
async function inSpan<T>(fn: () => Promise<T>): Promise<{ result: T; sc: SpanContext }> {
  return appTracer.startActiveSpan("signup", async (span) => {
    try {
      return { result: await fn(), sc: span.spanContext() };
    } finally {
      span.end();
    }
  });
}

/** The outbox's hand-off spans exported so far for this Message-ID. */
function handoffSpans(messageId: string): ReadableSpan[] {
  return exporter.getFinishedSpans().filter((s) => s.instrumentationScope.name === TRACER_NAME && s.attributes["messaging.message.id"] === messageId);
}

/** `trace_context` of a row, read with the library's own connection (not through the Prisma model). */
async function storedTraceContext(url: string, id: string): Promise<string | null> {
  const db = await openDatabase(url);
  try {
    if (db.dialect === "postgresql") return ((await db.pool.query("SELECT trace_context FROM mail_outbox WHERE id = $1", [id])).rows[0] as { trace_context: string | null }).trace_context;
    return (sqliteOf(db).db.prepare("SELECT trace_context FROM mail_outbox WHERE id = ?").get(id) as { trace_context: string | null }).trace_context;
  } finally {
    await db.close();
  }
}

describe("traceparent values", () => {
  it("formats a span context as 00-<trace id>-<span id>-<flags> and reads it back", () => {
    const sc = { traceId: "4bf92f3577b34da6a3ce929d0e0e4736", spanId: "00f067aa0ba902b7", traceFlags: 1 };
    assert.equal(formatTraceparent(sc), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert.deepEqual(parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"), sc);
    assert.deepEqual(parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), { ...sc, traceFlags: 0 });
    // A later version is read for its first four fields.
    assert.deepEqual(parseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"), sc);
  });

  it("refuses what is not a valid traceparent", () => {
    for (const bad of [
      null,
      undefined,
      "",
      "garbage",
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
    ]) {
      assert.equal(parseTraceparent(bad), null, String(bad));
    }
  });

  it("the active span's context is the traceparent enqueue stores; none without an active span", async () => {
    assert.equal(activeTraceparent(), null);
    const { result, sc } = await inSpan(async () => activeTraceparent());
    assert.equal(result, formatTraceparent(sc));
  });

  it("names the transport kind and messaging system of each transport", () => {
    assert.deepEqual(transportKind({ transporter: { name: "SMTP (pipelined)" } }), { kind: "smtp", system: "smtp" });
    assert.deepEqual(transportKind({ transporter: { name: "SMTP (pool)" } }), { kind: "smtp", system: "smtp" });
    assert.deepEqual(transportKind({ transporter: { name: "sendmail-bs" } }), { kind: "sendmail-bs", system: "smtp" });
    assert.deepEqual(transportKind({ transporter: { name: "sendmail-pipe" } }), { kind: "sendmail", system: "sendmail" });
    assert.deepEqual(transportKind({ transporter: { name: "Mine" } }), { kind: "mine", system: "mine" });
  });

  it("tells a model with the traceContext field from one without it, by the client's runtime data model", () => {
    const client = (fields: string[]) => ({ _runtimeDataModel: { models: { OutboxEmail: { fields: fields.map((name) => ({ name })) } } } });
    assert.equal(modelHasTraceContext({ $name: "OutboxEmail", $parent: client(["id", "traceContext"]) }), true);
    assert.equal(modelHasTraceContext({ $name: "OutboxEmail", $parent: client(["id", "messageId"]) }), false);
    // A client that does not expose its data model: nothing is written (never a failed insert).
    assert.equal(modelHasTraceContext({ $name: "OutboxEmail", $parent: {} }), false);
    assert.equal(modelHasTraceContext({}), false);
  });
});

for (const dialect of ["sqlite", "postgresql"] as const) {
  describe(`traces on ${dialect}`, () => {
    let fx: { url: string; cleanup(): Promise<void> } | null = null;
    let prisma: any;

    before(async (t) => {
      if (dialect === "postgresql" && !(await needPostgres(t as unknown as TestContext))) return;
      fx = dialect === "sqlite" ? await freshSqlite() : await freshPostgres();
      prisma = (await prismaClientFor(fx.url)).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
    });
    after(async () => {
      await prisma?.$disconnect();
      await fx?.cleanup();
    });

    /** Hand every due mail to a fresh in-process SMTP server with `runOnce()`; returns the server's messages. */
    async function relayOnce(smtpOptions: StartTestSmtpOptions = {}) {
      const smtp = await startTestSmtp(smtpOptions);
      try {
        await createRelay({ databaseUrl: fx!.url, transport: smtp.url, backoff: { jitter: 0 }, ...quiet }).runOnce();
        return smtp.messages;
      } finally {
        await smtp.close();
      }
    }

    it("the test client's OutboxEmail model has the traceContext field", (t) => {
      if (!fx) return t.skip("no database");
      assert.equal(modelHasTraceContext(prisma.outboxEmail), true, "regenerate the test clients: node scripts/generate-test-clients.mjs");
    });

    it("enqueue inside an active span stores its traceparent, and the hand-off span links to that span, with Message-ID, queue id and outcome accepted", async (t) => {
      if (!fx) return t.skip("no database");
      const { result: mail, sc } = await inSpan<EnqueueResult>(() =>
        prisma.$transaction(async (tx: any) => {
          await tx.user.create({ data: { email: `ann-${dialect}@example.com` } });
          return tx.outboxEmail.enqueue({ to: `ann-${dialect}@example.com`, subject: "Welcome", text: "Hello Ann" });
        }),
      );
      assert.equal(await storedTraceContext(fx.url, mail.id), formatTraceparent(sc));

      const received = await relayOnce();
      const taken = received.find((m) => m.messageId === mail.messageId);
      assert.ok(taken, "the server took the mail");
      const spans = handoffSpans(mail.messageId);
      assert.equal(spans.length, 1);
      const span = spans[0]!;
      assert.equal(span.name, "send smtp");
      assert.equal(span.kind, SpanKind.CLIENT);
      // A link to exactly the enqueuing span, in a trace of its own (not a child of it).
      assert.deepEqual(
        span.links.map((l) => [l.context.traceId, l.context.spanId]),
        [[sc.traceId, sc.spanId]],
      );
      assert.notEqual(span.spanContext().traceId, sc.traceId);
      assert.equal(span.parentSpanContext, undefined);
      assert.deepEqual(span.attributes, {
        "messaging.system": "smtp",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.message.id": mail.messageId,
        "messaging.message.envelope.size": taken.raw.length,
        "mail_outbox.id": mail.id,
        "mail_outbox.attempt": 1,
        "mail_outbox.outcome": "accepted",
        "mail_outbox.queue_id": taken.queueId,
      });
      assert.equal(span.status.code, SpanStatusCode.UNSET);
    });

    it("a mail the server refuses with 550 gives a hand-off span with status ERROR, the reply, and outcome permanent", async (t) => {
      if (!fx) return t.skip("no database");
      const { result: mail, sc } = await inSpan<EnqueueResult>(() => prisma.outboxEmail.enqueue({ to: `refused-${dialect}@example.com`, subject: "No", text: "x" }));
      await relayOnce({ faults: (ctx) => (ctx.phase === "data" ? { reply: 550, message: "5.7.1 Message refused" } : undefined) });
      const [span, ...more] = handoffSpans(mail.messageId);
      assert.ok(span);
      assert.equal(more.length, 0);
      assert.deepEqual(span.links.map((l) => l.context.spanId), [sc.spanId]);
      assert.equal(span.attributes["mail_outbox.outcome"], "permanent");
      assert.equal(span.attributes["mail_outbox.response_code"], 550);
      assert.equal(typeof span.attributes["error.type"], "string");
      assert.equal(span.attributes["mail_outbox.queue_id"], undefined);
      assert.equal(span.status.code, SpanStatusCode.ERROR);
      assert.match(span.status.message ?? "", /550.*Message refused/);
    });

    it("a mail deferred with 451 gives status ERROR and outcome transient", async (t) => {
      if (!fx) return t.skip("no database");
      const mail = await prisma.outboxEmail.enqueue({ to: `later-${dialect}@example.com`, subject: "Later", text: "x" });
      await relayOnce({ faults: (ctx) => (ctx.phase === "data" ? { reply: 451, message: "4.3.0 Try again later" } : undefined) });
      const [span] = handoffSpans(mail.messageId);
      assert.ok(span);
      assert.equal(span.attributes["mail_outbox.outcome"], "transient");
      assert.equal(span.status.code, SpanStatusCode.ERROR);
      await prisma.outboxEmail.update({ where: { id: mail.id }, data: { status: "cancelled" } });
    });

    it("enqueue without an active span stores no trace context, and the hand-off span has no link", async (t) => {
      if (!fx) return t.skip("no database");
      const mail = await prisma.outboxEmail.enqueue({ to: `nospan-${dialect}@example.com`, subject: "Plain", text: "x" });
      assert.equal(await storedTraceContext(fx.url, mail.id), null);
      await relayOnce();
      const [span] = handoffSpans(mail.messageId);
      assert.ok(span);
      assert.deepEqual(span.links, []);
      assert.equal(span.attributes["mail_outbox.outcome"], "accepted");
    });

    it("enqueueMany and a batch transaction store the span active when they were called", async (t) => {
      if (!fx) return t.skip("no database");
      const { result, sc } = await inSpan<EnqueueResult[]>(async () => {
        const many = await prisma.outboxEmail.enqueueMany([
          { to: `many1-${dialect}@example.com`, subject: "1", text: "x" },
          { to: `many2-${dialect}@example.com`, subject: "2", text: "x" },
        ]);
        const [, batched] = await prisma.$transaction([
          prisma.user.create({ data: { email: `batch-${dialect}@example.com` } }),
          prisma.outboxEmail.enqueue({ to: `batch-${dialect}@example.com`, subject: "3", text: "x" }),
        ]);
        return [...many, batched];
      });
      for (const m of result) assert.equal(await storedTraceContext(fx.url, m.id), formatTraceparent(sc));
      await prisma.outboxEmail.updateMany({ where: { id: { in: result.map((m) => m.id) } }, data: { status: "cancelled" } });
    });
  });
}

describe("applications without the field or without the api", () => {
  it("a Prisma client generated before traceContext was added still enqueues, without a trace context (SQLite)", async (t) => {
    // The test client's schema without the field, generated into .tmp/ (gitignored): an application
    // that upgraded the library but not its models.
    const dir = path.join(root, ".tmp", `tracing-legacy-${randomUUID()}`);
    mkdirSync(dir, { recursive: true });
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const schema = readFileSync(path.join(root, "test", "prisma", "sqlite", "schema.prisma"), "utf8")
      .split("\n")
      .filter((line) => !/\btraceContext\b/.test(line))
      .join("\n");
    writeFileSync(path.join(dir, "schema.prisma"), schema);
    execFileSync(process.execPath, [path.join(root, "node_modules", "prisma", "build", "index.js"), "generate", "--schema", path.join(dir, "schema.prisma")], {
      cwd: root,
      env: { ...process.env, PRISMA_SCHEMA_ENGINE_BINARY: process.env.PRISMA_SCHEMA_ENGINE_BINARY ?? process.execPath, PRISMA_HIDE_UPDATE_MESSAGE: "1", CHECKPOINT_DISABLE: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const fx = await freshSqlite(t);
    const [{ PrismaClient }, { PrismaBetterSqlite3 }] = await Promise.all([
      import(pathToFileURL(path.join(dir, "generated", "client.ts")).href),
      import("@prisma/adapter-better-sqlite3"),
    ]);
    const prisma = new PrismaClient({ adapter: new PrismaBetterSqlite3({ url: fx.url }) }).$extends(mailOutbox({ defaultFrom: "shop@example.com" }));
    t.after(() => prisma.$disconnect());
    assert.equal(modelHasTraceContext(prisma.outboxEmail), false);
    const { result: mail } = await inSpan<EnqueueResult>(() => prisma.$transaction(async (tx: any) => tx.outboxEmail.enqueue({ to: "legacy@example.com", subject: "Old model", text: "x" })));
    assert.equal(await storedTraceContext(fx.url, mail.id), null);
    assert.equal(traceContextFor(prisma.outboxEmail), null);
  });

  it("without @opentelemetry/api installed, enqueue stores nothing and the relay starts no span", () => {
    // A child process in which resolving @opentelemetry/api fails, as in an application without it.
    const script = path.join(root, ".tmp", `tracing-no-api-${randomUUID()}.mjs`);
    mkdirSync(path.dirname(script), { recursive: true });
    writeFileSync(
      script,
      `import Module from "node:module";
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === "@opentelemetry/api" || request.startsWith("@opentelemetry/api/")) {
    throw Object.assign(new Error("Cannot find module '" + request + "'"), { code: "MODULE_NOT_FOUND" });
  }
  return resolve.call(this, request, ...rest);
};
const t = await import(${JSON.stringify(pathToFileURL(path.join(root, "src", "tracing.ts")).href)});
const mail = { id: "x", messageId: "<x@example.com>", raw: Buffer.from("x"), attempts: 1, traceContext: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" };
const parent = { _runtimeDataModel: { models: { OutboxEmail: { fields: [{ name: "traceContext" }] } } } };
console.log(JSON.stringify({ api: t.otelApi(), traceparent: t.traceContextFor({ $name: "OutboxEmail", $parent: parent }), span: t.startHandoffSpan(mail, null) }));
`,
    );
    try {
      const out = execFileSync(process.execPath, ["--import", "tsx", script], { cwd: root, encoding: "utf8" });
      assert.deepEqual(JSON.parse(out.trim()), { api: null, traceparent: null, span: null });
    } finally {
      rmSync(script, { force: true });
    }
  });

  it("a hand-off span is ended once, whatever the outcome", () => {
    const mail = { id: "m1", messageId: "<m1@example.com>", envelopeFrom: "a@example.com", envelopeTo: ["b@example.com"], raw: Buffer.from("x"), priority: 0, attempts: 2, maxAttempts: 5, uncertainHandoffs: 0, traceContext: null };
    const span = startHandoffSpan(mail, { transporter: { name: "sendmail-bs" } });
    assert.ok(span);
    span.end(undefined, new Error("stopped"));
    span.end(undefined, new Error("again"));
    const [ended, ...more] = handoffSpans("<m1@example.com>");
    assert.equal(more.length, 0);
    assert.equal(ended?.name, "send sendmail-bs");
    assert.equal(ended?.status.code, SpanStatusCode.ERROR);
    assert.equal(ended?.attributes["mail_outbox.attempt"], 2);
  });
});
