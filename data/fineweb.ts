/**
 * Tokenizes raw text into GPT-2 token shards: how to make shards from your own data (and the
 * counterpart of modded-nanogpt's data/fineweb.py, which does this for FineWeb).
 *
 *   deno run -A data/fineweb.ts [options] INPUT...
 *
 * INPUT: files or folders (searched recursively, in name order). By file name:
 * - `*.jsonl`, `*.ndjson`, `*.json`: one JSON object per line, the document in the field
 *   `--text_field` (default `text`); a `.json` file that starts with `[` is an array of them;
 * - `*.parquet`: the column `--text_field` (via the npm package hyparquet; snappy, zstd, gzip,
 *   brotli and lz4 pages are supported), e.g. FineWeb's own parquet files;
 * - anything else (`*.txt`, `*.md`, ...): plain UTF-8 text, one document per file, or per line
 *   (`--txt_docs line`) or per blank-line-separated block (`--txt_docs blankline`);
 * - a `.gz` ending on any of these is gunzipped first.
 *
 * Each document becomes `<|endoftext|>` + its GPT-2 tokens (encode_ordinary), and the documents,
 * in input order, are cut into shards exactly as fineweb.py does: the first `--val_tokens`
 * (default: one shard) make `<name>_val_000000.bin`, then every `--shard_size` tokens (default
 * 100M) make `<name>_train_000001.bin`, `..._000002.bin`, ...; the last holds the remainder. A
 * document may straddle two shards. The result does not depend on `--workers`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, join } from "node:path";
import { MAX_SHARD_TOKENS, shardName, writeShard } from "./shard.ts";
import { tokenizeDocument } from "./gpt2.ts";
import { bar, fmtBytes, fmtCount, fmtDuration, Rate, StatusLine } from "./progress.ts";

/** How plain-text files are cut into documents. */
export type TxtDocs = "file" | "line" | "blankline";

/** What {@link tokenizeToShards} needs. */
export interface TokenizeOptions {
  /** Files or folders. */
  inputs: string[];
  /** Where the shards go (created if missing). */
  outDir: string;
  /** Shard name prefix: `<name>_val_000000.bin`, `<name>_train_000001.bin`, ... */
  name?: string;
  /** Tokens per train shard (default 100M). */
  shardSize?: number;
  /** Tokens in the val shard, the first one (default: shardSize). */
  valTokens?: number;
  /** JSON/Parquet field holding the text (default `text`). */
  textField?: string;
  /** Plain-text documents: whole file (default), each line, or blank-line-separated blocks. */
  txtDocs?: TxtDocs;
  /** Tokenizer threads; 0 tokenizes on the calling thread (default: CPUs - 1, at least 1). */
  workers?: number;
  /** Replace shards of the same name already in outDir (otherwise that is an error). */
  force?: boolean;
  /** Progress display (default: a StatusLine on stderr). */
  status?: StatusLine;
}

/** One written shard. */
export interface ShardInfo {
  file: string;
  tokens: number;
}

/** What {@link tokenizeToShards} returns. */
export interface TokenizeResult {
  shards: ShardInfo[];
  documents: number;
  tokens: number;
  inputFiles: number;
  seconds: number;
}

const KNOWN = /\.(jsonl|ndjson|json|parquet|txt|md|text)(\.gz)?$/i;

/** The input files: each file as given, each folder searched recursively for known endings. */
export function listInputs(inputs: string[]): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    const entries = [...Deno.readDirSync(dir)].sort((a, b) =>
      a.name < b.name ? -1 : a.name > b.name ? 1 : 0
    );
    for (const e of entries) {
      if (e.name.startsWith(".")) continue;
      const p = join(dir, e.name);
      if (e.isDirectory) walk(p);
      else if (e.isFile && KNOWN.test(e.name)) out.push(p);
    }
  };
  for (const input of inputs) {
    const st = Deno.statSync(input);
    if (st.isDirectory) walk(input);
    else out.push(input);
  }
  return out;
}

function kindOf(path: string): "json" | "parquet" | "text" {
  const p = path.toLowerCase().replace(/\.gz$/, "");
  if (/\.(jsonl|ndjson|json)$/.test(p)) return "json";
  if (p.endsWith(".parquet")) return "parquet";
  return "text";
}

/** A readable stream of the text of `path` (gunzipped if it ends in .gz); counts raw bytes. */
async function textStream(
  path: string,
  onBytes: (n: number) => void,
): Promise<ReadableStream<string>> {
  const f = await Deno.open(path);
  let s: ReadableStream<Uint8Array<ArrayBuffer>> = f.readable.pipeThrough(
    new TransformStream<Uint8Array<ArrayBuffer>, Uint8Array<ArrayBuffer>>({
      transform(chunk, ctl) {
        onBytes(chunk.length);
        ctl.enqueue(chunk);
      },
    }),
  );
  if (/\.gz$/i.test(path)) s = s.pipeThrough(new DecompressionStream("gzip"));
  return s.pipeThrough(new TextDecoderStream());
}

async function* lines(stream: ReadableStream<string>): AsyncGenerator<string> {
  let rest = "";
  for await (const chunk of stream) {
    rest += chunk;
    let i: number;
    while ((i = rest.indexOf("\n")) >= 0) {
      yield rest.slice(0, i).replace(/\r$/, "");
      rest = rest.slice(i + 1);
    }
  }
  if (rest.length) yield rest.replace(/\r$/, "");
}

function field(path: string, where: string, obj: unknown, name: string): string {
  const v = obj !== null && typeof obj === "object"
    ? (obj as Record<string, unknown>)[name]
    : undefined;
  if (typeof v !== "string") {
    throw new Error(`${path}:${where}: no string field "${name}" (choose one with --text_field)`);
  }
  return v;
}

/** The documents of one input file, in order. `onBytes` reports raw bytes consumed. */
export async function* readDocuments(
  path: string,
  opts: { textField?: string; txtDocs?: TxtDocs; onBytes?: (n: number) => void } = {},
): AsyncGenerator<string> {
  const textField = opts.textField ?? "text", onBytes = opts.onBytes ?? (() => {});
  const kind = kindOf(path);
  if (kind === "parquet") {
    yield* parquetDocuments(path, textField, onBytes);
    return;
  }
  const stream = await textStream(path, onBytes);
  if (kind === "json") {
    let n = 0, first = true, arrayText: string | null = null;
    for await (const line of lines(stream)) {
      n++;
      if (arrayText !== null) {
        arrayText += "\n" + line;
        continue;
      }
      const t = line.trim();
      if (t === "") continue;
      if (first && t.startsWith("[")) {
        arrayText = line;
        continue;
      }
      first = false;
      let obj: unknown;
      try {
        obj = JSON.parse(t);
      } catch (e) {
        throw new Error(`${path}:${n}: not a JSON object per line (${(e as Error).message})`);
      }
      yield field(path, String(n), obj, textField);
    }
    if (arrayText !== null) {
      let arr: unknown;
      try {
        arr = JSON.parse(arrayText);
      } catch (e) {
        throw new Error(`${path}: not valid JSON (${(e as Error).message})`);
      }
      if (!Array.isArray(arr)) throw new Error(`${path}: expected a JSON array of objects`);
      for (let i = 0; i < arr.length; i++) yield field(path, `[${i}]`, arr[i], textField);
    }
    return;
  }
  const mode = opts.txtDocs ?? "file";
  if (mode === "file") {
    let all = "";
    for await (const chunk of stream) all += chunk;
    if (all.length) yield all;
  } else if (mode === "line") {
    for await (const line of lines(stream)) if (line.trim() !== "") yield line;
  } else {
    let block: string[] = [];
    for await (const line of lines(stream)) {
      if (line.trim() === "") {
        if (block.length) yield block.join("\n");
        block = [];
      } else block.push(line);
    }
    if (block.length) yield block.join("\n");
  }
}

async function* parquetDocuments(
  path: string,
  textField: string,
  onBytes: (n: number) => void,
): AsyncGenerator<string> {
  // deno-lint-ignore no-import-prefix -- pinned here, not in deno.json: only data/ uses it
  const hp = await import("npm:hyparquet@1.33.0");
  // deno-lint-ignore no-import-prefix -- as above
  const { compressors } = await import("npm:hyparquet-compressors@1.1.2");
  const file = await hp.asyncBufferFromFile(path);
  const metadata = await hp.parquetMetadataAsync(file);
  const rows = Number(metadata.num_rows);
  const names = metadata.schema.map((s) => s.name);
  if (!names.includes(textField)) {
    throw new Error(
      `${path}: no column "${textField}" (columns: ${
        names.slice(1).join(", ")
      }); choose one with --text_field`,
    );
  }
  const step = 4096;
  let reported = 0;
  for (let start = 0; start < rows; start += step) {
    const end = Math.min(rows, start + step);
    const got = await hp.parquetReadObjects({
      file,
      metadata,
      columns: [textField],
      rowStart: start,
      rowEnd: end,
      compressors,
    });
    for (let i = 0; i < got.length; i++) yield field(path, `row ${start + i}`, got[i], textField);
    const now = Math.round(file.byteLength * end / rows);
    onBytes(now - reported);
    reported = now;
  }
}

/** Tokenizes batches of documents on worker threads, or inline; results keep their order. */
class Tokenizers {
  #workers: Worker[] = [];
  #idle: Worker[] = [];
  #waiting: ((w: Worker) => void)[] = [];
  #pending = new Map<number, { resolve: (t: Uint16Array) => void; reject: (e: Error) => void }>();
  #next = 0;

  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL("./fineweb_worker.ts", import.meta.url), { type: "module" });
      w.onmessage = (ev: MessageEvent<{ id: number; tokens?: Uint16Array; error?: string }>) => {
        const p = this.#pending.get(ev.data.id);
        this.#pending.delete(ev.data.id);
        this.#release(w);
        if (!p) return;
        if (ev.data.error !== undefined) p.reject(new Error(`tokenizer worker: ${ev.data.error}`));
        else p.resolve(ev.data.tokens!);
      };
      w.onerror = (ev) => {
        ev.preventDefault();
        for (const p of this.#pending.values()) {
          p.reject(new Error(`tokenizer worker: ${ev.message}`));
        }
        this.#pending.clear();
      };
      this.#workers.push(w);
      this.#idle.push(w);
    }
  }

  #release(w: Worker) {
    const waiter = this.#waiting.shift();
    if (waiter) waiter(w);
    else this.#idle.push(w);
  }

  /** Starts tokenizing `docs`; resolves to their tokens, concatenated. */
  async run(docs: string[]): Promise<Uint16Array> {
    if (this.#workers.length === 0) return concat(docs.map(tokenizeDocument));
    const w = this.#idle.pop() ?? await new Promise<Worker>((r) => this.#waiting.push(r));
    const id = this.#next++;
    return await new Promise<Uint16Array>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      w.postMessage({ id, docs });
    });
  }

  close() {
    for (const w of this.#workers) w.terminate();
  }
}

/** The arrays one after the other. */
export function concat(parts: Uint16Array[]): Uint16Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint16Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Tokenizes `opts.inputs` into shards in `opts.outDir` (see the module notes). */
export async function tokenizeToShards(opts: TokenizeOptions): Promise<TokenizeResult> {
  const t0 = performance.now();
  const name = opts.name ?? "fineweb";
  const shardSize = opts.shardSize ?? 100_000_000;
  const valTokens = opts.valTokens ?? shardSize;
  for (const [k, v] of [["shard_size", shardSize], ["val_tokens", valTokens]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > MAX_SHARD_TOKENS) {
      throw new Error(`--${k} ${v}: expected a whole number of tokens in 1..${MAX_SHARD_TOKENS}`);
    }
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(name)) {
    throw new Error(`--name ${name}: use letters, digits, . _ -`);
  }
  const workers = opts.workers ?? Math.max(1, navigator.hardwareConcurrency - 1);
  const status = opts.status ?? new StatusLine();
  const files = listInputs(opts.inputs);
  if (files.length === 0) throw new Error(`no input files in ${opts.inputs.join(" ")}`);
  let totalBytes = 0;
  for (const f of files) totalBytes += Deno.statSync(f).size;

  Deno.mkdirSync(opts.outDir, { recursive: true });
  const mine = new RegExp(`^${name.replace(/[.]/g, "\\.")}_(train|val)_\\d{6}\\.bin$`);
  const existing = [...Deno.readDirSync(opts.outDir)].filter((e) => mine.test(e.name)).map((e) =>
    e.name
  );
  if (existing.length && !opts.force) {
    throw new Error(
      `${opts.outDir} already holds ${existing.length} ${name}_* shards (${
        existing.sort()[0]
      } ...); ` +
        `use --force to replace them, or another --out_dir / --name`,
    );
  }
  for (const e of existing) Deno.removeSync(join(opts.outDir, e));

  const shards: ShardInfo[] = [];
  let buf = new Uint16Array(valTokens), fill = 0;
  let documents = 0, tokens = 0, bytesIn = 0;
  const rate = new Rate(10000);
  const show = (force = false) => {
    rate.sample(tokens);
    const frac = totalBytes ? bytesIn / totalBytes : 0;
    const el = (performance.now() - t0) / 1000;
    const r = rate.perSecond() || (el > 0 ? tokens / el : 0);
    status.update(
      `tokenize ${bar(frac, 16)} ${(100 * frac).toFixed(1)}% ${fmtBytes(bytesIn)}/${
        fmtBytes(totalBytes)
      } | ${fmtCount(documents)} docs ${fmtCount(tokens)} tokens ${
        fmtCount(r)
      } tok/s | shard ${shards.length} | ETA ${
        fmtDuration(frac > 0.001 ? el * (1 - frac) / frac : NaN)
      }`,
      force,
    );
  };
  const flush = () => {
    const index = shards.length;
    const file = shardName(name, index === 0 ? "val" : "train", index);
    writeShard(join(opts.outDir, file), fill === buf.length ? buf : buf.subarray(0, fill));
    shards.push({ file, tokens: fill });
    status.log(`wrote ${file}: ${fmtCount(fill)} tokens`);
    if (index === 0 && buf.length !== shardSize) buf = new Uint16Array(shardSize);
    fill = 0;
  };
  const append = (t: Uint16Array) => {
    let off = 0;
    while (off < t.length) {
      const k = Math.min(t.length - off, buf.length - fill);
      buf.set(t.subarray(off, off + k), fill);
      fill += k;
      off += k;
      if (fill === buf.length) flush();
    }
    tokens += t.length;
    show();
  };

  const pool = new Tokenizers(workers);
  const inFlight: Promise<Uint16Array>[] = [];
  const depth = Math.max(2, 2 * workers);
  let batch: string[] = [], batchChars = 0;
  const dispatch = async () => {
    if (batch.length === 0) return;
    documents += batch.length;
    inFlight.push(pool.run(batch));
    batch = [];
    batchChars = 0;
    while (inFlight.length >= depth) append(await inFlight.shift()!);
  };
  try {
    for (const f of files) {
      const docs = readDocuments(f, {
        textField: opts.textField,
        txtDocs: opts.txtDocs,
        onBytes: (n) => (bytesIn += n),
      });
      for await (const d of docs) {
        batch.push(d);
        batchChars += d.length;
        if (batchChars >= 1 << 20 || batch.length >= 1024) await dispatch();
      }
    }
    await dispatch();
    while (inFlight.length) append(await inFlight.shift()!);
  } finally {
    pool.close();
    // let rejected batches that nobody awaits any more settle quietly
    for (const p of inFlight) p.catch(() => {});
  }
  if (fill > 0) flush();
  show(true);
  status.done();
  return {
    shards,
    documents,
    tokens,
    inputFiles: files.length,
    seconds: (performance.now() - t0) / 1000,
  };
}

/** `100M`, `1e8`, `250k`, `100000000` as a whole number. */
export function parseCount(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([kKmMgGbB]?)$/.exec(s.trim());
  const mult: Record<string, number> = { "": 1, k: 1e3, m: 1e6, g: 1e9, b: 1e9 };
  const v = m ? Number(m[1]) * mult[m[2].toLowerCase()] : Number(s);
  if (!Number.isFinite(v) || !Number.isInteger(v)) {
    throw new Error(`${s}: expected a whole number (e.g. 100M, 1e8)`);
  }
  return v;
}

const USAGE = `usage: deno run -A data/fineweb.ts [options] INPUT...
Tokenizes documents (GPT-2 BPE, <|endoftext|> before each) into token shards:
<out_dir>/<name>_val_000000.bin (the first --val_tokens), then <name>_train_000001.bin, ...
INPUT: files or folders: *.jsonl / *.json (field --text_field), *.parquet, plain text; .gz ok.
  --out_dir DIR        output folder (default data/custom)
  --name NAME          shard name prefix (default fineweb)
  --shard_size N       tokens per shard (default 100M; 1e8, 250k, ... accepted)
  --val_tokens N       tokens in the val shard (default: --shard_size, as fineweb.py)
  --text_field NAME    JSON / Parquet field with the text (default text)
  --txt_docs MODE      plain text: file (one document per file, default), line, blankline
  --workers N          tokenizer threads (default: CPUs - 1; 0 = none, tokenize inline)
  --force              replace existing <name>_* shards in --out_dir`;

if (import.meta.main) {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: {
        out_dir: { type: "string", default: "data/custom" },
        name: { type: "string", default: "fineweb" },
        shard_size: { type: "string", default: "100M" },
        val_tokens: { type: "string" },
        text_field: { type: "string", default: "text" },
        txt_docs: { type: "string", default: "file" },
        workers: { type: "string" },
        force: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    Deno.exit(2);
  }
  const { values: v, positionals } = parsed;
  if (v.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  if (positionals.length === 0) {
    console.error(`no INPUT given\n${USAGE}`);
    Deno.exit(2);
  }
  if (!["file", "line", "blankline"].includes(v.txt_docs)) {
    console.error(`--txt_docs ${v.txt_docs}: expected file, line or blankline`);
    Deno.exit(2);
  }
  try {
    const r = await tokenizeToShards({
      inputs: positionals,
      outDir: v.out_dir,
      name: v.name,
      shardSize: parseCount(v.shard_size),
      valTokens: v.val_tokens === undefined ? undefined : parseCount(v.val_tokens),
      textField: v.text_field,
      txtDocs: v.txt_docs as TxtDocs,
      workers: v.workers === undefined ? undefined : parseCount(v.workers),
      force: v.force,
    });
    console.log(
      `${basename(Deno.mainModule)}: ${
        fmtCount(r.documents)
      } documents from ${r.inputFiles} files, ${
        fmtCount(r.tokens)
      } tokens in ${r.shards.length} shards (${v.out_dir}) in ${fmtDuration(r.seconds)}`,
    );
    if (r.shards.length === 1) {
      console.log(
        "note: everything went into the val shard; lower --val_tokens (or --shard_size) to get train shards",
      );
    }
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
