/**
 * A small progress display for the data tools, on stderr.
 *
 * On a terminal one status line is redrawn in place (`\r`, at most 10 times a second, cut to the
 * terminal's width). Elsewhere (CI logs, pipes) the status is printed as a plain line at most
 * once every few seconds (`MN_PROGRESS_S`, default 5; 0 keeps only the forced lines, such as the
 * one at the end of each file), so logs stay short.
 *
 * @module
 */

const enc = new TextEncoder();

/** Where status lines go: Deno.stderr, or a stand-in in tests. */
export interface StatusSink {
  writeSync(p: Uint8Array): number;
  isTerminal(): boolean;
}

function writeAll(sink: StatusSink, s: string) {
  const b = enc.encode(s);
  let off = 0;
  while (off < b.length) off += sink.writeSync(b.subarray(off));
}

/** `1023 B`, `1.5 KiB`, `190.7 MiB`, `19.62 GiB`. */
export function fmtBytes(n: number): string {
  if (!Number.isFinite(n)) return "?";
  if (n < 1024) return `${Math.round(n)} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024, u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** `0:07`, `12:03`, `1:02:03`; `?` for an unknown or absurd time. */
export function fmtDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0 || seconds > 360000) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = h > 0 ? String(m).padStart(2, "0") : String(m);
  return `${h > 0 ? `${h}:` : ""}${mm}:${String(r).padStart(2, "0")}`;
}

/** `12,345,678` */
export function fmtCount(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}

/** A text bar `[#####.....]` of `width` cells for a fraction in [0, 1]. */
export function bar(frac: number, width = 20): string {
  const f = Math.min(1, Math.max(0, Number.isFinite(frac) ? frac : 0));
  const full = Math.round(f * width);
  return `[${"#".repeat(full)}${".".repeat(width - full)}]`;
}

/** Throughput over a sliding window of recent samples (units per second). */
export class Rate {
  #samples: [number, number][] = [];
  constructor(readonly windowMs = 10000) {}
  /** Records that the running total is `total` at time `now` (ms). */
  sample(total: number, now = performance.now()) {
    this.#samples.push([now, total]);
    while (this.#samples.length > 2 && now - this.#samples[1][0] > this.windowMs) {
      this.#samples.shift();
    }
  }
  /** Units per second over the window; 0 until two samples are apart in time. */
  perSecond(): number {
    const s = this.#samples;
    if (s.length < 2) return 0;
    const [t0, v0] = s[0], [t1, v1] = s[s.length - 1];
    return t1 > t0 ? (v1 - v0) / ((t1 - t0) / 1000) : 0;
  }
  reset() {
    this.#samples = [];
  }
}

function envSeconds(): number {
  try {
    const v = Deno.env.get("MN_PROGRESS_S");
    if (v !== undefined && v !== "" && Number.isFinite(Number(v))) return Number(v);
  } catch { /* no env permission */ }
  return 5;
}

/** One status line: redrawn in place on a terminal, a line every few seconds elsewhere. */
export class StatusLine {
  readonly tty: boolean;
  #sink: StatusSink;
  #last = -Infinity;
  #shown = "";
  #intervalMs: number;

  constructor(opts: { sink?: StatusSink; tty?: boolean; intervalS?: number } = {}) {
    this.#sink = opts.sink ?? Deno.stderr;
    this.tty = opts.tty ?? this.#sink.isTerminal();
    this.#intervalMs = this.tty ? 100 : 1000 * (opts.intervalS ?? envSeconds());
  }

  #columns(): number {
    let cols = 0;
    try {
      cols = Deno.consoleSize().columns;
    } catch { /* not a terminal */ }
    if (!(cols >= 20)) {
      try {
        cols = Number(Deno.env.get("COLUMNS"));
      } catch { /* no env permission */ }
    }
    return cols >= 20 ? cols - 1 : 159;
  }

  /** Shows `text` (throttled unless `force`). */
  update(text: string, force = false) {
    const now = performance.now();
    if (!force && now - this.#last < this.#intervalMs) return;
    if (!this.tty && this.#intervalMs <= 0 && !force) return;
    this.#last = now;
    if (this.tty) {
      const line = text.length > this.#columns() ? text.slice(0, this.#columns()) : text;
      writeAll(this.#sink, `\r${line}\x1b[K`);
      this.#shown = line;
    } else {
      writeAll(this.#sink, `${text}\n`);
    }
  }

  /** Prints a permanent line (above the status line on a terminal). */
  log(line: string) {
    if (this.tty && this.#shown) {
      writeAll(this.#sink, `\r\x1b[K${line}\n${this.#shown}`);
    } else {
      writeAll(this.#sink, `${line}\n`);
    }
  }

  /** Ends the status line: prints `text` as a permanent line if given, else clears it. */
  done(text?: string) {
    if (this.tty) {
      writeAll(this.#sink, `\r\x1b[K${text !== undefined ? `${text}\n` : ""}`);
    } else if (text !== undefined) {
      writeAll(this.#sink, `${text}\n`);
    }
    this.#shown = "";
    this.#last = -Infinity;
  }
}
