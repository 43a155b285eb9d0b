/**
 * Where follow-log's lines come from (follow-log.ts): `LogFile`, a log file read line by line
 * from a byte offset that follows rename rotation and copytruncate, and `LogStream`, lines from a
 * stream such as journald's on stdin. Neither records anything: the follower records each batch
 * with its position, then tells the file to `advance`.
 */
import { open, readdir, stat, type FileHandle } from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import { StringDecoder } from "node:string_decoder";
import { OptionsError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { LogCursor } from "../store.js";

/** At the end of the log, how often `caught_up_at` is refreshed when nothing new comes. */
export const HEARTBEAT_MS = 1000;
/** Bytes read per read(2). */
const CHUNK = 256 * 1024;
/** After a rename rotation, how long the old file must stay quiet before the new one is read. */
const ROTATION_GRACE_MS = 1000;
/** Bytes of the last line kept to notice a file truncated under the reader (copytruncate). */
const TAIL_BYTES = 256;
/** Stands for a line longer than CHUNK that was passed over (parses to nothing). */
const SKIPPED_LINE = "(a line too long to be Postfix's, passed over)";

/** Lines read and not yet recorded, with the position after them. */
export interface Batch {
  readonly lines: readonly string[];
  readonly fileId: string;
  readonly offset: number;
  /** Nothing more to read now: wait before asking again. */
  readonly eof: boolean;
  /** The file's bytes just before `offset` (up to TAIL_BYTES), to notice a truncation later; files only. */
  readonly tail?: Buffer;
  /**
   * At `eof`, a rotated log's new file is waiting to be read (the old one is given a moment for
   * late lines): not everything logged is read, so `caught_up_at` must not move.
   */
  readonly rotationPending?: boolean;
  /** When the read that produced them started. */
  readonly readAt: Date;
}

export interface LineSource {
  /** Up to `max` lines; an empty batch with `eof` when there is nothing new; null when the source has ended. */
  next(max: number): Promise<Batch | null>;
  /** What to save in the cursor's state to notice a truncation on restart, once `batch` is recorded (base64). */
  tailAfter(batch: Batch): string | null;
  close(): Promise<void>;
}

/** `dev:ino`: the same file under any name. */
function fileIdOf(st: { dev: bigint; ino: bigint }): string {
  return `${st.dev}:${st.ino}`;
}

async function statId(file: string): Promise<{ id: string; size: number } | null> {
  try {
    const st = await stat(file, { bigint: true });
    return { id: fileIdOf(st), size: Number(st.size) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

export class LogFileMissingError extends OptionsError {
  override name = "LogFileMissingError";
}

/**
 * A log file read line by line from a byte offset, following rename rotation (the old file is read
 * to its end, then the new one from 0) and copytruncate (a file that shrank or whose bytes before
 * the position changed is read from 0, after the rest of the copy when the copy is found).
 */
export class LogFile implements LineSource {
  private fh: FileHandle | null = null;
  private fileId = "";
  private offset = 0;
  /** The bytes before `offset` as last recorded: when they change, the file was truncated and written again. */
  private tailBytes: Buffer | null = null;
  private readonly buf = Buffer.allocUnsafe(CHUNK);
  /** When a rotation was seen at the end of the old file (or the old file last grew since): switch once it stayed quiet for ROTATION_GRACE_MS. */
  private rotationSeenAt: number | null = null;
  /**
   * The file at the log's path when a rotation was first seen, held open: the follower reads it next
   * even if it is rotated again (renamed, compressed and deleted) before the old one goes quiet.
   */
  private heldNext: { fh: FileHandle; id: string } | null = null;

  constructor(
    private readonly file: string,
    private readonly once: boolean,
    private readonly log: Logger,
    private readonly warn: (err: Error) => void,
    private readonly onRotation: () => void,
  ) {}

  tailAfter(batch: Batch): string | null {
    const tail = batch.fileId === this.fileId && batch.tail !== undefined ? batch.tail : this.tailBytes;
    return tail === null ? null : tail.toString("base64");
  }

  /** Open at the position the cursor names (see {@link followLog}). Returns false when the file is not there yet. */
  async start(cursor: LogCursor | null, fromStart: boolean, savedTail64: string | null): Promise<boolean> {
    const savedTail = savedTail64 === null ? null : Buffer.from(savedTail64, "base64");
    const current = await statId(this.file);
    if (current === null) {
      if (this.once) throw new LogFileMissingError(`The log file ${this.file} does not exist. Pass the path of Postfix's log (postconf -h maillog_file), or - to read stdin.`);
      return false;
    }
    if (fromStart || cursor === null) {
      await this.openFile(this.file, current.id, 0);
      if (!fromStart) {
        this.offset = await this.lastLineEnd(current.size);
        this.log.info({ file: this.file, offset: this.offset }, "no stored position: following from the end of the log");
      }
      return true;
    }
    if (cursor.fileId === current.id) {
      await this.openFile(this.file, current.id, cursor.offset);
      this.tailBytes = savedTail;
      if (current.size < cursor.offset || !(await this.tailMatches())) {
        await this.truncated("while the follower was stopped");
      }
      return true;
    }
    // The file it stopped in was rotated meanwhile: finish it under its new name first.
    const rotated = await this.findById(cursor.fileId);
    if (rotated !== null && rotated.size >= cursor.offset) {
      this.log.info({ file: rotated.file, offset: cursor.offset }, "the log was rotated while the follower was stopped: finishing the old file first");
      await this.openFile(rotated.file, cursor.fileId, cursor.offset);
      this.tailBytes = savedTail;
      return true;
    }
    const err = new Error(
      `The log file the follower stopped in (file id ${cursor.fileId}) is neither ${this.file} nor an uncompressed rotated copy next to it: reading ${this.file} from its start; lines logged between the stop and the rotation may be missing.`,
    );
    this.log.warn({ file: this.file, storedFileId: cursor.fileId }, err.message);
    this.warn(err);
    await this.openFile(this.file, current.id, 0);
    return true;
  }

  async next(max: number): Promise<Batch | null> {
    const fh = this.fh;
    if (fh === null) throw new Error("LogFile.next before start");
    const readAt = new Date();
    const lines: string[] = [];
    let offset = this.offset;
    const buf = this.buf;
    let eof = false;
    while (lines.length < max) {
      const { bytesRead } = await fh.read(buf, 0, CHUNK, offset);
      if (bytesRead === 0) {
        eof = true;
        break;
      }
      const chunk = buf.subarray(0, bytesRead);
      let start = 0;
      let nl: number;
      while (lines.length < max && (nl = chunk.indexOf(0x0a, start)) >= 0) {
        lines.push(chunk.toString("utf8", start, nl));
        start = nl + 1;
      }
      if (start === 0 && bytesRead === CHUNK) {
        // No line break in a whole chunk: a line longer than any Postfix writes. Pass over it
        // (a placeholder stands for it, so the position moves on when the batch is recorded).
        offset += bytesRead;
        lines.push(SKIPPED_LINE);
        continue;
      }
      offset += start;
      // A short read reached the end of the file as it is now (a line being written may follow).
      if (bytesRead < CHUNK && lines.length < max) {
        eof = true;
        break;
      }
    }
    if (lines.length > 0) {
      if (this.rotationSeenAt !== null) this.rotationSeenAt = Date.now();
      return { lines, fileId: this.fileId, offset, eof, readAt, tail: await this.bytesBefore(fh, offset) };
    }
    // Nothing new in this file: rotated, truncated, or just quiet?
    const current = await statId(this.file);
    if (current !== null && current.id !== this.fileId) {
      if (this.rotationSeenAt === null) {
        this.rotationSeenAt = Date.now();
        await this.holdNext();
      }
      if (!this.once && Date.now() - this.rotationSeenAt < ROTATION_GRACE_MS) {
        // The MTA may still write a line or two to the old file before it reopens the log
        // (`postfix logrotate` renames, then reloads): read the old file until it stays quiet.
        return { lines: [], fileId: this.fileId, offset, eof: true, rotationPending: true, readAt };
      }
      const rest = await this.restWithoutNewline(offset);
      if (rest !== null) return { lines: [rest.text], fileId: this.fileId, offset: offset + rest.bytes, eof: false, readAt, tail: await this.bytesBefore(fh, offset + rest.bytes) };
      const held = this.heldNext;
      this.heldNext = null;
      if (held !== null && held.id !== this.fileId) {
        // The file that followed the rotation, even if the path has moved on since (rotated twice).
        this.log.info({ file: this.file, previousFileId: this.fileId, fileId: held.id }, "log rotated: following the new file from its start");
        await this.close();
        this.fh = held.fh;
        this.fileId = held.id;
        this.offset = 0;
        this.tailBytes = null;
        this.rotationSeenAt = null;
      } else {
        await held?.fh.close().catch(() => {});
        this.log.info({ file: this.file, previousFileId: this.fileId, fileId: current.id }, "log rotated: following the new file from its start");
        await this.openFile(this.file, current.id, 0);
      }
      this.onRotation();
      return this.next(max);
    }
    if (current === null && this.rotationSeenAt !== null) {
      // Between a rename and the new file's creation (a second rotation under way): keep the rotation
      // seen and the file held, or the file that followed the first rotation would be skipped.
      return { lines: [], fileId: this.fileId, offset, eof: true, rotationPending: true, readAt };
    }
    this.rotationSeenAt = null;
    const size = Number((await fh.stat({ bigint: true })).size);
    if (size < offset || !(await this.tailMatches())) {
      await this.truncated("under the follower");
      return this.next(max);
    }
    return { lines: [], fileId: this.fileId, offset, eof: true, readAt };
  }

  /** Called by the follower once a batch is recorded. */
  advance(batch: Batch): void {
    if (batch.fileId !== this.fileId) return;
    this.offset = batch.offset;
    if (batch.tail !== undefined) this.tailBytes = batch.tail;
  }

  async close(): Promise<void> {
    const fh = this.fh;
    const held = this.heldNext;
    this.fh = null;
    this.heldNext = null;
    await fh?.close().catch(() => {});
    await held?.fh.close().catch(() => {});
  }

  /** Open the file now at the log's path and keep it for after the rotation (see `heldNext`). */
  private async holdNext(): Promise<void> {
    // The first file after the rotation is the one to read next; a later one waits its turn.
    if (this.heldNext !== null) return;
    try {
      const fh = await open(this.file, "r");
      const id = fileIdOf(await fh.stat({ bigint: true }));
      if (id === this.fileId) await fh.close();
      else this.heldNext = { fh, id };
    } catch {
      // Not there (yet): the switch opens the path as it is then.
    }
  }

  private async openFile(file: string, id: string, offset: number): Promise<void> {
    await this.close();
    this.fh = await open(file, "r");
    // The name may have moved between the stat and the open: take the id of what was opened.
    const opened = fileIdOf(await this.fh.stat({ bigint: true }));
    this.fileId = opened;
    this.offset = opened === id ? offset : 0;
    this.rotationSeenAt = null;
    if (opened !== id || offset === 0) this.tailBytes = null;
  }

  /** The offset after the last complete line of the first `size` bytes. */
  private async lastLineEnd(size: number): Promise<number> {
    let end = size;
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, size)));
    while (end > 0) {
      const from = Math.max(0, end - buf.length);
      const { bytesRead } = await this.fh!.read(buf, 0, end - from, from);
      const nl = buf.subarray(0, bytesRead).lastIndexOf(0x0a);
      if (nl >= 0) return from + nl + 1;
      end = from;
    }
    return 0;
  }

  /** The bytes before the position are still the last line recorded (false: the file was truncated and written again). */
  private async tailMatches(): Promise<boolean> {
    return this.tailMatchesIn(this.fh!, this.offset);
  }

  private async tailMatchesIn(fh: FileHandle, offset: number): Promise<boolean> {
    const expected = this.tailBytes;
    if (expected === null || expected.length === 0 || offset === 0) return true;
    if (offset < expected.length) return false;
    const got = Buffer.alloc(expected.length);
    const { bytesRead } = await fh.read(got, 0, expected.length, offset - expected.length);
    return bytesRead === expected.length && got.equals(expected);
  }

  /** Up to TAIL_BYTES bytes before `offset`. */
  private async bytesBefore(fh: FileHandle, offset: number): Promise<Buffer> {
    const n = Math.min(TAIL_BYTES, offset);
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, offset - n);
    return buf.subarray(0, bytesRead);
  }

  /** The file shrank (copytruncate): finish its copy when one is next to it, then read it from 0. */
  private async truncated(when: string): Promise<void> {
    const offset = this.offset;
    const copy = await this.findCopy(offset);
    const err = new Error(
      copy !== null
        ? `The log file ${this.file} was truncated ${when} (copytruncate): finishing its copy ${copy.file}, then reading it from its start.`
        : `The log file ${this.file} was truncated ${when} (copytruncate) and no copy of it was found next to it: reading it from its start; lines logged between the last read and the truncation may be missing.`,
    );
    this.log.warn({ file: this.file, offset }, err.message);
    if (copy === null) this.warn(err);
    const id = this.fileId;
    if (copy !== null) {
      // Counted as a rotation when the copy is finished and the follower moves on to the file.
      await this.openFile(copy.file, copy.id, offset);
      this.tailBytes = copy.tail;
    } else {
      await this.openFile(this.file, id, 0);
      this.onRotation();
    }
  }

  /** Files next to the log named `<name>.1`, `<name>-20261130` and the like, not compressed. */
  private async siblings(): Promise<string[]> {
    const dir = path.dirname(this.file);
    const base = path.basename(this.file);
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return [];
    }
    return names
      .filter((n) => n !== base && (n.startsWith(`${base}.`) || n.startsWith(`${base}-`)) && !/\.(gz|bz2|xz|zst|lz4|Z)$/.test(n))
      .sort()
      .map((n) => path.join(dir, n));
  }

  private async findById(id: string): Promise<{ file: string; size: number } | null> {
    for (const file of await this.siblings()) {
      const st = await statId(file).catch(() => null);
      if (st !== null && st.id === id) return { file, size: st.size };
    }
    return null;
  }

  /** A copy (another file) holding the same bytes up to `offset`: the copy copytruncate made. */
  private async findCopy(offset: number): Promise<{ file: string; id: string; tail: Buffer | null } | null> {
    if (this.tailBytes === null || offset === 0) return null;
    for (const file of await this.siblings()) {
      const st = await statId(file).catch(() => null);
      if (st === null || st.id === this.fileId || st.size < offset) continue;
      let fh: FileHandle | null = null;
      try {
        fh = await open(file, "r");
        if (await this.tailMatchesIn(fh, offset)) return { file, id: st.id, tail: this.tailBytes };
      } catch {
        // Unreadable: not the copy.
      } finally {
        await fh?.close().catch(() => {});
      }
    }
    return null;
  }

  /** A last line without its line break at the end of a rotated file: it will not grow any more. */
  private async restWithoutNewline(offset: number): Promise<{ text: string; bytes: number } | null> {
    const size = Number((await this.fh!.stat({ bigint: true })).size);
    if (size <= offset) return null;
    const buf = Buffer.alloc(Math.min(size - offset, 65_536));
    const { bytesRead } = await this.fh!.read(buf, 0, buf.length, offset);
    return bytesRead === 0 ? null : { text: buf.toString("utf8", 0, bytesRead), bytes: bytesRead };
  }
}

/**
 * Lines from a stream (journald through stdin). No position to resume at: after a restart, feed it
 * from a little before the stop (`journalctl --since`); lines read twice are recorded once.
 */
export class LogStream implements LineSource {
  private readonly queue: string[] = [];
  private partial = "";
  private readonly decoder = new StringDecoder("utf8");
  private ended = false;
  private failed: Error | null = null;
  private wake: (() => void) | null = null;
  private bytes = 0;

  constructor(
    private readonly stream: Readable,
    private readonly batchMs: number,
    private readonly stopSignal: AbortSignal,
    private readonly maxQueued: number,
  ) {
    stream.on("data", (chunk: Buffer | string) => {
      const text = typeof chunk === "string" ? chunk : this.decoder.write(chunk);
      this.bytes += typeof chunk === "string" ? Buffer.byteLength(chunk) : chunk.length;
      const parts = (this.partial + text).split("\n");
      this.partial = parts.pop() ?? "";
      this.queue.push(...parts);
      if (this.queue.length >= this.maxQueued) stream.pause();
      this.poke();
    });
    stream.once("end", () => {
      const rest = this.partial + this.decoder.end();
      if (rest !== "") this.queue.push(rest);
      this.partial = "";
      this.ended = true;
      this.poke();
    });
    stream.once("error", (err) => {
      this.failed = err;
      this.ended = true;
      this.poke();
    });
    stopSignal.addEventListener("abort", () => this.poke(), { once: true });
  }

  tailAfter(): string | null {
    return null;
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  private waitForData(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === null ? null : setTimeout(() => this.poke(), ms);
      this.wake = () => {
        if (timer) clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Lines received and not yet handed out. */
  get queued(): number {
    return this.queue.length;
  }

  async next(max: number): Promise<Batch | null> {
    if (this.queue.length === 0 && !this.ended && !this.stopSignal.aborted) {
      // Quiet: come back after a while with an empty batch, so `caught_up_at` stays fresh.
      await this.waitForData(HEARTBEAT_MS);
      if (this.queue.length === 0 && !this.ended && !this.stopSignal.aborted) {
        return { lines: [], fileId: "stream", offset: this.bytes, eof: true, readAt: new Date() };
      }
    }
    if (this.queue.length === 0) {
      if (this.failed) throw this.failed;
      return null;
    }
    const first = Date.now();
    while (this.queue.length < max && !this.ended && !this.stopSignal.aborted) {
      const left = this.batchMs - (Date.now() - first);
      if (left <= 0) break;
      await this.waitForData(left);
    }
    const readAt = new Date();
    const lines = this.queue.splice(0, max);
    if (this.stream.isPaused() && this.queue.length < this.maxQueued / 2) this.stream.resume();
    return { lines, fileId: "stream", offset: this.bytes, eof: this.queue.length === 0, readAt };
  }

  async close(): Promise<void> {
    this.stream.pause();
  }
}
