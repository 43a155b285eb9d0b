/**
 * The state machine of an outbox row. Every status change in the SQL of this library
 * is one of the transitions listed here (see the diagram in the README).
 *
 * ```
 * pending --claim--> sending --accepted--> sent
 *    ^                  |  \--permanent / attempts exhausted--> dead
 *    |                  |--transient (backoff)--> pending
 *    |                  |--released at stop--> pending
 *    |                  \--lease expired (relay died)--> pending (policy "resend") | held (policy "hold")
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
  | "lease-expired-resend"
  | "lease-expired-hold"
  | "cancel"
  | "replay";

/** The one place that says which transitions are allowed from which status, and where they lead. */
export const TRANSITIONS: Readonly<Record<Transition, { readonly from: readonly OutboxStatus[]; readonly to: OutboxStatus }>> = {
  claim: { from: ["pending"], to: "sending" },
  accepted: { from: ["sending"], to: "sent" },
  transient: { from: ["sending"], to: "pending" },
  permanent: { from: ["sending"], to: "dead" },
  exhausted: { from: ["sending"], to: "dead" },
  release: { from: ["sending"], to: "pending" },
  "lease-expired-resend": { from: ["sending"], to: "pending" },
  "lease-expired-hold": { from: ["sending"], to: "held" },
  cancel: { from: ["pending", "held"], to: "cancelled" },
  replay: { from: ["dead", "cancelled", "held", "sent"], to: "pending" },
};

export function isOutboxStatus(value: unknown): value is OutboxStatus {
  return typeof value === "string" && (STATUSES as readonly string[]).includes(value);
}
