/**
 * Failover with several hosts in the database URL (libpq's form, src/stores/postgres/hosts.ts):
 * parsing; host picking against the local PostgreSQL; and for real, a primary with a synchronous
 * streaming replica (test/support/replica.ts, clusters fo_primary:5450 / fo_replica:5451) where
 * the primary is crashed (`stop -m immediate`) and the replica promoted while producers commit
 * mail and a relay process (the real CLI, `mail-outbox relay`) drains it. Audited like the soak:
 * lost 0, rolled back delivered 0, duplicates within the relay's concurrency; the time to recover
 * is printed, not asserted.
 */
import { describe, it } from "node:test";
import type { TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";
import pg from "pg";
import { mailOutbox, openDatabase, parseDatabaseUrl } from "../src/index.js";
import { DatabaseConfigError } from "../src/errors.js";
import { migrate } from "../src/migrate.js";
import { redactUrl } from "../src/redact.js";
import { failoverFor, NoUsableHostError, parseMultiHostUrl, redactHostsUrl, withHosts } from "../src/stores/postgres/hosts.js";
import { prismaClientFor } from "./support/db.js";
import { needPostgres, needService, PG_ADMIN_URL } from "./support/services.js";
import { REPLICA, replicaPairReason, startReplicaPair, startSwitchProxy } from "./support/replica.js";
import { startTestSmtp } from "../testkit/smtp.js";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const CLI = path.join(ROOT, "src/cli.ts");

describe("multi-host URLs", () => {
  it("parses libpq's host list and target_session_attrs, and gives pg a one-host URL", () => {
    const m = parseMultiHostUrl("postgresql://u:pw@a:5432,b,[::1]:5433/db?schema=s&target_session_attrs=read-write&sslmode=disable");
    assert.ok(m);
    assert.deepEqual(m.hosts, [
      { host: "a", port: 5432 },
      { host: "b", port: 5432 },
      { host: "::1", port: 5433 },
    ]);
    assert.equal(m.target, "read-write");
    assert.equal(m.url, "postgresql://u:pw@a:5432/db?schema=s&sslmode=disable");
    assert.equal(withHosts(m.url, m), "postgresql://u:pw@a:5432,b:5432,[::1]:5433/db?schema=s&sslmode=disable&target_session_attrs=read-write");
    assert.equal(parseMultiHostUrl("postgresql://u@a:5432/db"), null, "one host, no target: pg takes it as it is");
    assert.equal(parseMultiHostUrl("postgresql://u@a/db?target_session_attrs=primary")?.url, "postgresql://u@a:5432/db");
    assert.throws(() => parseMultiHostUrl("postgresql://u@a,,b/db"), DatabaseConfigError);
    assert.throws(() => parseMultiHostUrl("postgresql://u@a:x,b/db"), DatabaseConfigError);
    assert.throws(() => parseMultiHostUrl("postgresql://u@a,b/db?target_session_attrs=writable"), /read-write/);
  });

  it("parseDatabaseUrl keeps the hosts, strips Prisma's parameters, and the display URL hides the password", () => {
    const url = "postgresql://app:hunter2@db1:5432,db2:5432/shop?schema=mail&target_session_attrs=read-write";
    const loc = parseDatabaseUrl(url);
    assert.ok(loc.dialect === "postgresql");
    assert.equal(loc.schema, "mail");
    assert.equal(loc.connectionString, "postgresql://app:hunter2@db1:5432,db2:5432/shop?target_session_attrs=read-write");
    const f = failoverFor(loc.connectionString);
    assert.ok(f);
    assert.equal(f.connectionString, "postgresql://app:hunter2@db1:5432/shop");
    assert.doesNotMatch(redactUrl(url), /hunter2/);
    const shown = redactHostsUrl("postgresql://app:hunter2@db1,db2:5433/shop?sslpassword=s3cr3t&target_session_attrs=read-write");
    assert.equal(shown, "postgresql://app:***@db1:5432,db2:5433/shop?sslpassword=***&target_session_attrs=read-write");
  });

  it("against the local PostgreSQL: a dead first host is skipped; a target no host matches fails as unavailable, naming each host", async (t) => {
    if (!(await needPostgres(t))) return;
    const u = new URL(PG_ADMIN_URL);
    const live = `${u.hostname}:${u.port || 5432}`;
    const base = `postgresql://${u.username}@127.0.0.1:1,${live}${u.pathname}`;
    const db = await openDatabase(`${base}?target_session_attrs=read-write`, { poolSize: 2, listenUrl: `${base}?target_session_attrs=primary` });
    try {
      assert.ok(db.dialect === "postgresql" && db.failover);
      // LISTEN, on the pool's hosts and on a listen URL of several hosts.
      const listener = await db.listen(() => {}, () => {});
      assert.ok(listener);
      await listener.close();
      const { rows } = await db.pool.query<{ port: number }>("SELECT inet_server_port() AS port");
      assert.equal(rows[0]!.port, Number(u.port || 5432));
      assert.equal(db.failover.picker.host?.port, Number(u.port || 5432));
      await db.ping();
    } finally {
      await db.close();
    }
    const standby = await openDatabase(`${base}?target_session_attrs=standby`, { poolSize: 1 });
    try {
      assert.ok(standby.dialect === "postgresql");
      const err = await standby.pool.query("SELECT 1").then(
        () => assert.fail("no host is a standby"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof NoUsableHostError, String(err));
      assert.match(err.message, /127\.0\.0\.1:1: .*ECONNREFUSED/);
      assert.match(err.message, new RegExp(`${live}: a primary`));
      assert.equal(standby.classifyError(err), "unavailable", "the relay backs off and retries");
    } finally {
      await standby.close();
    }
  });
});

class PlannedRollback extends Error {}

describe("failover for real: primary crashed and replica promoted mid-drain", () => {
  it("the relay (CLI, two hosts in DATABASE_URL) carries on against the new primary: lost 0, rolled back delivered 0, duplicates ≤ concurrency", async (t: TestContext) => {
    if (!needService(t, "a PostgreSQL primary/replica pair", replicaPairReason())) return;
    let pair: Awaited<ReturnType<typeof startReplicaPair>>;
    try {
      pair = await startReplicaPair();
    } catch (err) {
      if (!needService(t, "a PostgreSQL primary/replica pair", `building it failed: ${(err as Error).message.split("\n")[0]}`)) return;
      throw err;
    }
    t.after(() => pair.stop());
    const schema = "failover_test";
    const admin = new pg.Client({ connectionString: pair.primaryUrl });
    await admin.connect();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
    const primaryUrl = `${pair.primaryUrl}?schema=${schema}`;
    const setup = await openDatabase(primaryUrl, { poolSize: 1 });
    await migrate(setup);
    await setup.close();

    const CONCURRENCY = 4;
    const smtp = await startTestSmtp({ faults: (ctx) => (ctx.phase === "data" ? { stallMs: 15 } : undefined) });
    t.after(() => smtp.close());
    // The application's endpoint: a proxy an operator (or the platform) points at the primary.
    const proxy = await startSwitchProxy(5450);
    t.after(() => proxy.close());
    const appUrl = `postgresql://postgres@127.0.0.1:${proxy.port}/postgres?schema=${schema}`;
    const prisma = (await prismaClientFor(appUrl, t)).$extends(mailOutbox({ defaultFrom: "app@example.com" })) as any;

    const committed = new Set<string>();
    const rolledBack = new Set<string>();
    const inDoubt = new Set<string>();
    const producerErrors: string[] = [];
    let producing = true;
    let n = 0;
    let firstCommitAfterCrash: number | null = null;
    let stoppedMark: number | null = null;
    const producer = async () => {
      while (producing) {
        const i = n++;
        let id: string | null = null;
        try {
          await prisma.$transaction(
            async (tx: any) => {
              id = (await tx.outboxEmail.enqueue({ to: `user${i}@example.com`, subject: `failover ${i}`, text: "x" })).messageId;
              if (i % 10 === 7) throw new PlannedRollback();
            },
            { maxWait: 5000, timeout: 10_000 },
          );
          committed.add(id!);
          if (stoppedMark !== null && firstCommitAfterCrash === null) firstCommitAfterCrash = Date.now();
        } catch (err) {
          if (err instanceof PlannedRollback) rolledBack.add(id!);
          else {
            if (id !== null) inDoubt.add(id);
            producerErrors.push((err as Error).message.split("\n")[0]!);
            await new Promise((r) => setTimeout(r, 100));
          }
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    // A backlog first, so the relay is mid-drain at the crash.
    const producers = Array.from({ length: 3 }, producer);
    while (committed.size < 200) await new Promise((r) => setTimeout(r, 20));

    const relayUrl = `postgresql://postgres@127.0.0.1:5450,127.0.0.1:${REPLICA.port}/postgres?schema=${schema}&target_session_attrs=read-write`;
    const relay = spawn(process.execPath, ["--import", "tsx", CLI, "relay", "--concurrency", String(CONCURRENCY), "--poll", "200ms", "--relay-id", "failover-relay"], {
      env: { ...process.env, DATABASE_URL: relayUrl, MAIL_OUTBOX_TRANSPORT: smtp.url, MAIL_OUTBOX_LOG_LEVEL: "info", MAIL_OUTBOX_LISTEN_URL: "" },
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    t.after(() => {
      if (relay.exitCode === null) relay.kill("SIGKILL");
    });
    const relayLog: string[] = [];
    createInterface({ input: relay.stderr! }).on("line", (l) => relayLog.push(l));
    createInterface({ input: relay.stdout! }).on("line", (l) => relayLog.push(l));
    const exited = new Promise<number | null>((r) => relay.once("exit", (code) => r(code)));

    await smtp.waitFor(() => smtp.messages.length >= 120, 60_000);
    // The crash, and the failover an operator (or Patroni, or the platform) does.
    const crashedAt = Date.now();
    const deliveredAtCrash = smtp.messages.length;
    await pair.crashPrimary();
    // Anything recorded after this is on the new primary (the old one is down, the new one not yet writable).
    const stoppedAt = Date.now();
    stoppedMark = stoppedAt;
    const promoteMs = await pair.promoteReplica();
    const promotedAt = Date.now();
    proxy.retarget(REPLICA.port);
    // Producers go on against the new primary for a while.
    const waitUntil = async (cond: () => boolean, ms: number, what: string) => {
      const end = Date.now() + ms;
      while (!cond()) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}; relay log:\n${relayLog.slice(-20).join("\n")}\nproducer errors: ${producerErrors.slice(-5).join(" | ")}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await waitUntil(() => firstCommitAfterCrash !== null, 60_000, "a commit on the new primary");
    const target = committed.size + 100;
    await waitUntil(() => committed.size >= target, 60_000, "100 more commits");
    producing = false;
    await Promise.all(producers);

    // Everything that exists on the new primary gets sent; the relay is the same process.
    const newPrimary = new pg.Client({ connectionString: pair.replicaUrl });
    newPrimary.on("error", () => {});
    await newPrimary.connect();
    const pending = async () =>
      Number((await newPrimary.query<{ n: string }>(`SELECT count(*) AS n FROM ${schema}.mail_outbox WHERE status <> 'sent'`)).rows[0]!.n);
    const deadline = Date.now() + 90_000;
    while ((await pending()) > 0) {
      if (Date.now() > deadline) assert.fail(`mail left unsent on the new primary; relay log:\n${relayLog.slice(-30).join("\n")}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(relay.exitCode, null, `the relay is still running (no restart); log:\n${relayLog.slice(-20).join("\n")}`);
    const { rows } = await newPrimary.query<{ message_id: string; status: string }>(`SELECT message_id, status FROM ${schema}.mail_outbox`);
    const first = await newPrimary.query<{ ms: string | null }>(
      `SELECT (extract(epoch FROM min(sent_at)) * 1000)::bigint AS ms FROM ${schema}.mail_outbox WHERE sent_at > to_timestamp($1::double precision / 1000)`,
      [stoppedAt],
    );
    await newPrimary.end();
    relay.kill("SIGTERM");
    assert.equal(await exited, 0, "the relay stops cleanly");

    const inTable = new Set(rows.map((r) => r.message_id));
    const counts = smtp.countByMessageId();
    const lost = [...committed].filter((id) => !counts.has(id));
    const committedMissing = [...committed].filter((id) => !inTable.has(id));
    const rolledBackDelivered = [...rolledBack].filter((id) => counts.has(id) || inTable.has(id));
    // In doubt at the crash: either way, but consistent (in the table ⇔ delivered).
    const doubtInconsistent = [...inDoubt].filter((id) => inTable.has(id) !== counts.has(id));
    const extraCopies = [...counts.values()].reduce((s, c) => s + (c > 1 ? c - 1 : 0), 0);
    const recoverMs = first.rows[0]!.ms === null ? null : Number(first.rows[0]!.ms) - crashedAt;
    const outageLine = relayLog.find((l) => /database reachable again/.test(l));
    t.diagnostic(
      `committed ${committed.size}, rolled back ${rolledBack.size}, in doubt ${inDoubt.size} (${[...inDoubt].filter((id) => inTable.has(id)).length} committed after all), delivered at the crash ${deliveredAtCrash}, delivered in all ${smtp.messages.length}`,
    );
    t.diagnostic(`lost ${lost.length}, committed but missing on the new primary ${committedMissing.length}, rolled back delivered ${rolledBackDelivered.length}, extra copies ${extraCopies} (bound ${CONCURRENCY})`);
    t.diagnostic(
      `time to recover: crash → first hand-off recorded on the new primary ${recoverMs} ms (stop took ${stoppedAt - crashedAt} ms, promotion ${promoteMs.toFixed(0)} ms, done ${promotedAt - crashedAt} ms after the crash); producers' first commit through the repointed endpoint ${firstCommitAfterCrash! - crashedAt} ms after the crash`,
    );
    if (outageLine) t.diagnostic(`relay log: ${outageLine}`);
    assert.deepEqual(lost, []);
    assert.deepEqual(committedMissing, [], "synchronous replication: every acknowledged commit is on the new primary");
    assert.deepEqual(rolledBackDelivered, []);
    assert.deepEqual(doubtInconsistent, []);
    assert.ok(extraCopies <= CONCURRENCY, `extra copies ${extraCopies} ≤ concurrency ${CONCURRENCY}`);
    assert.ok(recoverMs !== null && recoverMs > 0, "a hand-off was recorded on the new primary");

    // The crashed primary back as a standby of the new one, first in the list: passed over by read-write, taken by standby.
    await pair.rebuildStandby();
    const hostList = `postgresql://postgres@127.0.0.1:5450,127.0.0.1:${REPLICA.port}/postgres?schema=${schema}`;
    for (const [target, port] of [["read-write", REPLICA.port], ["primary", REPLICA.port], ["standby", 5450], ["prefer-standby", 5450], ["any", 5450]] as const) {
      const db = await openDatabase(`${hostList}&target_session_attrs=${target}`, { poolSize: 1 });
      try {
        assert.ok(db.dialect === "postgresql");
        const { rows: r } = await db.pool.query<{ port: number; n: string }>(`SELECT inet_server_port() AS port, (SELECT count(*) FROM mail_outbox) AS n`);
        assert.equal(r[0]!.port, port, `target_session_attrs=${target}`);
        assert.equal(Number(r[0]!.n), rows.length, "the standby has every row");
      } finally {
        await db.close();
      }
    }
  });
});
