/**
 * OpenTelemetry traces, when `@opentelemetry/api` is installed (an optional peer dependency):
 *
 * - `enqueue()` stores the caller's active span context with the mail, as a W3C `traceparent`
 *   (`00-<trace id>-<span id>-<flags>`) in `mail_outbox.trace_context`: the mail's creation context.
 * - The relay wraps each hand-off in a span (kind CLIENT, named `send <transport>`) that LINKS to
 *   that creation context. A link, not a parent: the hand-off runs later, in another process, maybe
 *   more than once (retries, replays), and the request that enqueued the mail ended long ago; a
 *   child would stretch that request's trace over hours and mix retries into it.
 *
 * Without the api nothing happens: it is looked up once (a synchronous `require`, so the first
 * `enqueue()` already sees it), and the answer is cached. With the api but no SDK registered, the
 * api's no-op context manager and proxy tracer provider cost well under a microsecond per mail.
 *
 * Attributes follow OpenTelemetry's messaging conventions (development status, semconv 1.3x):
 * `messaging.system`, `messaging.operation.name` / `.type` = `send`, `messaging.message.id` (the
 * Message-ID), `messaging.message.envelope.size`, `error.type` on failure; the outbox's own under
 * `mail_outbox.*` (`id`, `attempt`, `queue_id`, `outcome`, `response_code`).
 */
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import type * as OtelApi from "@opentelemetry/api";
import { handoffOutcome, type HandoffDecision } from "./outcome.js";
import type { ClaimedMail } from "./store.js";

/** The tracer's name (the instrumentation scope). */
export const TRACER_NAME = "prisma-mail-outbox";

type Api = typeof OtelApi;

/** undefined: not looked up yet; null: not installed (or unusable). */
let api: Api | null | undefined;

/**
 * `@opentelemetry/api`, or null when it is not installed. Loaded once with `require`: its CommonJS
 * build shares the global tracer provider and context manager with its ES module build (the api
 * keeps them on `globalThis`), so an application that imports it either way is seen.
 * @internal
 */
export function otelApi(): Api | null {
  if (api !== undefined) return api;
  try {
    const loaded = createRequire(import.meta.url)("@opentelemetry/api") as Api;
    api = typeof loaded?.trace?.getSpanContext === "function" && typeof loaded.isSpanContextValid === "function" ? loaded : null;
  } catch {
    api = null;
  }
  return api;
}

/**
 * Replace what `otelApi()` found (tests: null simulates an application without the api; undefined
 * looks it up again).
 * @internal
 */
export function setOtelApiForTesting(value: Api | null | undefined): void {
  api = value;
}

let version: string | undefined;
function packageVersion(): string {
  if (version === undefined) {
    try {
      version = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version?: string }).version ?? "0.0.0";
    } catch {
      version = "0.0.0";
    }
  }
  return version;
}

// ---------------------------------------------------------------------------------------------
// traceparent (W3C Trace Context, level 1)

/** A span context as a `traceparent` value: `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. */
export function formatTraceparent(sc: { readonly traceId: string; readonly spanId: string; readonly traceFlags: number }): string {
  return `00-${sc.traceId}-${sc.spanId}-${(sc.traceFlags & 0xff).toString(16).padStart(2, "0")}`;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;
const ZERO_TRACE_ID = "0".repeat(32);
const ZERO_SPAN_ID = "0".repeat(16);

/**
 * The span context in a `traceparent` value, or null when it is not one (or names the invalid all-zero
 * ids). Versions after 00 are read for their first four fields, as the W3C recommendation asks.
 */
export function parseTraceparent(value: string | null | undefined): { traceId: string; spanId: string; traceFlags: number } | null {
  if (typeof value !== "string") return null;
  const m = TRACEPARENT.exec(value);
  if (!m) return null;
  const [, ver, traceId, spanId, flags, rest] = m as unknown as [string, string, string, string, string, string | undefined];
  if (ver === "ff" || (ver === "00" && rest !== undefined)) return null;
  if (traceId === ZERO_TRACE_ID || spanId === ZERO_SPAN_ID) return null;
  return { traceId, spanId, traceFlags: parseInt(flags, 16) };
}

/**
 * The caller's active span context as a `traceparent`, or null: no api, no active span, or an
 * invalid context. Sampled or not: the flags are kept, so the hand-off span's link says whether the
 * enqueuing trace was recorded.
 */
export function activeTraceparent(): string | null {
  const otel = otelApi();
  if (otel === null) return null;
  try {
    const sc = otel.trace.getSpanContext(otel.context.active());
    return sc !== undefined && otel.isSpanContextValid(sc) ? formatTraceparent(sc) : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Does the application's OutboxEmail model have `traceContext`?

/** What the extension sees of a model delegate. */
interface DelegateLike {
  readonly $name?: string;
  readonly $parent?: unknown;
}

interface RuntimeModel {
  readonly fields?: readonly { readonly name?: unknown }[];
}

const fieldCache = new WeakMap<object, boolean>();

/**
 * Whether the delegate's model has a `traceContext` field: read from the client's runtime data model
 * (`client._runtimeDataModel.models[<model>].fields`, what Prisma's generated client carries; not
 * a public API, so when it is missing the answer is false and nothing is written). An application
 * that has not added the field to its schema (`mail-outbox init` prints the models) keeps working:
 * its mail is enqueued without a trace context.
 */
export function modelHasTraceContext(delegate: DelegateLike): boolean {
  try {
    const parent = delegate.$parent as { _runtimeDataModel?: { models?: Record<string, RuntimeModel | undefined> } } | null | undefined;
    const model = parent?._runtimeDataModel?.models?.[delegate.$name ?? "OutboxEmail"];
    if (model === undefined || model === null || typeof model !== "object") return false;
    let has = fieldCache.get(model);
    if (has === undefined) {
      has = Array.isArray(model.fields) && model.fields.some((f) => f?.name === "traceContext");
      fieldCache.set(model, has);
    }
    return has;
  } catch {
    return false;
  }
}

/**
 * What `enqueue()` writes into `traceContext`: the active `traceparent`, or null (nothing to write:
 * no api, no active span, or a model without the field). Call it synchronously in the caller's
 * context (when `enqueue()` is called), before any await.
 */
export function traceContextFor(delegate: DelegateLike): string | null {
  const traceparent = activeTraceparent();
  return traceparent !== null && modelHasTraceContext(delegate) ? traceparent : null;
}

// ---------------------------------------------------------------------------------------------
// The hand-off span

/** A transporter as far as naming its kind goes (a nodemailer Transporter, or null). */
interface TransporterLike {
  readonly transporter?: { readonly name?: unknown };
  readonly name?: unknown;
}

const kindCache = new WeakMap<object, { kind: string; system: string }>();

/**
 * The transport's kind (`smtp`, `sendmail`, `sendmail-bs`, or a custom transport's own name) and the
 * `messaging.system` it stands for (`smtp` where the hand-off speaks SMTP, `sendmail` for the
 * sendmail command, else the kind).
 */
export function transportKind(transporter: TransporterLike | null | undefined): { kind: string; system: string } {
  if (transporter === null || transporter === undefined) return { kind: "unknown", system: "unknown" };
  let k = kindCache.get(transporter);
  if (k === undefined) {
    const raw = transporter.transporter?.name ?? transporter.name;
    const name = typeof raw === "string" ? raw.trim().toLowerCase() : "";
    if (name.startsWith("smtp")) k = { kind: "smtp", system: "smtp" };
    else if (name === "sendmail-bs") k = { kind: "sendmail-bs", system: "smtp" };
    else if (name.includes("sendmail")) k = { kind: "sendmail", system: "sendmail" };
    else k = { kind: name === "" ? "custom" : name, system: name === "" ? "custom" : name };
    kindCache.set(transporter, k);
  }
  return k;
}

/** An open hand-off span; `end` sets the outcome, status and ends it (once; later calls do nothing). */
export interface HandoffSpan {
  end(outcome: HandoffDecision | undefined, failure?: unknown): void;
}

/**
 * The outbox's tracer, or undefined when no SDK is registered: the global tracer provider is then
 * the api's proxy without a delegate, and asking it first (`getDelegateTracer`) spares building a
 * span that would record nothing.
 */
function tracerOf(otel: Api): OtelApi.Tracer | undefined {
  const provider = otel.trace.getTracerProvider() as OtelApi.TracerProvider & { getDelegateTracer?: (name: string, version?: string) => OtelApi.Tracer | undefined };
  return typeof provider.getDelegateTracer === "function" ? provider.getDelegateTracer(TRACER_NAME, packageVersion()) : provider.getTracer(TRACER_NAME, packageVersion());
}

/**
 * Start the span of one hand-off, or null when there is nothing to trace (no api, no SDK registered,
 * or this span not sampled). A new trace (root), linked to the mail's creation context when it has one.
 */
export function startHandoffSpan(mail: ClaimedMail, transporter: TransporterLike | null | undefined): HandoffSpan | null {
  const otel = otelApi();
  if (otel === null) return null;
  try {
    const tracer = tracerOf(otel);
    if (tracer === undefined) return null;
    const { kind, system } = transportKind(transporter);
    const created = parseTraceparent(mail.traceContext);
    const links: OtelApi.Link[] = created === null ? [] : [{ context: { ...created, isRemote: true } }];
    const span = tracer.startSpan(`send ${kind}`, {
      kind: otel.SpanKind.CLIENT,
      root: true,
      links,
      attributes: {
        "messaging.system": system,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.message.id": mail.messageId,
        "messaging.message.envelope.size": mail.raw.length,
        "mail_outbox.id": mail.id,
        "mail_outbox.attempt": mail.attempts,
      },
    });
    if (!span.isRecording()) {
      span.end();
      return null;
    }
    let ended = false;
    return {
      end(outcome, failure) {
        if (ended) return;
        ended = true;
        // Tracing never breaks a hand-off: an exporter or processor that throws is ignored here.
        try {
          finishSpan(otel, span, outcome, failure);
        } catch {
          // the outcome attributes are missing; the span still ends below
        }
        try {
          span.end();
        } catch {
          // nothing more to do
        }
      },
    };
  } catch {
    return null;
  }
}

function finishSpan(otel: Api, span: OtelApi.Span, o: HandoffDecision | undefined, failure: unknown): void {
  if (o === undefined) {
    span.setStatus({ code: otel.SpanStatusCode.ERROR, message: failure instanceof Error ? failure.message : "the hand-off ended without an outcome" });
    span.setAttribute("error.type", "_OTHER");
    return;
  }
  span.setAttribute("mail_outbox.outcome", handoffOutcome(o));
  switch (o.kind) {
    case "accepted":
    case "partial":
      // The MTA took the mail (for some recipients at least): not an error. Deferred and refused
      // recipients show in the outcome (`partial`) and in the attempt log.
      if (o.queueId !== null) span.setAttribute("mail_outbox.queue_id", o.queueId);
      return;
    case "transient":
    case "permanent": {
      if (o.responseCode !== null) span.setAttribute("mail_outbox.response_code", o.responseCode);
      span.setAttribute("error.type", o.errorCode ?? (o.responseCode !== null ? String(o.responseCode) : "_OTHER"));
      span.setStatus({ code: otel.SpanStatusCode.ERROR, message: o.response ?? o.error });
      return;
    }
  }
}
