import nodemailer, { type Transporter } from "nodemailer";
/** What a contender reports to the child process that runs it. */
export interface Hooks {
  /** A claim (fetch) of mails/jobs returned. */
  claimed(): void;
  /** `n` more mails are recorded as handed over (the row or job is in its final state). */
  recorded(n: number): void;
  /** The MTA's 250 for this Message-ID reached the contender. */
  sent(messageId: string): void;
}

export interface Running {
  /** Stop gracefully and close every connection. */
  stop(): Promise<void>;
}

/** Settings every contender gets alike. */
export interface CommonSettings {
  /** `smtp://127.0.0.1:PORT?maxConnections=10`: the same pooled nodemailer transport for all. */
  readonly smtpUrl: string;
  /** Hand-offs in flight at once (relay `concurrency`, graphile-worker `concurrency`, pg-boss jobs per fetch spread over workers). */
  readonly concurrency: number;
}

/** A producer: enqueue one mail in its own transaction; resolves once it has committed. */
export interface Producer {
  enqueue(messageId: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * What a graphile-worker or pg-boss user runs: nodemailer's own SMTP pool, with the settings our
 * `createTransporter("smtp://HOST:PORT?maxConnections=N")` gives nodemailer today. Built here and
 * not by `createTransporter`, so a change to our transport never changes the other contenders.
 */
export function nodemailerPool(smtpUrl: string): Transporter {
  const u = new URL(smtpUrl);
  return nodemailer.createTransport({
    pool: true,
    host: u.hostname,
    port: Number(u.port),
    secure: false,
    maxConnections: Number(u.searchParams.get("maxConnections") ?? 5),
    maxMessages: 1000,
    maxRequeues: 0,
    connectionTimeout: 15_000,
    greetingTimeout: 15_000,
    socketTimeout: 60_000,
    logger: false,
  });
}
