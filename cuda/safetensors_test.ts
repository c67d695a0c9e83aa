import assert from "node:assert/strict";
import { join } from "node:path";
import {
  loadStateByName,
  MAX_HEADER_SIZE,
  readSafetensors,
  readSafetensorsHeader,
  SafetensorsError,
  type StTensor,
  writeSafetensors,
} from "./safetensors.ts";

function withTmpDir(fn: (dir: string) => void): void {
  const dir = Deno.makeTempDirSync({ prefix: "safetensors_test_" });
  try {
    fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

function ls(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

function le64(n: number | bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n), true);
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

const enc = new TextEncoder();
const ascii = (s: string) => enc.encode(s);

/** A file made of a header length, a header text (padded with spaces to `pad`) and data. */
function rawFile(
  header: string,
  data: Uint8Array,
  opts: { n?: number | bigint; pad?: number } = {},
) {
  let h: Uint8Array = ascii(header);
  const pad = opts.pad ?? 8;
  if (h.length % pad) h = concat(h, ascii(" ".repeat(pad - (h.length % pad))));
  return concat(le64(opts.n ?? h.length), h, data);
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

function sameTensor(a: StTensor, b: StTensor, name: string): void {
  assert.equal(a.dtype, b.dtype, `${name} dtype`);
  assert.deepEqual(a.shape, b.shape, `${name} shape`);
  assert.equal(a.data.constructor, b.data.constructor, `${name} array type`);
  assert.equal(a.data.length, b.data.length, `${name} length`);
  assert.deepEqual(
    new Uint8Array(a.data.buffer, a.data.byteOffset, a.data.byteLength),
    new Uint8Array(b.data.buffer, b.data.byteOffset, b.data.byteLength),
    `${name} bytes`,
  );
}

Deno.test("safetensors: round trip of every dtype, scalars, empty tensors and metadata", () => {
  withTmpDir((dir) => {
    const backing = new Float32Array([9, 1.5, -2, Number.NaN, Infinity, -0, 9]);
    const tensors = new Map<string, StTensor>([
      // A view at a byte offset of a larger buffer: only the view's bytes are written.
      ["w.f32", { dtype: "F32", shape: [5], data: backing.subarray(1, 6) }],
      ["w.bf16", {
        dtype: "BF16",
        shape: [2, 3],
        data: new Uint16Array([1, 2, 3, 0x3f80, 0xffff, 0]),
      }],
      ["idx.i32", { dtype: "I32", shape: [3, 1], data: new Int32Array([-1, 0, 2147483647]) }],
      ["step.i64", { dtype: "I64", shape: [], data: new BigInt64Array([-(2n ** 62n) - 5n]) }],
      ["tok.u16", { dtype: "U16", shape: [1, 1, 2], data: new Uint16Array([65535, 7]) }],
      ["scalar.f32", { dtype: "F32", shape: [], data: new Float32Array([3.25]) }],
      ["empty.f32", { dtype: "F32", shape: [0], data: new Float32Array(0) }],
      ["empty.bf16", { dtype: "BF16", shape: [4, 0, 2], data: new Uint16Array(0) }],
      ["empty.i64", { dtype: "I64", shape: [0, 3], data: new BigInt64Array(0) }],
      // Integer-like names keep their position (a plain JS object would move them first).
      ["0", { dtype: "I32", shape: [1], data: new Int32Array([42]) }],
      ['name with spaces/and "quotes" é', { dtype: "U16", shape: [1], data: new Uint16Array([5]) }],
    ]);
    const metadata = { format: "pt", step: "1200", "ünïcode ✓": "line1\nline2", empty: "" };
    const path = join(dir, "model.safetensors");
    writeSafetensors(path, tensors, metadata);
    assert.deepEqual(ls(dir), ["model.safetensors"], "no temporary file left behind");

    const got = readSafetensors(path);
    assert.deepEqual(got.metadata, metadata);
    assert.deepEqual([...got.tensors.keys()], [...tensors.keys()], "header order is input order");
    for (const [name, t] of tensors) sameTensor(got.tensors.get(name)!, t, name);
    // Fresh, aligned arrays that own their buffers.
    for (const [name, t] of got.tensors) {
      assert.equal(t.data.byteOffset, 0, name);
      assert.equal(t.data.buffer.byteLength, t.data.byteLength, name);
    }
    assert.equal(got.tensors.get("step.i64")!.data[0], -(2n ** 62n) - 5n);
    assert.ok(Number.isNaN(got.tensors.get("w.f32")!.data[2] as number));

    const header = readSafetensorsHeader(path);
    assert.deepEqual(header.metadata, metadata);
    assert.equal(header.dataStart, 8 + header.headerLength);
    assert.equal(header.headerLength % 8, 0);
    assert.deepEqual(header.tensors.get("w.f32"), {
      dtype: "F32",
      shape: [5],
      dataOffsets: [0, 20],
    });
    assert.deepEqual(header.tensors.get("w.bf16")!.dataOffsets, [20, 32]);
    assert.deepEqual(
      header.tensors.get("empty.f32")!.dataOffsets[0],
      header.tensors.get("empty.f32")!.dataOffsets[1],
    );
    assert.equal(header.fileSize, Deno.statSync(path).size);

    // Deterministic: the same input gives the same bytes; a record gives the same file as a Map.
    const first = Deno.readFileSync(path);
    writeSafetensors(path, tensors, metadata);
    assert.deepEqual(Deno.readFileSync(path), first);
    const path2 = join(dir, "from_record.safetensors");
    const rec: Record<string, StTensor> = {};
    for (const [k, v] of tensors) if (k !== "0") rec[k] = v;
    writeSafetensors(path2, rec, metadata);
    assert.deepEqual([...readSafetensors(path2).tensors.keys()], Object.keys(rec));

    // No tensors at all, no metadata.
    const path3 = join(dir, "empty.safetensors");
    writeSafetensors(path3, {});
    assert.deepEqual(Deno.readFileSync(path3), concat(le64(8), ascii("{}      ")));
    const e = readSafetensors(path3);
    assert.equal(e.tensors.size, 0);
    assert.deepEqual(e.metadata, {});
  });
});

Deno.test("safetensors: byte-level layout of tiny files matches the spec", () => {
  withTmpDir((dir) => {
    // One F32 tensor: the header is 65 bytes of compact JSON, padded with 7 spaces to 72, so the
    // data starts at 8 + 72 = 80 (this is also the reference implementation's own test vector).
    const path = join(dir, "a.safetensors");
    writeSafetensors(path, {
      attn0: { dtype: "F32", shape: [1, 1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) },
    });
    const json = '{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}';
    assert.equal(json.length, 65);
    const expected = concat(le64(72), ascii(json + " ".repeat(7)), f32Bytes([0, 1, 2, 3, 4, 5]));
    assert.deepEqual(Deno.readFileSync(path), expected);
    assert.deepEqual(
      [...Deno.readFileSync(path).subarray(0, 16)],
      [72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34],
    );

    // Metadata first, then tensors in input order with offsets relative to the data section,
    // back to back: BF16 [3] -> [0,6), I64 [] -> [6,14), I32 [2] -> [14,22).
    const path2 = join(dir, "b.safetensors");
    writeSafetensors(path2, {
      b: { dtype: "BF16", shape: [3], data: new Uint16Array([0x3f80, 0x4000, 0xc040]) },
      s: { dtype: "I64", shape: [], data: new BigInt64Array([258n]) },
      i: { dtype: "I32", shape: [2], data: new Int32Array([-2, 16]) },
    }, { k: "v" });
    const json2 = '{"__metadata__":{"k":"v"},' +
      '"b":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},' +
      '"s":{"dtype":"I64","shape":[],"data_offsets":[6,14]},' +
      '"i":{"dtype":"I32","shape":[2],"data_offsets":[14,22]}}';
    // 26 + 54 + 53 + 55 = 188 bytes, padded with 4 spaces to 192; the data starts at 8 + 192 = 200.
    assert.equal(json2.length, 188);
    const data2 = [
      0x80,
      0x3f,
      0x00,
      0x40,
      0x40,
      0xc0, // bf16 1, 2, -3
      2,
      1,
      0,
      0,
      0,
      0,
      0,
      0, // i64 258
      0xfe,
      0xff,
      0xff,
      0xff,
      16,
      0,
      0,
      0, // i32 -2, 16
    ];
    const expected2 = concat(le64(192), ascii(json2 + "    "), new Uint8Array(data2));
    assert.deepEqual(Deno.readFileSync(path2), expected2);

    // A hand-written file from another writer (unpadded header, keys in any order, header
    // entries not sorted by offset) reads back.
    const path3 = join(dir, "c.safetensors");
    Deno.writeFileSync(
      path3,
      rawFile(
        '{"y":{"shape":[1],"data_offsets":[4,8],"dtype":"F32"},' +
          '"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        f32Bytes([1, 2]),
        { pad: 1 },
      ),
    );
    const r = readSafetensors(path3);
    assert.deepEqual([...r.tensors.keys()], ["y", "x"]);
    assert.deepEqual([...r.tensors.get("x")!.data], [1]);
    assert.deepEqual([...r.tensors.get("y")!.data], [2]);
    assert.deepEqual(r.metadata, {});
  });
});

Deno.test("safetensors: every malformed file gives a one-line error naming the file", () => {
  withTmpDir((dir) => {
    const good = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}';
    const d8 = f32Bytes([1, 2]);
    const cases: [string, Uint8Array, RegExp][] = [
      ["empty file", new Uint8Array(0), /file is 0 bytes, shorter than the 8-byte header length/],
      ["5 bytes", new Uint8Array(5), /file is 5 bytes, shorter than the 8-byte header length/],
      [
        "header length past the end",
        concat(le64(1000), ascii("{}      ")),
        /header length 1000 runs past the end of the file \(16 bytes, so at most 8\)/,
      ],
      [
        "header length over 100MB",
        concat(le64(MAX_HEADER_SIZE + 1), ascii("{}      ")),
        /header length 100000001 exceeds the limit of 100000000 bytes/,
      ],
      [
        "header length 2^64-1",
        concat(le64(2n ** 64n - 1n), ascii("{}      ")),
        /header length 18446744073709551615 exceeds the limit/,
      ],
      [
        "header not UTF-8",
        concat(le64(8), new Uint8Array([123, 0xff, 0xfe, 125, 32, 32, 32, 32])),
        /not valid UTF-8/,
      ],
      ["header empty", concat(le64(0)), /must be a JSON object starting with "\{", found nothing/],
      [
        "header not an object",
        rawFile("[1,2]", new Uint8Array()),
        /starting with "\{", found "\["/,
      ],
      ["header not JSON", rawFile('{"a": nope}', new Uint8Array()), /header is not valid JSON \(/],
      [
        "header cut mid-JSON",
        rawFile(good.slice(0, 30), d8, { pad: 1 }),
        /header is not valid JSON/,
      ],
      [
        "duplicate tensor",
        rawFile(good.slice(0, -1) + ',"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', d8),
        /duplicate key "a"/,
      ],
      [
        "metadata not an object",
        rawFile('{"__metadata__":[1]}', new Uint8Array()),
        /"__metadata__" must be an object of strings, found \[1\]/,
      ],
      [
        "metadata value not a string",
        rawFile('{"__metadata__":{"step":12}}', new Uint8Array()),
        /"__metadata__" value of "step" must be a string, found 12/,
      ],
      [
        "entry not an object",
        rawFile('{"a":5}', new Uint8Array()),
        /tensor "a": expected \{dtype, shape, data_offsets\}, found 5/,
      ],
      [
        "missing dtype",
        rawFile('{"a":{"shape":[2],"data_offsets":[0,8]}}', d8),
        /tensor "a": missing "dtype"/,
      ],
      [
        "missing shape",
        rawFile('{"a":{"dtype":"F32","data_offsets":[0,8]}}', d8),
        /tensor "a": missing "shape"/,
      ],
      [
        "missing data_offsets",
        rawFile('{"a":{"dtype":"F32","shape":[2]}}', d8),
        /tensor "a": missing "data_offsets"/,
      ],
      [
        "unknown dtype",
        rawFile('{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}', d8),
        /tensor "a": unsupported dtype "Q7" \(supported: F32, BF16, I32, I64, U16\)/,
      ],
      [
        "unsupported dtype",
        rawFile('{"a":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}', d8),
        /tensor "a": unsupported dtype "F16"/,
      ],
      [
        "negative dim",
        rawFile('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', d8),
        /tensor "a": shape must be a list of non-negative integers, found \[-2\]/,
      ],
      [
        "fractional dim",
        rawFile('{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}}', d8),
        /tensor "a": shape must be a list of non-negative integers/,
      ],
      [
        "offsets not a pair",
        rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}}', d8),
        /tensor "a": data_offsets must be \[begin, end\] byte offsets, found \[8\]/,
      ],
      [
        "negative offset",
        rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}', d8),
        /tensor "a": data_offsets must be \[begin, end\]/,
      ],
      [
        "end before begin",
        rawFile('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', d8),
        /tensor "a": data_offsets \[8,0\] end before they begin/,
      ],
      [
        "offsets do not match shape*dtype",
        rawFile('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', d8),
        /tensor "a": data_offsets \[0,8\] span 8 bytes but F32 \[3\] needs 12/,
      ],
      [
        "huge shape",
        rawFile('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}', d8),
        /tensor "a": shape \[4294967296,4294967296\] is too large/,
      ],
      [
        "offsets out of range",
        rawFile('{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', d8),
        /tensor "a": data_offsets \[0,16\] out of range: the data section is only 8 bytes/,
      ],
      [
        "overlapping tensors",
        rawFile(
          '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
            '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
          d8,
        ),
        /tensor "b" at \[4,8\] overlaps tensor "a" ending at 8/,
      ],
      [
        "empty tensor inside another",
        rawFile(
          '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
            '"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}',
          d8,
        ),
        /tensor "e" at \[4,4\] overlaps tensor "a" ending at 8/,
      ],
      [
        "hole at the start",
        rawFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', d8),
        /hole of 4 bytes in the data section before tensor "a" at \[4,8\] \(data starts at 0\)/,
      ],
      [
        "hole between tensors",
        rawFile(
          '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
            '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
          f32Bytes([1, 2, 3]),
        ),
        /hole of 4 bytes in the data section before tensor "b" at \[8,12\] \(tensor "a" ends at 4\)/,
      ],
      [
        "trailing bytes",
        rawFile(good, f32Bytes([1, 2, 3])),
        /data section is 12 bytes but the tensors cover 8 \(4 trailing bytes\)/,
      ],
      [
        "truncated data",
        rawFile(good, d8).subarray(0, 8 + 56 + 5),
        /tensor "a": data_offsets \[0,8\] out of range: the data section is only 5 bytes \(file truncated\?\)/,
      ],
      [
        "newline in a bad name stays on one line",
        rawFile('{"a\\nb":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', d8),
        /tensor "a\\nb": data_offsets \[0,4\] span 4 bytes but F32 \[2\] needs 8/,
      ],
    ];
    for (const [what, bytes, re] of cases) {
      const path = join(dir, `${what.replaceAll(" ", "_")}.safetensors`);
      Deno.writeFileSync(path, bytes);
      for (const read of [readSafetensors, readSafetensorsHeader]) {
        let err: unknown;
        try {
          read(path);
        } catch (e) {
          err = e;
        }
        assert.ok(err instanceof SafetensorsError, `${what} (${read.name}): got ${err}`);
        const msg = err.message;
        assert.ok(!/[\r\n]/.test(msg), `${what}: one line: ${JSON.stringify(msg)}`);
        assert.ok(msg.startsWith(`${path}: `), `${what}: names the file: ${msg}`);
        assert.match(msg, re, what);
      }
    }
    // A file that does not exist keeps Deno's own error type.
    assert.throws(() => readSafetensors(join(dir, "nope.safetensors")), Deno.errors.NotFound);
  });
});

Deno.test("safetensors: invalid tensors are rejected before anything is written", () => {
  withTmpDir((dir) => {
    const path = join(dir, "ckpt.safetensors");
    const ok: StTensor = { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) };
    const bad: [string, Record<string, StTensor>, RegExp][] = [
      [
        "shape product != length",
        { ok, "blocks.3.w": { dtype: "F32", shape: [2, 3], data: new Float32Array(5) } },
        /tensor "blocks.3.w": shape \[2,3\] holds 6 elements but data has 5/,
      ],
      [
        "wrong array type",
        { ok, w: { dtype: "BF16", shape: [2], data: new Float32Array(2) } },
        /tensor "w": BF16 data must be a Uint16Array, got Float32Array/,
      ],
      [
        "unknown dtype",
        { w: { dtype: "F16" as "BF16", shape: [2], data: new Uint16Array(2) } },
        /tensor "w": unsupported dtype "F16"/,
      ],
      [
        "bad shape",
        { w: { dtype: "F32", shape: [-1], data: new Float32Array(1) } },
        /tensor "w": shape must be non-negative integers, got \[-1\]/,
      ],
      ["reserved name", { __metadata__: ok }, /a tensor cannot be named "__metadata__"/],
    ];
    for (const [what, tensors, re] of bad) {
      assert.throws(() => writeSafetensors(path, tensors), (e: Error) => {
        assert.ok(e instanceof SafetensorsError, what);
        assert.ok(e.message.startsWith(`${path}: `), what);
        assert.match(e.message, re, what);
        return true;
      });
      assert.deepEqual(ls(dir), [], `${what}: no file and no temporary file`);
    }
    assert.throws(
      () => writeSafetensors(path, { ok }, { step: 5 as unknown as string }),
      /metadata "step" must be a string, got 5/,
    );
    assert.deepEqual(ls(dir), []);

    // A failed write leaves a previous checkpoint untouched.
    writeSafetensors(path, { ok }, { v: "1" });
    const before = Deno.readFileSync(path);
    assert.throws(() => writeSafetensors(path, bad[0][1]), SafetensorsError);
    assert.deepEqual(Deno.readFileSync(path), before);
    assert.deepEqual(ls(dir), ["ckpt.safetensors"]);
  });
});

Deno.test("safetensors: a write failing part-way leaves no file and no temporary", () => {
  withTmpDir((dir) => {
    const big = { dtype: "F32" as const, shape: [1 << 20], data: new Float32Array(1 << 20) };

    // Failure while writing data: make the temporary file a link to /dev/full, where every
    // write fails with ENOSPC after the header has been sent.
    const path = join(dir, "full.safetensors");
    let devFull = false;
    try {
      devFull = Deno.statSync("/dev/full").isCharDevice === true;
    } catch { /* not Linux */ }
    if (devFull) {
      Deno.symlinkSync("/dev/full", `${path}.tmp-${Deno.pid}`);
      assert.throws(() => writeSafetensors(path, { big }));
      assert.deepEqual(ls(dir), [], "no file under path, temporary removed");
    }

    // Failure at the very end: the rename onto a non-empty directory is refused.
    const blocked = join(dir, "blocked.safetensors");
    Deno.mkdirSync(blocked);
    Deno.writeFileSync(join(blocked, "keep"), new Uint8Array([1]));
    assert.throws(() => writeSafetensors(blocked, { big }));
    assert.deepEqual(ls(dir), ["blocked.safetensors"], "temporary removed");
    assert.deepEqual(ls(blocked), ["keep"]);

    // A stale temporary from an earlier crash is simply overwritten.
    const p2 = join(dir, "stale.safetensors");
    Deno.writeFileSync(`${p2}.tmp-${Deno.pid}`, new Uint8Array(1 << 16).fill(7));
    writeSafetensors(p2, { big });
    assert.deepEqual(ls(dir), ["blocked.safetensors", "stale.safetensors"]);
    assert.equal(readSafetensors(p2).tensors.get("big")!.data.length, 1 << 20);
  });
});

Deno.test("safetensors: large multi-tensor file round trip", () => {
  withTmpDir((dir) => {
    const path = join(dir, "large.safetensors");
    const a = new Float32Array(12_000_001); // 48 MB, odd byte count relative to 8
    for (let i = 0; i < a.length; i += 4099) a[i] = i * 0.5;
    a[a.length - 1] = -7;
    const b = new Uint16Array(3_000_003);
    for (let i = 0; i < b.length; i++) b[i] = i & 0xffff;
    const c = new BigInt64Array(1_000_000);
    c[999_999] = 123456789012345n;
    const tensors = {
      a: { dtype: "F32" as const, shape: [12_000_001], data: a },
      b: { dtype: "BF16" as const, shape: [3, 1_000_001], data: b },
      c: { dtype: "I64" as const, shape: [1000, 1000], data: c },
    };
    writeSafetensors(path, tensors);
    assert.equal(
      Deno.statSync(path).size,
      8 + readSafetensorsHeader(path).headerLength + 48_000_004 + 6_000_006 + 8_000_000,
    );
    const r = readSafetensors(path);
    for (const [name, t] of Object.entries(tensors)) sameTensor(r.tensors.get(name)!, t, name);
  });
});

Deno.test("safetensors: loadStateByName lists every missing, unexpected and mis-shaped tensor", () => {
  const t = (shape: number[], dtype: "F32" | "BF16" = "F32"): StTensor => ({
    dtype,
    shape,
    data: dtype === "F32"
      ? new Float32Array(shape.reduce((a, b) => a * b, 1))
      : new Uint16Array(shape.reduce((a, b) => a * b, 1)),
  });
  const file = new Map<string, StTensor>([
    ["d", t([1])],
    ["e", t([3, 4])],
    ["f", t([2])],
    ["g", t([], "BF16")],
  ]);
  const model = [
    { name: "a.b", shape: [2] },
    { name: "c", shape: [] },
    { name: "e", shape: [4, 3] },
    { name: "f", shape: [2] },
    { name: "g", shape: [], dtype: "F32" as const },
  ];
  assert.throws(() => loadStateByName(model, file, "ckpt.safetensors"), (e: Error) => {
    assert.ok(e instanceof SafetensorsError);
    assert.equal(
      e.message,
      "ckpt.safetensors: missing 2 (a.b, c), unexpected 1 (d), " +
        "mis-shaped 1 (e: file [3,4] vs model [4,3]), wrong dtype 1 (g: file BF16 vs model F32)",
    );
    return true;
  });
  // Rank differences count as mis-shaped.
  assert.throws(
    () => loadStateByName([{ name: "f", shape: [2, 1] }], new Map([["f", t([2])]]), "x"),
    { message: "x: mis-shaped 1 (f: file [2] vs model [2,1])" },
  );
  const ok = new Map([["e", t([4, 3])], ["s", t([])]]);
  assert.equal(
    loadStateByName([{ name: "s", shape: [] }, { name: "e", shape: [4, 3] }], ok, "y"),
    ok,
  );
  assert.throws(
    () => loadStateByName([{ name: "s", shape: [] }, { name: "s", shape: [] }], ok, "y"),
    /y: the model lists tensor "s" twice/,
  );
});
