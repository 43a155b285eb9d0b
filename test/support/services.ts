/**
 * Which real services a test needs, and what happens when one is missing.
 *
 * Locally a test whose service is absent is skipped, and says why. With
 * MAIL_OUTBOX_REQUIRE_SERVICES=1 (set by .ci/run) a missing service fails the test instead,
 * so nothing is skipped silently in CI.
 */
import type { TestContext } from "node:test";
import net from "node:net";
import { existsSync } from "node:fs";
import { execFileSync } from "node:child_process";

export const PG_ADMIN_URL = process.env.TEST_POSTGRES_URL ?? "postgresql://postgres@127.0.0.1:5432/test";
export const REQUIRE_SERVICES = process.env.MAIL_OUTBOX_REQUIRE_SERVICES === "1";

function tcpReachable(host: string, port: number, timeoutMs = 1500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

/** Skip (or, in CI, fail) the test when `reason` is not null. Returns true when the test may go on. */
export function needService(t: TestContext, service: string, reason: string | null): boolean {
  if (reason === null) return true;
  const message = `${service} is not available: ${reason}`;
  if (REQUIRE_SERVICES) throw new Error(`${message} (MAIL_OUTBOX_REQUIRE_SERVICES=1 makes this a failure)`);
  console.log(`# SKIP ${t.name}: ${message}`);
  t.skip(message);
  return false;
}

let pgReason: Promise<string | null> | undefined;
/** PostgreSQL at TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test). */
export async function needPostgres(t: TestContext): Promise<boolean> {
  pgReason ??= (async () => {
    const u = new URL(PG_ADMIN_URL);
    return (await tcpReachable(u.hostname, Number(u.port || 5432))) ? null : `nothing listens on ${u.hostname}:${u.port || 5432}`;
  })();
  return needService(t, "PostgreSQL", await pgReason);
}

/** MySQL/MariaDB: the server tests create their databases on (root may create databases). */
export const MYSQL_ADMIN_URL = process.env.TEST_MYSQL_URL ?? "mysql://root@127.0.0.1:3306/test";

let mysqlReason: Promise<string | null> | undefined;
/** MySQL or MariaDB at TEST_MYSQL_URL (default mysql://root@127.0.0.1:3306/test; .ci/run starts MariaDB). */
export async function needMysql(t: TestContext): Promise<boolean> {
  mysqlReason ??= (async () => {
    const u = new URL(MYSQL_ADMIN_URL);
    return (await tcpReachable(u.hostname, Number(u.port || 3306))) ? null : `nothing listens on ${u.hostname}:${u.port || 3306} (start MariaDB: start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd)`;
  })();
  return needService(t, "MySQL/MariaDB", await mysqlReason);
}

/** Where Postfix's programs are, when it is installed. */
export const POSTFIX_SENDMAIL = "/usr/sbin/sendmail";
export const POSTFIX = "/usr/sbin/postfix";

/** Postfix installed and its master daemon running (`postfix status`). */
export function postfixReason(): string | null {
  if (!existsSync(POSTFIX)) return `${POSTFIX} not found (apt-get install -y postfix; .ci/run does it)`;
  try {
    execFileSync(POSTFIX, ["status"], { stdio: "pipe" });
    return null;
  } catch {
    return "the Postfix daemon is not running (postfix start)";
  }
}

export function needPostfix(t: TestContext): boolean {
  return needService(t, "Postfix", postfixReason());
}
