// The shard format: byte layout, round trip, atomic writes, and every reader error.
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  encodeShard,
  HEADER_BYTES,
  parseShard,
  readShardHeader,
  readShardTokens,
  SHARD_MAGIC,
  ShardError,
  shardName,
  writeShard,
} from "./shard.ts";

function tmpdir(): string {
  return Deno.makeTempDirSync({ prefix: "mn-shard-" });
}

/** A shard's bytes written by hand: int32 header fields (LE), then uint16 tokens (LE). */
function handMade(magic: number, version: number, count: number, tokens: number[]): Uint8Array {
  const b = new Uint8Array(HEADER_BYTES + 2 * tokens.length);
  const dv = new DataView(b.buffer);
  dv.setInt32(0, magic, true);
  dv.setInt32(4, version, true);
  dv.setInt32(8, count, true);
  tokens.forEach((t, i) => dv.setUint16(HEADER_BYTES + 2 * i, t, true));
  return b;
}

/** Asserts that `fn` throws a one-line ShardError that starts with `path` and matches `re`. */
function throwsShard(fn: () => unknown, path: string, re: RegExp) {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof ShardError, `not a ShardError: ${e}`);
    assert.ok(e.message.startsWith(`${path}: `), e.message);
    assert.ok(!e.message.includes("\n"), "one line");
    assert.match(e.message, re);
    return true;
  });
}

Deno.test("shard: byte layout is modded-nanogpt's (LE int32 header, LE uint16 tokens)", () => {
  const b = encodeShard([1, 258, 50256, 65535]);
  assert.equal(b.length, 1024 + 8);
  assert.deepEqual([...b.subarray(0, 12)], [0x88, 0xd8, 0x34, 0x01, 1, 0, 0, 0, 4, 0, 0, 0]);
  assert.ok(b.subarray(12, 1024).every((x) => x === 0), "header words 3..255 are zero");
  assert.deepEqual([...b.subarray(1024)], [1, 0, 2, 1, 0x50, 0xc4, 0xff, 0xff]);
  assert.deepEqual(b, handMade(20240520, 1, 4, [1, 258, 50256, 65535]));
  assert.equal(SHARD_MAGIC, 20240520);
  assert.deepEqual([...encodeShard(new Uint16Array([1, 258, 50256, 65535]))], [...b]);
});

Deno.test("shard: round trip through a file, header-only read, empty shard", () => {
  const dir = tmpdir();
  try {
    const toks = new Uint16Array(12345);
    for (let i = 0; i < toks.length; i++) toks[i] = (i * 7919) % 50257;
    const p = join(dir, shardName("x", "train", 1));
    assert.equal(p.endsWith("x_train_000001.bin"), true);
    assert.equal(writeShard(p, toks), 1024 + 2 * 12345);
    assert.deepEqual(readShardHeader(p), { tokens: 12345, bytes: 1024 + 2 * 12345 });
    assert.deepEqual(readShardTokens(p), toks);
    // plain number arrays too, and a shard with no tokens at all is valid
    const q = join(dir, shardName("x", "val", 0));
    writeShard(q, []);
    assert.deepEqual(readShardHeader(q), { tokens: 0, bytes: 1024 });
    assert.equal(readShardTokens(q).length, 0);
    // writing over an existing shard replaces it; no temporary files stay behind
    writeShard(q, [5, 6, 7]);
    assert.deepEqual([...readShardTokens(q)], [5, 6, 7]);
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name).sort(), [
      "x_train_000001.bin",
      "x_val_000000.bin",
    ]);
    // a view that does not start at an even offset still parses
    const raw = new Uint8Array(1 + 1024 + 6);
    raw.set(encodeShard([9, 8, 7]), 1);
    assert.deepEqual([...parseShard("mem", raw.subarray(1))], [9, 8, 7]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("shard: the writer rejects tokens that do not fit in uint16", () => {
  assert.throws(() => encodeShard([1, 65536]), /token 65536 at index 1 does not fit in uint16/);
  assert.throws(() => encodeShard([-1]), /token -1 at index 0/);
  assert.throws(() => encodeShard([1.5]), /token 1.5 at index 0/);
});

Deno.test("shard: every reader error is one line naming the file and what was found", () => {
  const dir = tmpdir();
  try {
    const cases: [string, Uint8Array, RegExp][] = [
      ["empty.bin", new Uint8Array(0), /empty file \(0 bytes\)/],
      ["short.bin", new Uint8Array(100), /100 bytes, shorter than the 1024-byte shard header/],
      ["magic.bin", handMade(12345, 1, 2, [1, 2]), /magic 12345, expected 20240520/],
      ["version.bin", handMade(20240520, 2, 2, [1, 2]), /version 2, expected 1/],
      [
        "truncated.bin",
        handMade(20240520, 1, 5, [1, 2]),
        /truncated: header says 5 tokens \(1034 bytes\) but the file has 1028 bytes/,
      ],
      [
        "mismatch.bin",
        handMade(20240520, 1, 1, [1, 2, 3]),
        /token count mismatch: header says 1 tokens \(1026 bytes\) but the file has 1030 bytes/,
      ],
      ["negative.bin", handMade(20240520, 1, -3, []), /negative token count -3/],
      ["odd.bin", new Uint8Array([...handMade(20240520, 1, 1, [7]), 0]), /token count mismatch/],
    ];
    for (const [name, bytes, re] of cases) {
      const p = join(dir, name);
      Deno.writeFileSync(p, bytes);
      throwsShard(() => readShardHeader(p), p, re);
      throwsShard(() => readShardTokens(p), p, re);
    }
    // a missing file is the runtime's own error, not a ShardError
    assert.throws(() => readShardHeader(join(dir, "nope.bin")), Deno.errors.NotFound);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
