/** prisma-mail-outbox: the public API. */
export { mailOutbox, type MailOutboxOptions, type EnqueueResult, type EnqueuePromise } from "./extension.js";
export {
  createRelay,
  type Relay,
  type RelayOptions,
  type RelayCounts,
  type RelayEvents,
  type BackoffOptions,
  type SentEvent,
  type RetryEvent,
  type DeadEvent,
} from "./relay.js";
export { createTransporter, describeTransport, verifyTransport, type TransportSpec } from "./transport.js";
export { classifyError, parseQueueId, type ClassifiedFailure, type HandoffResult } from "./classify.js";
export { composeMail, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_MESSAGE_BYTES } from "./compose.js";
export { openDatabase, parseDatabaseUrl, redactUrl, type Db, type Dialect } from "./db.js";
export { migrate, checkSchema, inspectSchema, type MigrateOptions, type MigrateResult, type SchemaProblem } from "./migrate.js";
export { doctor, MTA_SIZE_ALLOWANCE_BYTES, type DoctorOptions, type DoctorReport, type DoctorCheck, type DoctorStatus } from "./doctor.js";
export * from "./admin.js";
export * from "./errors.js";
export { STATUSES, TRANSITIONS, type OutboxStatus, type Transition } from "./states.js";
export type { MailInput, AttachmentInput, AddressInput, JsonValue, ComposedMail } from "./types.js";
export type { LeaseExpiryPolicy, RescuedMail } from "./sql/types.js";
