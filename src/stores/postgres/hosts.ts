/**
 * Several hosts in one PostgreSQL URL, as libpq takes them, for failover without a proxy:
 *
 *     postgresql://user@db1:5432,db2:5432/app?target_session_attrs=read-write
 *
 * node-postgres connects to one host only (brianc/node-postgres#1470), so this module does what
 * libpq does on top of it: every new connection of the pool (and the LISTEN connection) goes to the
 * host found to match `target_session_attrs`, tried in the order written. The host found is
 * remembered; a connection to it that fails or is lost (the server stopped, a failover) forgets
 * it, and the next connection tries the hosts again, so after a standby is promoted the relay's
 * ordinary reconnects (src/outages.ts) land on the new primary without a restart. A remembered
 * host is checked again on each new connection, so one that came back as a standby is left.
 *
 * Hosts that match none: the connection fails with {@link NoUsableHostError} (SQLSTATE class 08,
 * "unavailable" to the relay, which backs off and tries again) naming each host and why.
 */
import pg from "pg";
import { DatabaseConfigError, DatabaseUnavailableError } from "../../errors.js";
import { redactUrl } from "../../redact.js";

export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** libpq's `target_session_attrs` values (PostgreSQL 14+); `any` is the default, as in libpq. */
export const TARGET_SESSION_ATTRS = ["any", "read-write", "read-only", "primary", "standby", "prefer-standby"] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];

export interface MultiHostUrl {
  readonly hosts: readonly HostPort[];
  readonly target: TargetSessionAttrs;
  /** The URL with the first host only and without `target_session_attrs`: what `new URL` and pg take. */
  readonly url: string;
}

/** No host in the URL could be connected to and matched `target_session_attrs`. Code 08001 (libpq's "unable to connect"). */
export class NoUsableHostError extends DatabaseUnavailableError {
  override name = "NoUsableHostError";
  readonly code = "08001";
}

const AUTHORITY = /^(postgres(?:ql)?:\/\/)([^/?#]*)(.*)$/s;

const show = (h: HostPort) => (h.host.includes(":") ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`);

/**
 * The hosts and `target_session_attrs` of a PostgreSQL URL, or null for a URL with one host and no
 * `target_session_attrs` (pg takes it as it is). A host without a port gets 5432, as in libpq.
 * @throws DatabaseConfigError for an empty host in the list, a port that is not a number, or a
 * `target_session_attrs` value libpq does not know.
 * @example
 * parseMultiHostUrl("postgresql://u@a:5432,b:5433/db?target_session_attrs=read-write");
 * // { hosts: [{ host: "a", port: 5432 }, { host: "b", port: 5433 }], target: "read-write", url: "postgresql://u@a:5432/db" }
 */
export function parseMultiHostUrl(url: string): MultiHostUrl | null {
  const m = AUTHORITY.exec(url);
  if (!m) return null;
  const [, scheme, authority, rest] = m as unknown as [string, string, string, string];
  const at = authority.lastIndexOf("@");
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : "";
  const list = authority.slice(at + 1);
  const tsa = /[?&]target_session_attrs=([^&#]*)/.exec(rest);
  if (!list.includes(",") && tsa === null) return null;
  const hosts = list.split(",").map((entry): HostPort => {
    const hp = /^(\[[^\]]*\]|[^:]*)(?::(.*))?$/.exec(entry);
    const host = hp?.[1] ?? "";
    const port = hp?.[2];
    if (host === "" || (port !== undefined && !/^\d{1,5}$/.test(port))) {
      throw new DatabaseConfigError(
        `The host list "${list}" in the PostgreSQL URL has an entry ${JSON.stringify(entry)} that is not host or host:port; write postgresql://user@host1:5432,host2:5432/db.`,
      );
    }
    return { host: decodeURIComponent(host.replace(/^\[|\]$/g, "")), port: port === undefined ? 5432 : Number(port) };
  });
  let target: TargetSessionAttrs = "any";
  if (tsa !== null) {
    const value = decodeURIComponent(tsa[1]!);
    if (!(TARGET_SESSION_ATTRS as readonly string[]).includes(value)) {
      throw new DatabaseConfigError(`target_session_attrs=${JSON.stringify(value)} in the PostgreSQL URL: use one of ${TARGET_SESSION_ATTRS.join(", ")} (read-write for relays and the CLI).`);
    }
    target = value as TargetSessionAttrs;
  }
  const query = rest.replace(/([?&])target_session_attrs=[^&#]*&?/, "$1").replace(/[?&](#|$)/, "$1");
  return { hosts, target, url: `${scheme}${userinfo}${show(hosts[0]!)}${query}` };
}

/** `url` (one host, as {@link parseMultiHostUrl} gives it, maybe rewritten since) with the hosts and `target_session_attrs` of `multi` put back. */
export function withHosts(url: string, multi: MultiHostUrl): string {
  const m = AUTHORITY.exec(url);
  if (!m) return url;
  const [, scheme, authority, rest] = m as unknown as [string, string, string, string];
  const at = authority.lastIndexOf("@");
  const list = multi.hosts.map(show).join(",");
  const tsa = multi.target === "any" ? "" : `${rest.includes("?") ? "&" : "?"}target_session_attrs=${multi.target}`;
  const hash = rest.indexOf("#");
  const body = hash >= 0 ? rest.slice(0, hash) : rest;
  return `${scheme}${at >= 0 ? authority.slice(0, at + 1) : ""}${list}${body}${tsa}${hash >= 0 ? rest.slice(hash) : ""}`;
}

interface Session {
  readonly recovery: boolean;
  readonly readOnly: boolean;
}

/** Whether a session fits `target` (libpq's rules); prefer-standby takes any host in its second pass. */
function fits(target: TargetSessionAttrs, s: Session, pass: 1 | 2): boolean {
  switch (target) {
    case "any":
      return true;
    case "read-write":
      return !s.readOnly;
    case "read-only":
      return s.readOnly;
    case "primary":
      return !s.recovery;
    case "standby":
      return s.recovery;
    case "prefer-standby":
      return pass === 2 || s.recovery;
  }
}

const SESSION_SQL = "SELECT pg_is_in_recovery() AS recovery, current_setting('transaction_read_only') = 'on' AS read_only";

/** Point a not yet connected pg client at `h` (pg reads `host`/`port` when it connects). */
function aim(client: pg.Client, h: HostPort): void {
  const c = client as unknown as { host: string; port: number; connectionParameters: { host: string; port: number } };
  c.host = h.host;
  c.port = h.port;
  c.connectionParameters.host = h.host;
  c.connectionParameters.port = h.port;
}

/**
 * Which host new connections go to: found by trying the hosts in order, remembered until a
 * connection to it fails or is lost. Shared by every connection of one pool.
 */
export class HostPicker {
  private current: HostPort | null = null;
  private finding: Promise<HostPort> | null = null;
  /** How many times the hosts were tried (for tests and figures). */
  rounds = 0;

  constructor(
    readonly hosts: readonly HostPort[],
    readonly target: TargetSessionAttrs,
  ) {}

  /** The remembered host (`fresh: false`), or one found now by trying each (`fresh: true`). */
  async pick(config: pg.ClientConfig): Promise<{ host: HostPort; fresh: boolean }> {
    if (this.current !== null) return { host: this.current, fresh: false };
    this.finding ??= this.find(config).finally(() => (this.finding = null));
    return { host: await this.finding, fresh: true };
  }

  /** Forget `host` (a connection to it failed or was lost): the next connection tries every host again. */
  forget(host: HostPort): void {
    if (this.current === host) this.current = null;
  }

  /** The host new connections go to now, null while none is known. */
  get host(): HostPort | null {
    return this.current;
  }

  private async find(config: pg.ClientConfig): Promise<HostPort> {
    this.rounds++;
    const why: string[] = [];
    const sessions = new Map<HostPort, Session>();
    for (const pass of this.target === "prefer-standby" ? ([1, 2] as const) : ([1] as const)) {
      for (const h of this.hosts) {
        let s = sessions.get(h);
        if (s === undefined && pass === 1) {
          try {
            s = await probe(config, h);
            sessions.set(h, s);
          } catch (err) {
            why.push(`${show(h)}: ${(err as Error).message || String(err)}`);
            continue;
          }
        }
        if (s === undefined) continue;
        if (fits(this.target, s, pass)) {
          this.current = h;
          return h;
        }
        if (pass === 1) why.push(`${show(h)}: ${s.recovery ? "a standby (in recovery)" : "a primary"}${s.readOnly ? ", read-only" : ""}`);
      }
    }
    throw new NoUsableHostError(
      `No host in the database URL takes target_session_attrs=${this.target} connections (${why.join("; ")}). During a failover this lasts until a standby is promoted; the relay retries meanwhile.`,
    );
  }
}

/** Connect to `h`, read whether it is in recovery and read-only, disconnect. */
async function probe(config: pg.ClientConfig, h: HostPort): Promise<Session> {
  const client = new pg.Client({ ...config, application_name: `${config.application_name ?? "mail-outbox"} probe`.slice(0, 63) });
  aim(client, h);
  client.on("error", () => {});
  try {
    await client.connect();
    const { rows } = await client.query<{ recovery: boolean; read_only: boolean }>(SESSION_SQL);
    return { recovery: rows[0]!.recovery, readOnly: rows[0]!.read_only };
  } finally {
    await client.end().catch(() => {});
  }
}

export interface Failover {
  readonly picker: HostPicker;
  /** The URL with the first host only, for pg's own parsing (user, database, options). */
  readonly connectionString: string;
  /** A client class (a subclass of `Base`, e.g. the store's own) whose connections go to the picked host. */
  wrap(Base: typeof pg.Client): typeof pg.Client;
}

/**
 * Failover for a connection string with several hosts or a `target_session_attrs`; null for a
 * plain one. Use `connectionString` and `wrap(ClientClass)` as the pool's `connectionString` and
 * `Client`: pg's Pool creates every connection with that class, so nothing else changes.
 * @throws DatabaseConfigError as {@link parseMultiHostUrl}.
 */
export function failoverFor(connectionString: string): Failover | null {
  const multi = parseMultiHostUrl(connectionString);
  if (multi === null) return null;
  const picker = new HostPicker(multi.hosts, multi.target);
  const checked = multi.target !== "any";
  return {
    picker,
    connectionString: multi.url,
    wrap(Base) {
      const superConnect = Base.prototype.connect as unknown as (this: pg.Client) => Promise<void>;
      class FailoverClient extends Base {
        private readonly config: pg.ClientConfig;

        constructor(config?: pg.ClientConfig | string) {
          super(config as pg.ClientConfig);
          this.config = typeof config === "string" ? { connectionString: config } : { ...config };
        }

        // @ts-expect-error one implementation for pg's overloads
        override connect(callback?: (err: Error | undefined) => void): unknown {
          const run = this.connectToPicked();
          if (typeof callback !== "function") return run;
          run.then(() => callback(undefined), (err: Error) => callback(err));
          return undefined;
        }

        private async connectToPicked(): Promise<void> {
          const { host, fresh } = await picker.pick(this.config);
          aim(this as unknown as pg.Client, host);
          // A connection to the picked host that fails, or ends without our asking: forget the host.
          const lost = () => picker.forget(host);
          this.on("error", lost);
          this.on("end", () => {
            if (!(this as unknown as { _ending: boolean })._ending) lost();
          });
          try {
            await superConnect.call(this as unknown as pg.Client);
          } catch (err) {
            lost();
            throw err;
          }
          if (fresh || !checked) return;
          // A remembered host may have changed role since (a failback, a restart as standby).
          const { rows } = await this.query<{ recovery: boolean; read_only: boolean }>(SESSION_SQL);
          if (!fits(multi!.target, { recovery: rows[0]!.recovery, readOnly: rows[0]!.read_only }, 2)) {
            lost();
            await this.end().catch(() => {});
            throw new NoUsableHostError(`${show(host)} no longer takes target_session_attrs=${multi!.target} connections; the next connection tries the hosts again.`);
          }
        }
      }
      return FailoverClient as unknown as typeof pg.Client;
    },
  };
}

/** A pg client for `connectionString`, one host or several (then it connects as {@link failoverFor} does). */
export function listenClient(connectionString: string, config: pg.ClientConfig): pg.Client {
  const failover = failoverFor(connectionString);
  if (failover === null) return new pg.Client({ ...config, connectionString });
  return new (failover.wrap(pg.Client))({ ...config, connectionString: failover.connectionString });
}

/**
 * A URL fit for logs ({@link redactUrl}: password and secret-looking parameters as `***`), also
 * when it lists several hosts (which `new URL` refuses, so redactUrl alone would only hide the password).
 */
export function redactHostsUrl(url: string): string {
  let multi: MultiHostUrl | null = null;
  try {
    multi = parseMultiHostUrl(url);
  } catch {
    // Not a valid host list: redactUrl's own fallback.
  }
  return multi === null ? redactUrl(url) : withHosts(redactUrl(multi.url), multi);
}
