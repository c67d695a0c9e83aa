// Tokenizing raw text into shards: every input format, the cutting rule of the original
// fineweb.py (checked against a literal transcription of its loop), identical output with and
// without worker threads, --force, and the command line.
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
// deno-lint-ignore no-import-prefix -- test-only: writes the Parquet inputs, pinned here
import { parquetWriteBuffer } from "npm:hyparquet-writer@0.17.0";
import { parseCount, readDocuments, tokenizeToShards } from "./fineweb.ts";
import { tokenizeDocument } from "./gpt2.ts";
import { readShardTokens } from "./shard.ts";
import { StatusLine } from "./progress.ts";

const quiet = () =>
  new StatusLine({ sink: { writeSync: (p) => p.length, isTerminal: () => false }, tty: false });

async function collect(path: string, opts: Parameters<typeof readDocuments>[1] = {}) {
  const out: string[] = [];
  for await (const d of readDocuments(path, opts)) out.push(d);
  return out;
}

async function gzip(text: string): Promise<Uint8Array> {
  const s = new Blob([text]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Uint8Array(await new Response(s).arrayBuffer());
}

/** Some documents with a little of everything. */
const DOCS = Array.from(
  { length: 37 },
  (_, i) =>
    `Document ${i}: ${"the quick brown fox jumps over the lazy dog. ".repeat(1 + (i * 7) % 11)}` +
    (i % 5 === 0 ? "Ünïcödé ✓ <|endoftext|> " : "") + `\nline two of ${i}.`,
);

/** modded-nanogpt's data/fineweb.py shard loop, transcribed literally. */
function original(docs: Uint16Array[], shardSize: number): Uint16Array[] {
  const shards: Uint16Array[] = [];
  const all = new Uint16Array(shardSize);
  let count = 0;
  for (const tokens of docs) {
    if (count + tokens.length < shardSize) {
      all.set(tokens, count);
      count += tokens.length;
    } else {
      const remainder = shardSize - count;
      all.set(tokens.subarray(0, remainder), count);
      shards.push(all.slice());
      all.set(tokens.subarray(remainder), 0);
      count = tokens.length - remainder;
    }
  }
  if (count !== 0) shards.push(all.slice(0, count));
  return shards;
}

Deno.test("fineweb: input formats: JSONL, JSON array, text modes, gzip, Parquet", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "mn-fw-in-" });
  try {
    const p = (n: string) => join(dir, n);
    Deno.writeTextFileSync(
      p("a.jsonl"),
      '{"text":"one","id":1}\n\n{"text":"two\\nlines"}\r\n{"body":"x","text":"three"}',
    );
    assert.deepEqual(await collect(p("a.jsonl")), ["one", "two\nlines", "three"]);
    Deno.writeTextFileSync(p("b.json"), '\n[{"content":"A"},\n {"content":"B"}]\n');
    assert.deepEqual(await collect(p("b.json"), { textField: "content" }), ["A", "B"]);
    Deno.writeFileSync(p("c.jsonl.gz"), await gzip('{"text":"zipped"}\n{"text":"twice"}\n'));
    assert.deepEqual(await collect(p("c.jsonl.gz")), ["zipped", "twice"]);
    const txt = "para one\nstill one\n\n\npara two\r\n\r\nthree\n";
    Deno.writeTextFileSync(p("d.txt"), txt);
    assert.deepEqual(await collect(p("d.txt")), [txt]);
    assert.deepEqual(await collect(p("d.txt"), { txtDocs: "line" }), [
      "para one",
      "still one",
      "para two",
      "three",
    ]);
    assert.deepEqual(await collect(p("d.txt"), { txtDocs: "blankline" }), [
      "para one\nstill one",
      "para two",
      "three",
    ]);
    Deno.writeFileSync(p("e.txt.gz"), await gzip("gz text"));
    assert.deepEqual(await collect(p("e.txt.gz")), ["gz text"]);
    // Parquet: several row groups, snappy (the default) and uncompressed
    const texts = Array.from({ length: 25 }, (_, i) => `row ${i} ${"x".repeat(i)}`);
    for (const codec of ["SNAPPY", "UNCOMPRESSED"] as const) {
      const buf = parquetWriteBuffer({
        columnData: [
          { name: "id", data: texts.map((_, i) => i), type: "INT32" },
          { name: "text", data: texts, type: "STRING" },
        ],
        rowGroupSize: 7,
        codec,
      });
      Deno.writeFileSync(p(`f_${codec}.parquet`), new Uint8Array(buf));
      let bytes = 0;
      assert.deepEqual(
        await collect(p(`f_${codec}.parquet`), { onBytes: (n) => (bytes += n) }),
        texts,
      );
      assert.equal(
        bytes,
        Deno.statSync(p(`f_${codec}.parquet`)).size,
        "progress reaches the file size",
      );
    }
    // errors name the file and the place
    Deno.writeTextFileSync(p("bad.jsonl"), '{"text":"ok"}\n{"txt":"no"}\n');
    await assert.rejects(
      collect(p("bad.jsonl")),
      /bad\.jsonl:2: no string field "text" \(choose one with --text_field\)/,
    );
    Deno.writeTextFileSync(p("worse.jsonl"), '{"text":"ok"}\nnot json\n');
    await assert.rejects(collect(p("worse.jsonl")), /worse\.jsonl:2: not a JSON object per line/);
    await assert.rejects(
      collect(p("f_SNAPPY.parquet"), { textField: "body" }),
      /no column "body" \(columns: id, text\)/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("fineweb: shards are cut exactly like fineweb.py, with or without workers", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "mn-fw-" });
  try {
    const input = join(dir, "in");
    Deno.mkdirSync(join(input, "sub"), { recursive: true });
    // two files, read in name order: in/a.jsonl then in/sub/b.txt (one document per file)
    Deno.writeTextFileSync(
      join(input, "a.jsonl"),
      DOCS.slice(0, -1).map((t) => JSON.stringify({ text: t })).join("\n"),
    );
    Deno.writeTextFileSync(join(input, "sub", "b.txt"), DOCS.at(-1)!);
    Deno.writeTextFileSync(join(input, "ignored.csv"), "not an input");
    const docs = DOCS.map(tokenizeDocument);
    const total = docs.reduce((s, d) => s + d.length, 0);
    const shardSize = 487; // not a divisor of anything here
    const want = original(docs, shardSize);
    assert.ok(want.length >= 4, `${want.length} shards`);

    const outs: Uint16Array[][] = [];
    for (const workers of [0, 2]) {
      const out = join(dir, `out${workers}`);
      const r = await tokenizeToShards({
        inputs: [input],
        outDir: out,
        name: "t",
        shardSize,
        workers,
        status: quiet(),
      });
      assert.equal(r.documents, DOCS.length);
      assert.equal(r.tokens, total);
      assert.equal(r.inputFiles, 2);
      assert.deepEqual(
        r.shards.map((s) => s.file),
        want.map((_, i) =>
          i === 0 ? "t_val_000000.bin" : `t_train_${String(i).padStart(6, "0")}.bin`
        ),
      );
      const got = r.shards.map((s) => readShardTokens(join(out, s.file)));
      assert.deepEqual(got.map((g) => g.length), want.map((w) => w.length));
      got.forEach((g, i) => assert.deepEqual(g, want[i], `shard ${i}`));
      outs.push(got);
    }
    assert.deepEqual(outs[0], outs[1], "workers do not change the output");

    // a smaller val shard, then train shards of --shard_size
    const r = await tokenizeToShards({
      inputs: [input],
      outDir: join(dir, "v"),
      shardSize: 1000,
      valTokens: 300,
      workers: 1,
      status: quiet(),
    });
    const lens = r.shards.map((s) => s.tokens);
    assert.equal(lens[0], 300);
    assert.ok(lens.slice(1, -1).every((n) => n === 1000));
    assert.equal(lens.reduce((a, b) => a + b, 0), total);
    assert.equal(r.shards[0].file, "fineweb_val_000000.bin");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("fineweb: existing shards are kept unless --force, which replaces them all", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "mn-fw-force-" });
  try {
    const input = join(dir, "in.txt");
    Deno.writeTextFileSync(input, DOCS.join("\n"));
    const out = join(dir, "out");
    const opts = {
      inputs: [input],
      outDir: out,
      name: "n",
      txtDocs: "line" as const,
      workers: 0,
      status: quiet(),
    };
    const first = await tokenizeToShards({ ...opts, shardSize: 200 });
    await assert.rejects(
      tokenizeToShards({ ...opts, shardSize: 200 }),
      /already holds \d+ n_\* shards \(n_train_000001\.bin \.\.\.\); use --force/,
    );
    Deno.writeTextFileSync(join(out, "other_train_000001.bin"), "not ours");
    const second = await tokenizeToShards({ ...opts, shardSize: 1000, force: true });
    assert.ok(second.shards.length < first.shards.length);
    assert.deepEqual(
      [...Deno.readDirSync(out)].map((e) => e.name).sort(),
      ["other_train_000001.bin", ...second.shards.map((s) => s.file)].sort(),
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("fineweb: command line", async () => {
  const dir = Deno.makeTempDirSync({ prefix: "mn-fw-cli-" });
  try {
    const input = join(dir, "docs.jsonl");
    Deno.writeTextFileSync(input, DOCS.map((t) => JSON.stringify({ text: t })).join("\n"));
    const script = fileURLToPath(new URL("./fineweb.ts", import.meta.url));
    const run = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", script, ...args],
        env: { MN_PROGRESS_S: "0", NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).output();
    const dec = (b: Uint8Array) => new TextDecoder().decode(b);
    const ok = await run([
      "--out_dir",
      join(dir, "o"),
      "--shard_size",
      "1k",
      "--workers",
      "1",
      input,
    ]);
    assert.equal(ok.code, 0, dec(ok.stderr));
    assert.match(dec(ok.stdout), /37 documents from 1 files, [\d,]+ tokens in \d+ shards/);
    assert.match(dec(ok.stderr), /wrote fineweb_val_000000\.bin: 1,000 tokens/);
    const small = await run(["--out_dir", join(dir, "s"), input]);
    assert.equal(small.code, 0);
    assert.match(dec(small.stdout), /everything went into the val shard/);
    const none = await run(["--out_dir", join(dir, "x")]);
    assert.equal(none.code, 2);
    const bad = await run(["--txt_docs", "words", input]);
    assert.equal(bad.code, 2);
    const missing = await run(["--out_dir", join(dir, "m"), join(dir, "nope.txt")]);
    assert.equal(missing.code, 1);
    assert.match(dec(missing.stderr), /^error: .*nope\.txt/m);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("fineweb: token counts parse like 100M, 1e8, 250k", () => {
  assert.equal(parseCount("100M"), 100_000_000);
  assert.equal(parseCount("1e8"), 100_000_000);
  assert.equal(parseCount("250k"), 250_000);
  assert.equal(parseCount("1.5k"), 1500);
  assert.equal(parseCount("42"), 42);
  assert.throws(() => parseCount("1.5"), /whole number/);
  assert.throws(() => parseCount("lots"), /whole number/);
});
