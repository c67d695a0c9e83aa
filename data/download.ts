/**
 * Downloads token shards from a Hugging Face dataset repository (the engine of
 * cached_fineweb10B.ts and cached_fineweb100B.ts).
 *
 * For each file: skip it when it is already there and its header checks out; otherwise fetch
 * `{endpoint}/datasets/{repo}/resolve/{revision}/{file}` into `<file>.part`, resuming a partial
 * file with an HTTP Range request; retry transient failures (connection errors and resets, a
 * stalled connection, HTTP 408/429/5xx, a body shorter than announced) with exponential backoff;
 * verify the finished file with the shard reader (magic, version, length) and only then rename
 * it into place. HTTP 404, 401 and 403 stop the whole run with a clear message.
 *
 * Environment: HF_ENDPOINT (mirror, default https://huggingface.co), HF_TOKEN (or
 * HUGGING_FACE_HUB_TOKEN; sent as a bearer token), MN_DL_RETRIES (consecutive failed attempts
 * per file before giving up, default 8), MN_DL_BACKOFF_MS (first retry delay, doubled each time
 * up to 60 s, default 1000), MN_DL_STALL_S (abort and retry a connection that sends nothing for
 * this long, default 60).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { readShardHeader, shardName } from "./shard.ts";
import { bar, fmtBytes, fmtDuration, Rate, StatusLine } from "./progress.ts";

/** The public hub; HF_ENDPOINT replaces it. */
export const HF_DEFAULT_ENDPOINT = "https://huggingface.co";

/** What {@link downloadFiles} needs. */
export interface DownloadOptions {
  /** Dataset repository id, e.g. `kjj0/fineweb10B-gpt2`. */
  repo: string;
  /** File names inside the repository, fetched in this order. */
  files: string[];
  /** Local folder (created if missing). */
  dir: string;
  /** Hub base URL (default: HF_ENDPOINT, else https://huggingface.co). */
  endpoint?: string;
  /** Bearer token (default: HF_TOKEN, else HUGGING_FACE_HUB_TOKEN; none if unset). */
  token?: string;
  /** Branch, tag or commit (default `main`). */
  revision?: string;
  /** Consecutive failed attempts per file before giving up (default MN_DL_RETRIES or 8). */
  retries?: number;
  /** First retry delay in ms, doubled per failure (default MN_DL_BACKOFF_MS or 1000). */
  backoffMs?: number;
  /** Longest retry delay in ms (default 60000). */
  maxBackoffMs?: number;
  /** Abort an attempt that receives nothing for this many ms (default MN_DL_STALL_S*1000 or 60000). */
  stallMs?: number;
  /** Checks a finished file; throws to reject it (default: the shard reader's header check). */
  verify?: (path: string) => void;
  /** Progress display (default: a StatusLine on stderr). */
  status?: StatusLine;
  /** Aborting it stops the run; partial files are kept for the next run to resume. */
  signal?: AbortSignal;
  /** Advice added to the HTTP 404 message (default: check the file name, repository, endpoint). */
  notFoundHint?: string;
}

/** present: was there already; downloaded; failed; skipped: not tried (the run stopped first). */
export type FileStatus = "present" | "downloaded" | "failed" | "skipped";

/** The outcome for one file. */
export interface FileResult {
  file: string;
  status: FileStatus;
  /** Size of the file when present or downloaded. */
  bytes: number;
  /** Why it failed or was skipped. */
  detail?: string;
}

/** What {@link downloadFiles} returns. */
export interface DownloadSummary {
  results: FileResult[];
  /** Every file is present or downloaded. */
  ok: boolean;
  /** The reason the run stopped early (404, 401, 403), if it did. */
  fatal?: string;
  /** The signal stopped the run. */
  interrupted: boolean;
  /** Bytes received over the network in this run. */
  receivedBytes: number;
  seconds: number;
}

/** Worth another attempt. */
class Transient extends Error {
  constructor(message: string, readonly retryAfterMs?: number) {
    super(message);
  }
}
/** This file cannot be had; go on with the next one. */
class FileFailure extends Error {}
/** Stop the run (404, 401, 403). */
class Fatal extends Error {}
/** The caller's signal fired. */
class Interrupted extends Error {}

function envNumber(name: string, fallback: number): number {
  let v: string | undefined;
  try {
    v = Deno.env.get(name);
  } catch {
    return fallback;
  }
  if (v === undefined || v.trim() === "") return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name}=${v}: expected a number >= 0`);
  return n;
}

function envString(...names: string[]): string | undefined {
  for (const n of names) {
    try {
      const v = Deno.env.get(n);
      if (v) return v;
    } catch { /* no permission: treat as unset */ }
  }
  return undefined;
}

function fileSize(path: string): number {
  try {
    return Deno.statSync(path).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

function removeIfThere(path: string) {
  try {
    Deno.removeSync(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

function message(e: unknown): string {
  if (e instanceof Error) {
    const cause = e.cause instanceof Error ? `: ${e.cause.message}` : "";
    return `${e.message}${cause}`.replace(/\s+/g, " ");
  }
  return String(e);
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done);
  });
}

/** Retry-After as ms (seconds or an HTTP date), if present and sane. */
function retryAfterMs(res: Response): number | undefined {
  const v = res.headers.get("retry-after");
  if (!v) return undefined;
  const s = Number(v);
  if (Number.isFinite(s) && s >= 0) return s * 1000;
  const t = Date.parse(v);
  return Number.isFinite(t) ? Math.max(0, t - Date.now()) : undefined;
}

/** The URL of `file` in a dataset repository. */
export function resolveUrl(endpoint: string, repo: string, revision: string, file: string): string {
  const path = file.split("/").map(encodeURIComponent).join("/");
  return `${endpoint.replace(/\/+$/, "")}/datasets/${repo}/resolve/${
    encodeURIComponent(revision)
  }/${path}`;
}

/** Downloads `opts.files` (see the module notes); never throws for a network or server failure. */
export async function downloadFiles(opts: DownloadOptions): Promise<DownloadSummary> {
  const t0 = performance.now();
  const endpoint = opts.endpoint ?? envString("HF_ENDPOINT") ?? HF_DEFAULT_ENDPOINT;
  const token = opts.token ?? envString("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN");
  const revision = opts.revision ?? "main";
  const retries = opts.retries ?? envNumber("MN_DL_RETRIES", 8);
  const backoffMs = opts.backoffMs ?? envNumber("MN_DL_BACKOFF_MS", 1000);
  const maxBackoffMs = opts.maxBackoffMs ?? 60000;
  const stallMs = opts.stallMs ?? envNumber("MN_DL_STALL_S", 60) * 1000;
  const verify = opts.verify ?? ((p: string) => void readShardHeader(p));
  const status = opts.status ?? new StatusLine();
  const signal = opts.signal ?? new AbortController().signal;
  const notFoundHint = opts.notFoundHint ?? "check the file name, the repository and HF_ENDPOINT";
  const n = opts.files.length;
  Deno.mkdirSync(opts.dir, { recursive: true });

  // progress bookkeeping: sizes known so far, bytes done, bytes received in this run
  const sizes = new Map<string, number>();
  let doneBytes = 0; // files finished (present or downloaded)
  let received = 0;
  const overallRate = new Rate(20000);
  const fileRate = new Rate(5000);

  const estimateTotal = () => {
    let known = 0;
    for (const v of sizes.values()) known += v;
    const avg = sizes.size ? known / sizes.size : NaN;
    return sizes.size === n ? known : known + avg * (n - sizes.size);
  };
  const render = (
    i: number,
    file: string,
    have: number,
    total: number | undefined,
    force = false,
  ) => {
    const now = performance.now();
    overallRate.sample(received, now);
    fileRate.sample(have, now);
    const r = fileRate.perSecond(), R = overallRate.perSecond();
    const fpct = total ? have / total : NaN;
    const all = estimateTotal(), allDone = doneBytes + have;
    const f = `[${i + 1}/${n}] ${file} ${bar(fpct, 16)} ${
      Number.isFinite(fpct) ? (100 * fpct).toFixed(1) : "?"
    }% ${fmtBytes(have)}/${total ? fmtBytes(total) : "?"} ${fmtBytes(r)}/s ETA ${
      fmtDuration(total && r > 0 ? (total - have) / r : NaN)
    }`;
    const o = `all ${Number.isFinite(all) ? (100 * allDone / all).toFixed(1) : "?"}% ${
      fmtBytes(allDone)
    }/${Number.isFinite(all) ? fmtBytes(all) : "?"} ETA ${
      fmtDuration(R > 0 ? (all - allDone) / R : NaN)
    }`;
    status.update(`${f} | ${o}`, force);
  };

  const results: FileResult[] = [];
  let fatal: string | undefined;
  let interrupted = false;

  /** One HTTP attempt; returns the announced total size (if known) when the body was complete. */
  const attempt = async (
    i: number,
    file: string,
    url: string,
    part: string,
  ): Promise<number | undefined> => {
    const have = fileSize(part);
    const ac = new AbortController();
    const onAbort = () => ac.abort(new Interrupted("interrupted"));
    signal.addEventListener("abort", onAbort);
    let stall: ReturnType<typeof setTimeout> | undefined;
    const arm = () => {
      clearTimeout(stall);
      stall = setTimeout(
        () => ac.abort(new Transient(`no data for ${(stallMs / 1000).toFixed(1)} s`)),
        stallMs,
      );
    };
    // identity: the byte counts (Range, Content-Length) must be those of the file itself
    const headers = new Headers({
      "user-agent": "modded-nanogpt-deno-data/1",
      "accept-encoding": "identity",
    });
    if (token) headers.set("authorization", `Bearer ${token}`);
    if (have > 0) headers.set("range", `bytes=${have}-`);
    let res: Response | undefined;
    try {
      arm();
      try {
        res = await fetch(url, { headers, signal: ac.signal });
      } catch (e) {
        if (ac.signal.reason instanceof Error) throw ac.signal.reason;
        throw new Transient(`connection failed: ${message(e)}`);
      }
      const st = res.status;
      if (st === 404) {
        throw new Fatal(
          `not found (HTTP 404) at ${url}; ${notFoundHint}`,
        );
      }
      if (st === 401 || st === 403) {
        throw new Fatal(
          `access denied (HTTP ${st}) at ${url}; ${
            token
              ? "HF_TOKEN was sent: check that it is valid"
              : "set HF_TOKEN to a Hugging Face access token"
          } (and HF_ENDPOINT if you use a mirror)`,
        );
      }
      if (st === 416) {
        // nothing left to send: the partial file may already be whole (a run stopped before renaming)
        const m = /\/(\d+)\s*$/.exec(res.headers.get("content-range") ?? "");
        const total = m ? Number(m[1]) : undefined;
        if (total !== undefined && total === have) return total;
        removeIfThere(part);
        throw new Transient(
          `HTTP 416 for bytes ${have}- (remote size ${total ?? "unknown"}); starting over`,
        );
      }
      if (st === 408 || st === 429 || st >= 500) {
        throw new Transient(`HTTP ${st} ${res.statusText}`.trim(), retryAfterMs(res));
      }
      if (st !== 200 && st !== 206) {
        throw new FileFailure(`HTTP ${st} ${res.statusText} from ${url}`.trim());
      }
      let start = 0, total: number | undefined;
      const len = res.headers.get("content-length");
      if (st === 206) {
        const m = /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
        if (!m) throw new Transient(`HTTP 206 without a usable Content-Range; retrying`);
        start = Number(m[1]);
        total = m[3] === "*" ? undefined : Number(m[3]);
        if (start !== have) {
          removeIfThere(part);
          throw new Transient(`server resumed at byte ${start}, expected ${have}; starting over`);
        }
      } else {
        if (len !== null) total = Number(len);
      }
      if (total !== undefined) sizes.set(file, total);
      if (!res.body) throw new Transient("response without a body");
      const out = Deno.openSync(
        part,
        st === 206 ? { append: true, create: true } : { write: true, create: true, truncate: true },
      );
      let got = start;
      try {
        for await (const chunk of res.body) {
          arm();
          let off = 0;
          try {
            while (off < chunk.length) off += out.writeSync(chunk.subarray(off));
          } catch (e) {
            throw new FileFailure(`cannot write ${part}: ${message(e)}`);
          }
          got += chunk.length;
          received += chunk.length;
          render(i, file, got, total);
        }
      } catch (e) {
        if (e instanceof FileFailure) throw e;
        if (ac.signal.reason instanceof Error) throw ac.signal.reason;
        throw new Transient(`connection lost at byte ${got}: ${message(e)}`);
      } finally {
        out.close();
      }
      render(i, file, got, total, true);
      if (total !== undefined && got < total) {
        throw new Transient(`connection closed at byte ${got} of ${total}`);
      }
      if (total !== undefined && got > total) {
        removeIfThere(part);
        throw new FileFailure(`received ${got} bytes, more than the ${total} announced`);
      }
      return total;
    } finally {
      clearTimeout(stall);
      signal.removeEventListener("abort", onAbort);
      if (res && !res.bodyUsed) await res.body?.cancel().catch(() => {});
    }
  };

  const one = async (i: number, file: string): Promise<FileResult> => {
    const dest = join(opts.dir, file), part = `${dest}.part`;
    const url = resolveUrl(endpoint, opts.repo, revision, file);
    let failures = 0, restarted = false;
    fileRate.reset();
    while (true) {
      if (signal.aborted) throw new Interrupted("interrupted");
      const before = fileSize(part);
      const resumed = before > 0;
      if (resumed && failures === 0 && !restarted) {
        status.log(`${file}: resuming at ${fmtBytes(before)}`);
      }
      let total: number | undefined;
      try {
        total = await attempt(i, file, url, part);
      } catch (e) {
        if (!(e instanceof Transient)) throw e;
        failures = fileSize(part) > before ? 1 : failures + 1; // progress resets the count
        if (failures > retries) {
          return {
            file,
            status: "failed",
            bytes: 0,
            detail: `gave up after ${retries} retries: ${e.message}${
              fileSize(part) > 0 ? " (partial file kept; rerun to resume)" : ""
            }`,
          };
        }
        const wait = Math.min(
          maxBackoffMs,
          Math.max(backoffMs * 2 ** (failures - 1), e.retryAfterMs ?? 0),
        );
        status.log(
          `${file}: ${e.message}; retry ${failures}/${retries} in ${(wait / 1000).toFixed(1)} s`,
        );
        await sleep(wait, signal);
        continue;
      }
      try {
        verify(part);
        const size = fileSize(part);
        if (total !== undefined && size !== total) {
          throw new Error(`${part}: ${size} bytes, the server announced ${total}`);
        }
      } catch (e) {
        removeIfThere(part);
        if (resumed && !restarted) {
          // a file assembled from pieces may be spoiled by a stale piece: one fresh download
          restarted = true;
          status.log(
            `${file}: the resumed file failed verification (${
              message(e)
            }); downloading it again from the start`,
          );
          continue;
        }
        return { file, status: "failed", bytes: 0, detail: `verification failed: ${message(e)}` };
      }
      Deno.renameSync(part, dest);
      return { file, status: "downloaded", bytes: fileSize(dest) };
    }
  };

  for (let i = 0; i < n; i++) {
    const file = opts.files[i];
    if (fatal || interrupted) {
      results.push({
        file,
        status: "skipped",
        bytes: 0,
        detail: fatal ? "run stopped" : "interrupted",
      });
      continue;
    }
    const dest = join(opts.dir, file);
    try {
      const size = Deno.statSync(dest).size;
      try {
        verify(dest);
        sizes.set(file, size);
        doneBytes += size;
        results.push({ file, status: "present", bytes: size });
        continue;
      } catch (e) {
        status.log(`${file}: the existing file is not valid (${message(e)}); downloading it again`);
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    try {
      const r = await one(i, file);
      results.push(r);
      if (r.status === "downloaded") {
        sizes.set(file, r.bytes);
        doneBytes += r.bytes;
        status.log(`${file}: done (${fmtBytes(r.bytes)})`);
      } else {
        status.log(`${file}: FAILED: ${r.detail}`);
      }
    } catch (e) {
      if (e instanceof Fatal) {
        fatal = `${file}: ${e.message}`;
        results.push({ file, status: "failed", bytes: 0, detail: e.message });
        status.log(`${file}: FAILED: ${e.message}`);
      } else if (e instanceof FileFailure) {
        results.push({ file, status: "failed", bytes: 0, detail: e.message });
        status.log(`${file}: FAILED: ${e.message}`);
      } else if (e instanceof Interrupted) {
        interrupted = true;
        results.push({ file, status: "skipped", bytes: 0, detail: "interrupted" });
      } else {
        throw e;
      }
    }
  }
  status.done();
  return {
    results,
    ok: results.every((r) => r.status === "present" || r.status === "downloaded"),
    fatal,
    interrupted,
    receivedBytes: received,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** A human summary of a run, one line per problem. */
export function formatSummary(s: DownloadSummary): string {
  const count = (st: FileStatus) => s.results.filter((r) => r.status === st).length;
  const lines = [
    `summary: ${s.results.length} files: ${count("present")} already present, ${
      count("downloaded")
    } downloaded (${fmtBytes(s.receivedBytes)} received in ${fmtDuration(s.seconds)}), ${
      count("failed")
    } failed, ${count("skipped")} not tried`,
  ];
  for (const r of s.results) {
    if (r.status === "failed") lines.push(`  FAILED ${r.file}: ${r.detail}`);
  }
  const stop = s.results.find((r) => r.status === "failed" && s.fatal?.endsWith(r.detail ?? "\0"));
  if (s.fatal) {
    lines.push(`stopped at ${stop?.file ?? "a fatal error"}: files after it were not tried`);
  }
  if (s.interrupted) {
    lines.push("interrupted: run the same command again to resume (partial files *.part are kept)");
  }
  return lines.join("\n");
}

/** The files of a cached FineWeb download: the val shard 0, then train shards 1..chunks. */
export function fineWebFiles(chunks: number): string[] {
  const files = [shardName("fineweb", "val", 0)];
  for (let i = 1; i <= chunks; i++) files.push(shardName("fineweb", "train", i));
  return files;
}

/** The command line of cached_fineweb10B.ts / cached_fineweb100B.ts. Returns the exit code. */
export async function cachedFineWebMain(
  args: string[],
  cfg: { script: string; repo: string; dirName: string; defaultChunks: number },
): Promise<number> {
  const usage = `usage: deno run -A data/${cfg.script} [N] [--dir DIR]
Downloads the GPT-2 tokens of ${cfg.repo} (Hugging Face): fineweb_val_000000.bin and
fineweb_train_000001.bin .. N (default ${cfg.defaultChunks}, all of it; 100M tokens = 191 MiB each).
  --dir DIR   where to put them (default data/${cfg.dirName})
Environment: HF_ENDPOINT (mirror), HF_TOKEN, MN_DL_RETRIES (8), MN_DL_BACKOFF_MS (1000),
MN_DL_STALL_S (60). Complete files are skipped; partial ones (*.part) resume.`;
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      options: {
        dir: { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    console.error(`${message(e)}\n${usage}`);
    return 2;
  }
  if (values.help) {
    console.log(usage);
    return 0;
  }
  if (positionals.length > 1 || (positionals.length === 1 && !/^\d+$/.test(positionals[0]))) {
    console.error(
      `expected at most one argument, a number of train shards; got ${
        positionals.join(" ")
      }\n${usage}`,
    );
    return 2;
  }
  const chunks = positionals.length ? Number(positionals[0]) : cfg.defaultChunks;
  const dir = values.dir ?? fileURLToPath(new URL(`./${cfg.dirName}`, import.meta.url));
  const files = fineWebFiles(chunks);
  const endpoint = envString("HF_ENDPOINT") ?? HF_DEFAULT_ENDPOINT;
  let shown = relative(Deno.cwd(), dir);
  if (shown === "" || shown.startsWith("..")) shown = dir;
  console.error(
    `${cfg.script}: ${files.length} files from ${endpoint}/datasets/${cfg.repo} into ${shown}`,
  );
  const ac = new AbortController();
  let stops = 0;
  const onInt = () => {
    if (++stops > 1) Deno.exit(130);
    console.error("\ninterrupt: stopping (partial files are kept; press Ctrl-C again to quit now)");
    ac.abort();
  };
  try {
    Deno.addSignalListener("SIGINT", onInt);
  } catch { /* signals unavailable (Windows without a console) */ }
  try {
    let s: DownloadSummary;
    try {
      s = await downloadFiles({
        repo: cfg.repo,
        files,
        dir,
        endpoint,
        signal: ac.signal,
        notFoundHint:
          `check N (${cfg.repo} has train shards 1..${cfg.defaultChunks}), the repository and HF_ENDPOINT`,
      });
    } catch (e) {
      console.error(`error: ${message(e)}`);
      return 1;
    }
    console.error(formatSummary(s));
    return s.interrupted ? 130 : s.ok ? 0 : 1;
  } finally {
    try {
      Deno.removeSignalListener("SIGINT", onInt);
    } catch { /* as above */ }
  }
}
