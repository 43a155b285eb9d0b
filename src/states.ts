/**
 * The state machine of an outbox row. Every status change any store statement makes is one of
 * the transitions listed here (see the diagram in the README); test/store-conformance.test.ts
 * checks it on every store by comparing (id, status) before and after each operation.
 *
 * ```
 * pending --claim--> sending --accepted--> sent
 *    ^                  |  \--permanent / attempts exhausted--> dead
 *    |                  |--transient (backoff), partly deferred--> pending
 *    |                  |--released at stop--> pending
 *    |                  \--lease expired (relay died)--> pending (policy "resend") | held (policy "hold", "verify")
 *    |                                                  | dead (its attempts used up)
 * pending|held --accepted-late--> sent   (the MTA's 250 recorded after the lease expired and the row was rescued)
 * held --verified-received--> sent | --verified-absent--> pending   (policy "verify", from the MTA's log)
 * pending|held --cancel--> cancelled
 * dead|cancelled|held|sent --replay--> pending
 * ```
 */
export const STATUSES = ["pending", "sending", "sent", "dead", "cancelled", "held"] as const;

export type OutboxStatus = (typeof STATUSES)[number];

/** Why a row moves. */
export type Transition =
  | "claim"
  | "accepted"
  | "transient"
  | "permanent"
  | "exhausted"
  | "release"
  | "accepted-late"
  | "partial"
  | "lease-expired-resend"
  | "lease-expired-hold"
  | "lease-expired-exhausted"
  | "verified-received"
  | "verified-absent"
  | "cancel"
  | "replay";

/** The one place that says which transitions are allowed from which status, and where they lead. */
export const TRANSITIONS: Readonly<Record<Transition, { readonly from: readonly OutboxStatus[]; readonly to: OutboxStatus }>> = {
  claim: { from: ["pending"], to: "sending" },
  accepted: { from: ["sending"], to: "sent" },
  /**
   * The relay that handed the mail over records the MTA's 250 although its lease expired meanwhile
   * and another relay rescued the row: the MTA has the mail, so it is not sent again.
   */
  "accepted-late": { from: ["pending", "held"], to: "sent" },
  transient: { from: ["sending"], to: "pending" },
  /** Some recipients accepted, others deferred (4xx): pending again for the deferred ones. */
  partial: { from: ["sending"], to: "pending" },
  permanent: { from: ["sending"], to: "dead" },
  exhausted: { from: ["sending"], to: "dead" },
  release: { from: ["sending"], to: "pending" },
  "lease-expired-resend": { from: ["sending"], to: "pending" },
  "lease-expired-hold": { from: ["sending"], to: "held" },
  /** The lease expired on the last allowed attempt: dead, marked as an uncertain hand-off. */
  "lease-expired-exhausted": { from: ["sending"], to: "dead" },
  /** Policy "verify": the MTA's record shows it queued the held mail (a `queued` event): sent, with that queue id. */
  "verified-received": { from: ["held"], to: "sent" },
  /** Policy "verify": the MTA's record, read past the time it was held, has no such mail: handed over again. */
  "verified-absent": { from: ["held"], to: "pending" },
  cancel: { from: ["pending", "held"], to: "cancelled" },
  replay: { from: ["dead", "cancelled", "held", "sent"], to: "pending" },
};

export function isOutboxStatus(value: unknown): value is OutboxStatus {
  return typeof value === "string" && (STATUSES as readonly string[]).includes(value);
}
