/**
 * What a MySQL/MariaDB error means, by the `mariadb` driver's `errno` / `code` / `sqlState`.
 * Checked against real errors of MariaDB 10.11 (test/mysql-relay.test.ts, test/mysql-lifecycle.test.ts):
 * a server that refuses connections comes as the pool's ER_GET_CONNECTION_TIMEOUT (45028) with
 * the ECONNREFUSED as its cause, a refused login (wrong password, unknown database) as the
 * server's own error (the pool reports it at once, conn.ts), a killed connection as
 * ER_SOCKET_UNEXPECTED_CLOSE (45009, fatal), KILL QUERY as 1317; a lock wait timeout (1205) or
 * a deadlock (1213) rolled the statement or the transaction back and passes on retry: "busy",
 * retried soon.
 */
import type { DatabaseErrorKind } from "../../store.js";

const UNAVAILABLE_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH",
  "ER_CONNECTION_TIMEOUT", "ER_GET_CONNECTION_TIMEOUT", "ER_SOCKET_UNEXPECTED_CLOSE", "ER_CMD_CONNECTION_CLOSED",
  "ER_CONNECTION_ALREADY_CLOSED", "ER_POOL_ALREADY_CLOSED", "ER_SERVER_SHUTDOWN", "ER_CON_COUNT_ERROR",
  "ER_QUERY_INTERRUPTED", "ER_SOCKET_TIMEOUT", "ER_CLIENT_INTERRUPTED",
]);

/**
 * The server's answers to a connection attempt that say "not with these settings", so trying
 * again before someone changes them is pointless: 1045 access denied (a wrong password, an
 * unknown user), 1698 access denied without a password (auth plugin), 1044 no access to the
 * database, 1049 unknown database, 1129 host blocked after too many bad connects, 1130 host not
 * allowed, 1251 an authentication protocol the driver does not speak, 1524 an authentication
 * plugin not loaded, 1862 password expired, 3118 (MySQL) and 4151 (MariaDB) account locked.
 * Not "too many connections" (1040): that passes.
 */
const REFUSAL_ERRNOS = new Set([1045, 1698, 1044, 1049, 1129, 1130, 1251, 1524, 1862, 3118, 4151]);
const REFUSAL_CODES = new Set(["ER_ACCESS_DENIED_ERROR", "ER_DBACCESS_DENIED_ERROR", "ER_BAD_DB_ERROR"]);

/** A connection attempt refused for good (see REFUSAL_ERRNOS); also inside an AggregateError (one attempt per address). */
export function isConnectionRefusal(err: unknown): boolean {
  if (err instanceof AggregateError) return err.errors.some(isConnectionRefusal);
  const e = err as { code?: unknown; errno?: unknown } | null;
  return (typeof e?.errno === "number" && REFUSAL_ERRNOS.has(e.errno)) || (typeof e?.code === "string" && REFUSAL_CODES.has(e.code));
}

export function classifyMysqlError(err: unknown): DatabaseErrorKind {
  const e = err as { code?: unknown; errno?: unknown; sqlState?: unknown; fatal?: unknown; message?: unknown } | null;
  const code = typeof e?.code === "string" ? e.code : "";
  const errno = typeof e?.errno === "number" ? e.errno : 0;
  // The pool's "pool timeout" when no connection could be made: what the server said is the cause.
  const cause = (err as { cause?: unknown } | null)?.cause;
  if (code === "ER_GET_CONNECTION_TIMEOUT" && cause instanceof Error) return classifyMysqlError(cause);
  // 1146 no such table, 1054 unknown column, 1049 unknown database (refused below)
  if (errno === 1146 || errno === 1054 || code === "ER_NO_SUCH_TABLE" || code === "ER_BAD_FIELD_ERROR") return "schema";
  if (errno === 1062 || code === "ER_DUP_ENTRY") return "conflict";
  // access denied (with or without a password, to the database), unknown database, ... (REFUSAL_ERRNOS)
  if (isConnectionRefusal(err)) return "refused";
  // 1213 deadlock, 1205 lock wait timeout: another transaction held the rows; try again soon
  if (errno === 1213 || errno === 1205 || code === "ER_LOCK_DEADLOCK" || code === "ER_LOCK_WAIT_TIMEOUT") return "busy";
  // 1053 shutdown, 1927 connection killed, 2013/2006 lost/gone, 1040 too many connections, 1317 query interrupted, 4031 idle timeout
  if ([1053, 1927, 2013, 2006, 1040, 1317, 4031].includes(errno) || UNAVAILABLE_CODES.has(code)) return "unavailable";
  if (e?.fatal === true) return "unavailable";
  if (err instanceof AggregateError && err.errors.some((x) => classifyMysqlError(x) === "unavailable")) return "unavailable";
  if (code !== "" || errno !== 0) return "other";
  return typeof e?.message === "string" && /connection|timeout|closed|socket/i.test(e.message) ? "unavailable" : "other";
}
