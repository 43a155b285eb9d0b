/**
 * prisma-mail-outbox: the public API, listed by name. Anything not exported here is internal and
 * may change in any release.
 *
 * - The Prisma extension: `mailOutbox()` adds `enqueue` / `enqueueMany` to `outboxEmail`.
 * - The relay: `createRelay()` claims committed mail and hands it to the MTA.
 * - Transports: `createTransporter()` builds the one the relay uses from a URL.
 * - Operator functions (what the CLI calls): status, list, show, replay, cancel, purge, migrate,
 *   doctor, init, suppress.
 * - Delivery fate after the hand-off: `followLog()` (the MTA's log), `ingestReport()` /
 *   `ingestMaildir()` (delivery status notifications), `watchFates()` (react in your application).
 * - Errors: one class per thing that can go wrong, all `instanceof MailOutboxError`.
 * Test helpers for applications live in `prisma-mail-outbox/testing`.
 */

// The Prisma extension and what a mail is made of.
export { mailOutbox, type MailOutboxOptions, type EnqueueResult, type EnqueuePromise } from "./extension.js";
export { composeOutboxMail, ComposedOutboxMail, type ComposeOutboxMailOptions } from "./extension.js";
export type { MailInput, AttachmentInput, AddressInput, JsonValue } from "./types.js";
export { DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_MESSAGE_BYTES } from "./compose.js";

// The relay.
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
  type RelayHealth,
} from "./relay.js";
// The relay's background duties: outbox gauges and retention.
export { parseRetention, GAUGES_LOCK, RETENTION_LOCK, type RetentionOptions, type RetentionRules, type GaugeSnapshot } from "./relay-ops.js";
// Logs: MAIL_OUTBOX_LOG_LEVEL, MAIL_OUTBOX_LOG_FORMAT.
export { createLogger, logLevelFrom, logFormatFrom, LOG_LEVELS, type LogLevel, type LogFormat, type LoggerOptions } from "./logger.js";
// The operations port: /metrics, /healthz, /readyz.
export { serveOperations, healthReport, type OperationsServer, type OperationsServerOptions, type HealthReport, type HealthCheck } from "./http-server.js";
export type { LeaseExpiryPolicy, RescuedMail } from "./store.js";
export type { HandoffOutcome, AttemptOutcome } from "./store.js";

// Transports.
export {
  createTransporter,
  describeTransport,
  verifyTransport,
  rawSendMailOptions,
  nodemailerDsn,
  type TransportSpec,
  type TransportCheck,
  type TransportCapabilities,
  type CapableTransport,
  type RawSend,
  type RawEnvelope,
  type RawSendResult,
  type DsnRequest,
} from "./transport.js";

// The database.
export { openDatabase, parseDatabaseUrl, type Db, type OpenDatabaseOptions, type DatabaseLocation } from "./db.js";
export type { Store, MailRecord, AttemptRecord, RejectedRecipient } from "./store.js";

// Operator functions (each CLI command calls one of these).
export {
  getStatus,
  listMails,
  showMail,
  replayMails,
  cancelMails,
  purgeMails,
  pingDatabase,
  PURGEABLE_STATUSES,
  type DbOrUrl,
  type StatusReport,
  type StatusOptions,
  type ListOptions,
  type ShowOptions,
  type MailDetail,
  type ReplayOptions,
  type ReplayResult,
  type ChangedMail,
  type SkippedMail,
  type CancelOptions,
  type CancelResult,
  type UnchangedMail,
  type PurgeOptions,
  type PurgeResult,
  type PurgeableStatus,
  purgeByRetention,
  type RetentionPurgeOptions,
  type RetentionPurgeResult,
  listSuppressions,
  suppress,
  unsuppress,
  mailFates,
  type RecipientFate,
  type ListSuppressionsOptions,
  type SuppressOptions,
  type SuppressResult,
  type UnsuppressOptions,
  type UnsuppressResult,
} from "./admin.js";
export { migrate, checkSchema, inspectSchema, type MigrateOptions, type MigrateResult, type SchemaProblem } from "./migrate.js";
// Pausing the relays and pacing their hand-offs (mail-outbox pause | resume | pace).
export {
  pauseRelays,
  resumeRelays,
  listPauses,
  setPace,
  removePace,
  listPaces,
  transportKey,
  parseScope,
  type OpsScope,
  type ScopeOptions,
  type PauseOptions,
  type PauseResult,
  type ResumeOptions,
  type ResumeResult,
  type PaceOptions,
  type PauseRecord,
  type RateRecord,
} from "./ops.js";
export { doctor, type DoctorOptions, type DoctorReport, type DoctorCheck, type DoctorStatus } from "./doctor.js";
export { initSchema, prismaConfigFor, type InitOptions, type InitResult, type SchemaProvider } from "./init.js";

// Delivery fate: what the MTA did after its 250, per recipient.
export { FATES } from "./store.js";
export type { Fate, FateSource, DeliveryEventKind, DeliveryEventRecord, SuppressionRecord } from "./store.js";
export { parseDsnOptions, DEFAULT_DSN_OPTIONS, signToken, verifyToken, handoffEnvelope, type DsnOptions, type DsnOptionsInput, type DsnNotify } from "./fate/token.js";
export { parseDeliveryReport, reportEvents, type DeliveryReport, type DsnRecipient } from "./fate/dsn.js";
export { ingestReport, ingestMaildir, type IngestOptions, type IngestResult, type MaildirSummary, type MaildirFileResult } from "./fate/ingest.js";
export { followLog, type FollowLogOptions, type FollowLogCounts, type FollowLogEvents, type LogFollower } from "./fate/follow-log.js";
export { parsePostfixLine, type PostfixLogEntry, type PostfixLineHead, type PostfixDeliveryStatus } from "./fate/postfix-log.js";
export { fateMetrics, type FateMetrics } from "./fate/metrics.js";
export { watchFates, type WatchFatesOptions, type FateEvent, type FateCursor } from "./fate/watch.js";
export { SUPPRESSION_POLICIES, type SuppressionPolicy } from "./fate/suppression.js";
export { decideVerify, DEFAULT_VERIFY_WINDOW_MS, VERIFY_MARGIN_MS, type VerifiedEvent, type VerifyDecision, type VerifyFacts } from "./fate/verify.js";

// PostgreSQL failover: no host of a multi-host URL matched target_session_attrs (a DatabaseUnavailableError).
export { NoUsableHostError } from "./stores/postgres/hosts.js";

// The state machine of a mail.
export { STATUSES, TRANSITIONS, type OutboxStatus, type Transition } from "./states.js";

// Errors.
export {
  MailOutboxError,
  InvalidMailError,
  MailTooLargeError,
  HeaderTooLargeError,
  DuplicateIdempotencyKeyError,
  ComposedMailAlreadyEnqueuedError,
  OptionsError,
  TransportConfigError,
  DatabaseConfigError,
  DatabaseUnavailableError,
  SchemaError,
  SchemaNotReadyError,
  NotFoundError,
  UnsafeOperationError,
  RelayStateError,
  HandoffTimeoutError,
  SendmailExitError,
  EightBitMimeError,
  SuppressedRecipientError,
  UnreadableReportError,
  ForgedReportError,
} from "./errors.js";
export { createDashboardHandler, isLoopbackHost, serveDashboard, MAX_BULK } from "./ui/index.js";
export type { DashboardAuth, DashboardHandler, DashboardOptions, DashboardServer, ServeDashboardOptions } from "./ui/index.js";
