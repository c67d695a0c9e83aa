/**
 * The safetensors checkpoint format (HuggingFace), read and written with Deno APIs only.
 *
 * Layout of a file (all integers little-endian):
 *
 * ```text
 * [8 bytes]  N: u64, the byte length of the header
 * [N bytes]  the header: UTF-8 JSON object, starting with "{", padded with spaces (0x20)
 *            so that the data that follows starts at a multiple of 8:
 *            { "__metadata__": { "<key>": "<string>", ... },            (optional)
 *              "<name>": { "dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END] }, ... }
 * [rest]     the data section: every tensor's bytes, row-major (C order), packed.
 * ```
 *
 * Rules enforced when reading (those of the reference implementation, huggingface/safetensors):
 * - N is at most 100,000,000 bytes and 8 + N is at most the file size;
 * - the header is valid UTF-8 JSON, starts with `{`, has no duplicate keys;
 * - `__metadata__`, when present, maps strings to strings;
 * - every other entry has `dtype`, `shape` (non-negative integers; `[]` is a scalar, a 0
 *   dimension an empty tensor) and `data_offsets` `[BEGIN, END]`, relative to the start of the
 *   data section, with END - BEGIN == product(shape) * sizeof(dtype);
 * - sorted by offset, the tensors cover the data section exactly: the first begins at 0, each
 *   begins where the previous ends (no overlaps, no holes), the last ends at the end of the file.
 *
 * Only the dtypes this project uses are supported ({@link StDtype}); a file holding any other
 * (F16, F64, U8, ...) is rejected with an error naming the tensor and its dtype.
 *
 * Every malformed-input error is a {@link SafetensorsError} whose message is a single line that
 * starts with the file's path. Errors from opening a file (for example `Deno.errors.NotFound`)
 * are passed through unchanged, so callers can test for a missing checkpoint.
 *
 * @module
 */

/** The element types supported here, with their safetensors names. */
export type StDtype = "F32" | "BF16" | "I32" | "I64" | "U16";

/** A host tensor as stored in a safetensors file. BF16 and U16 data are raw 16-bit words. */
export interface StTensor {
  /** Element type. */
  dtype: StDtype;
  /** Dimensions, outermost first; `[]` for a scalar (one element). */
  shape: number[];
  /** Row-major elements: Float32Array for F32, Uint16Array for BF16 and U16, Int32Array for I32,
   * BigInt64Array for I64. Its length must equal the product of `shape`. */
  data: Float32Array | Uint16Array | Int32Array | BigInt64Array;
}

/** One tensor entry of a header, as validated by {@link readSafetensorsHeader}. */
export interface StTensorInfo {
  /** Element type. */
  dtype: StDtype;
  /** Dimensions, outermost first. */
  shape: number[];
  /** `[BEGIN, END)` in bytes, relative to the start of the data section. */
  dataOffsets: [number, number];
}

/** A validated header: everything but the tensor data. */
export interface StHeader {
  /** Tensor entries in the order the header lists them. */
  tensors: Map<string, StTensorInfo>;
  /** The `__metadata__` strings; `{}` when absent. */
  metadata: Record<string, string>;
  /** N: the header's byte length (padding included). */
  headerLength: number;
  /** Absolute file offset of the data section (8 + N). */
  dataStart: number;
  /** Size of the file in bytes. */
  fileSize: number;
}

/** A malformed file or an invalid argument; the message is one line naming the file. */
export class SafetensorsError extends Error {
  override name = "SafetensorsError";
}

/** The largest header accepted, as in the reference implementation. */
export const MAX_HEADER_SIZE = 100_000_000;

const DTYPE_SIZE: Record<StDtype, number> = { F32: 4, BF16: 2, I32: 4, I64: 8, U16: 2 };
const KNOWN_DTYPES = Object.keys(DTYPE_SIZE) as StDtype[];
const METADATA_KEY = "__metadata__";

type TypedArrayCtor =
  | Float32ArrayConstructor
  | Uint16ArrayConstructor
  | Int32ArrayConstructor
  | BigInt64ArrayConstructor;
const DTYPE_ARRAY: Record<StDtype, TypedArrayCtor> = {
  F32: Float32Array,
  BF16: Uint16Array,
  I32: Int32Array,
  I64: BigInt64Array,
  U16: Uint16Array,
};

function isDtype(s: unknown): s is StDtype {
  return typeof s === "string" && Object.hasOwn(DTYPE_SIZE, s);
}

/** Replaces line breaks (and the whitespace around them) so that a message stays on one line. */
function oneLine(s: string): string {
  return s.replace(/\s*[\r\n\u2028\u2029]+\s*/g, " ");
}

function fail(path: string, msg: string): never {
  throw new SafetensorsError(oneLine(`${path}: ${msg}`));
}

/** Names a tensor in a message: JSON-quoted, so odd names (spaces, newlines) stay readable. */
function q(name: string): string {
  return JSON.stringify(name);
}

function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

function describe(v: unknown): string {
  if (v === undefined) return "nothing";
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function assertLittleEndian(): void {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
    throw new SafetensorsError("safetensors: this module assumes a little-endian host");
  }
}

/** Product of a shape, or null when it is not a safe integer. */
function numel(shape: readonly number[]): number | null {
  let n = 1;
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return null;
  }
  return n;
}

function isShape(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((d) => Number.isSafeInteger(d) && d >= 0);
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * Writes `tensors` (in iteration order: a Map's or a record's insertion order) and `metadata`
 * to `path` in safetensors format. The same input always produces the same bytes: the header is
 * compact JSON (`__metadata__` first, omitted when `metadata` is absent or empty), padded with
 * spaces to a multiple of 8, and the data section holds the tensors back to back in the same order.
 *
 * The write is atomic: everything is validated first, then the file is written to
 * `${path}.tmp-<pid>`, flushed to disk with fsync and renamed onto `path` (the directory is then
 * fsynced, best effort). A crash or error at any point leaves either the old file or the complete
 * new one under `path`, never a truncated one; on error the temporary file is removed.
 *
 * Data is written tensor by tensor straight from each typed array's memory (no concatenation),
 * so files of any size need no extra memory.
 *
 * @throws {SafetensorsError} naming the tensor when a dtype is unknown, a shape is not a list of
 *   non-negative integers, the data is not the typed array for its dtype, or the shape's product
 *   differs from the data's length; also for a tensor named `__metadata__` or a non-string
 *   metadata value. I/O errors propagate after the temporary file is removed.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, StTensor> | ReadonlyMap<string, StTensor>,
  metadata?: Record<string, string>,
): void {
  assertLittleEndian();
  const entries: [string, StTensor][] = tensors instanceof Map
    ? [...tensors.entries()]
    : Object.entries(tensors as Record<string, StTensor>);

  // Validate everything and lay out the data section before touching the file system.
  const parts: string[] = [];
  if (metadata !== undefined) {
    if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
      fail(path, `metadata must be an object of strings, got ${describe(metadata)}`);
    }
    const kv: string[] = [];
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        fail(path, `metadata ${q(k)} must be a string, got ${describe(v)}`);
      }
      kv.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    if (kv.length > 0) parts.push(`${JSON.stringify(METADATA_KEY)}:{${kv.join(",")}}`);
  }
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    if (name === METADATA_KEY) fail(path, `a tensor cannot be named ${q(METADATA_KEY)}`);
    if (t === null || typeof t !== "object") {
      fail(path, `tensor ${q(name)}: expected {dtype, shape, data}, got ${describe(t)}`);
    }
    const { dtype, shape, data } = t;
    if (!isDtype(dtype)) {
      fail(
        path,
        `tensor ${q(name)}: unsupported dtype ${describe(dtype)} (supported: ${
          KNOWN_DTYPES.join(", ")
        })`,
      );
    }
    if (!isShape(shape)) {
      fail(path, `tensor ${q(name)}: shape must be non-negative integers, got ${describe(shape)}`);
    }
    const ctor = DTYPE_ARRAY[dtype];
    if (!(data instanceof ctor)) {
      const got = (data as { constructor?: { name?: string } } | null)?.constructor?.name ??
        describe(data);
      fail(path, `tensor ${q(name)}: ${dtype} data must be a ${ctor.name}, got ${got}`);
    }
    const n = numel(shape);
    if (n !== data.length) {
      fail(
        path,
        `tensor ${q(name)}: shape ${fmtShape(shape)} holds ${n ?? "too many"} elements ` +
          `but data has ${data.length}`,
      );
    }
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    parts.push(
      `${JSON.stringify(name)}:{"dtype":"${dtype}","shape":${fmtShape(shape)},` +
        `"data_offsets":[${offset},${offset + bytes.byteLength}]}`,
    );
    chunks.push(bytes);
    offset += bytes.byteLength;
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const headerLength = Math.ceil(json.length / 8) * 8;
  if (headerLength > MAX_HEADER_SIZE) {
    fail(path, `header would be ${headerLength} bytes, over the limit of ${MAX_HEADER_SIZE}`);
  }
  const head = new Uint8Array(8 + headerLength).fill(0x20);
  new DataView(head.buffer).setBigUint64(0, BigInt(headerLength), true);
  head.set(json, 8);

  const tmp = `${path}.tmp-${Deno.pid}`;
  let file: Deno.FsFile | undefined;
  try {
    file = Deno.openSync(tmp, { write: true, create: true, truncate: true });
    writeAll(file, head);
    for (const c of chunks) writeAll(file, c);
    file.syncSync();
    file.close();
    file = undefined;
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      file?.close();
    } catch { /* already failing */ }
    try {
      Deno.removeSync(tmp);
    } catch { /* never created, or already gone */ }
    throw e;
  }
  syncDir(path);
}

function writeAll(file: Deno.FsFile, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
}

/** Makes the rename durable; some file systems refuse to open or sync a directory: ignored. */
function syncDir(path: string): void {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  try {
    const d = Deno.openSync(dir, { read: true });
    try {
      d.syncSync();
    } finally {
      d.close();
    }
  } catch { /* best effort */ }
}

// ---------------------------------------------------------------------------------------------
// Reading

/** Reads exactly `buf.length` bytes at the file's current position or fails naming `what`. */
function readExactly(file: Deno.FsFile, buf: Uint8Array, path: string, what: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = file.readSync(buf.subarray(done));
    if (n === null || n === 0) {
      fail(path, `unexpected end of file reading ${what}: got ${done} of ${buf.length} bytes`);
    }
    done += n;
  }
}

/**
 * Lists the keys of every JSON object in `text` (already known to be valid JSON) and reports a
 * duplicate, which JSON.parse would silently drop. Returns the top-level keys in file order.
 */
function topLevelKeys(text: string, path: string): string[] {
  const stack: (Set<string> | null)[] = [];
  const top: string[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "{") stack.push(new Set());
    else if (c === "[") stack.push(null);
    else if (c === "}" || c === "]") stack.pop();
    else if (c === '"') {
      const start = i;
      for (i++; text[i] !== '"'; i++) if (text[i] === "\\") i++;
      const keys = stack[stack.length - 1];
      if (!keys) continue;
      let j = i + 1;
      while (j < text.length && /\s/.test(text[j])) j++;
      if (text[j] !== ":") continue;
      const key = JSON.parse(text.slice(start, i + 1)) as string;
      if (keys.has(key)) {
        fail(path, `header has duplicate key ${q(key)}${stack.length > 1 ? " (nested)" : ""}`);
      }
      keys.add(key);
      if (stack.length === 1) top.push(key);
    }
  }
  return top;
}

/** Opens `path`, validates the header and returns it with the open file positioned at the data. */
function openAndParse(path: string): { file: Deno.FsFile; header: StHeader } {
  const file = Deno.openSync(path, { read: true });
  try {
    return { file, header: parseHeader(file, path) };
  } catch (e) {
    file.close();
    throw e;
  }
}

function parseHeader(file: Deno.FsFile, path: string): StHeader {
  const fileSize = file.statSync().size;
  if (fileSize < 8) {
    fail(path, `file is ${fileSize} bytes, shorter than the 8-byte header length`);
  }
  const lenBytes = new Uint8Array(8);
  readExactly(file, lenBytes, path, "the header length");
  const n64 = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_SIZE)) {
    fail(path, `header length ${n64} exceeds the limit of ${MAX_HEADER_SIZE} bytes`);
  }
  const headerLength = Number(n64);
  if (8 + headerLength > fileSize) {
    fail(
      path,
      `header length ${headerLength} runs past the end of the file (${fileSize} bytes, ` +
        `so at most ${fileSize - 8})`,
    );
  }
  const headerBytes = new Uint8Array(headerLength);
  readExactly(file, headerBytes, path, "the header");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(headerBytes);
  } catch {
    fail(path, `header is not valid UTF-8`);
  }
  if (!text.startsWith("{")) {
    fail(path, `header must be a JSON object starting with "{", found ${describe(text[0])}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(path, `header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    fail(path, `header must be a JSON object, found ${describe(json)}`);
  }
  const obj = json as Record<string, unknown>;
  const order = topLevelKeys(text, path);

  const dataStart = 8 + headerLength;
  const dataLength = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, StTensorInfo>();
  for (const name of order) {
    const entry = obj[name];
    if (name === METADATA_KEY) {
      if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
        fail(path, `${q(METADATA_KEY)} must be an object of strings, found ${describe(entry)}`);
      }
      for (const [k, v] of Object.entries(entry)) {
        if (typeof v !== "string") {
          fail(path, `${q(METADATA_KEY)} value of ${q(k)} must be a string, found ${describe(v)}`);
        }
      }
      metadata = { ...(entry as Record<string, string>) };
      continue;
    }
    const where = `tensor ${q(name)}`;
    if (entry === null || typeof entry !== "object" || Array.isArray(entry)) {
      fail(path, `${where}: expected {dtype, shape, data_offsets}, found ${describe(entry)}`);
    }
    const { dtype, shape, data_offsets: offs } = entry as Record<string, unknown>;
    for (const [key, v] of [["dtype", dtype], ["shape", shape], ["data_offsets", offs]]) {
      if (v === undefined) fail(path, `${where}: missing "${key}"`);
    }
    if (!isDtype(dtype)) {
      fail(
        path,
        `${where}: unsupported dtype ${describe(dtype)} (supported: ${KNOWN_DTYPES.join(", ")})`,
      );
    }
    if (!isShape(shape)) {
      fail(
        path,
        `${where}: shape must be a list of non-negative integers, found ${describe(shape)}`,
      );
    }
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      !offs.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(
        path,
        `${where}: data_offsets must be [begin, end] byte offsets, found ${describe(offs)}`,
      );
    }
    const [begin, end] = offs as [number, number];
    if (end < begin) fail(path, `${where}: data_offsets [${begin},${end}] end before they begin`);
    const count = numel(shape);
    const need = count === null ? null : count * DTYPE_SIZE[dtype];
    if (need === null || !Number.isSafeInteger(need)) {
      fail(path, `${where}: shape ${fmtShape(shape)} is too large`);
    }
    if (end - begin !== need) {
      fail(
        path,
        `${where}: data_offsets [${begin},${end}] span ${end - begin} bytes but ${dtype} ` +
          `${fmtShape(shape)} needs ${need}`,
      );
    }
    if (end > dataLength) {
      fail(
        path,
        `${where}: data_offsets [${begin},${end}] out of range: the data section is only ` +
          `${dataLength} bytes (file truncated?)`,
      );
    }
    tensors.set(name, { dtype, shape: [...shape], dataOffsets: [begin, end] });
  }

  // The byte buffer must be covered exactly: no overlaps, no holes, nothing after the last tensor.
  let prevEnd = 0;
  let prevName: string | null = null;
  for (const [name, info] of byOffset(tensors)) {
    const [begin, end] = info.dataOffsets;
    if (begin < prevEnd) {
      fail(
        path,
        `tensor ${q(name)} at [${begin},${end}] overlaps tensor ${
          q(prevName!)
        } ending at ${prevEnd}`,
      );
    }
    if (begin > prevEnd) {
      fail(
        path,
        `hole of ${begin - prevEnd} bytes in the data section before tensor ${q(name)} ` +
          `at [${begin},${end}] (${
            prevName === null ? "data starts" : `tensor ${q(prevName)} ends`
          } ` +
          `at ${prevEnd})`,
      );
    }
    prevEnd = end;
    prevName = name;
  }
  if (prevEnd !== dataLength) {
    fail(
      path,
      `data section is ${dataLength} bytes but the tensors cover ${prevEnd} ` +
        `(${dataLength - prevEnd} trailing bytes)`,
    );
  }
  return { tensors, metadata, headerLength, dataStart, fileSize };
}

/** Entries sorted by data offsets (stable: header order among equal offsets). */
function byOffset(tensors: Map<string, StTensorInfo>): [string, StTensorInfo][] {
  return [...tensors].sort(([, a], [, b]) =>
    a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]
  );
}

/**
 * Reads and validates the header of the safetensors file at `path` without reading tensor data
 * (the data section's length is checked against the file size).
 *
 * @throws {SafetensorsError} one line naming the file and the problem (see the module docs).
 */
export function readSafetensorsHeader(path: string): StHeader {
  const { file, header } = openAndParse(path);
  file.close();
  return header;
}

/**
 * Reads the safetensors file at `path`: every tensor (in header order) and the metadata.
 *
 * The header is validated completely before any data is read. Each tensor's bytes are then read
 * with `readSync` directly into a freshly allocated typed array of its dtype (sequentially, in
 * offset order), so every array is properly aligned and owns its buffer, and the data is copied
 * once, from the kernel into its final place.
 *
 * @throws {SafetensorsError} one line naming the file and the problem (see the module docs).
 */
export function readSafetensors(
  path: string,
): { tensors: Map<string, StTensor>; metadata: Record<string, string> } {
  assertLittleEndian();
  const { file, header } = openAndParse(path);
  try {
    const loaded = new Map<string, StTensor>();
    for (const [name, info] of byOffset(header.tensors)) {
      const [begin, end] = info.dataOffsets;
      const ctor = DTYPE_ARRAY[info.dtype];
      let data: StTensor["data"];
      try {
        data = new ctor((end - begin) / DTYPE_SIZE[info.dtype]);
      } catch (e) {
        fail(
          path,
          `tensor ${q(name)}: cannot allocate ${end - begin} bytes (${(e as Error).message})`,
        );
      }
      readExactly(
        file,
        new Uint8Array(data.buffer, 0, data.byteLength),
        path,
        `tensor ${q(name)} at [${begin},${end}]`,
      );
      loaded.set(name, { dtype: info.dtype, shape: info.shape, data });
    }
    // Header order, not offset order.
    const tensors = new Map<string, StTensor>();
    for (const name of header.tensors.keys()) tensors.set(name, loaded.get(name)!);
    return { tensors, metadata: header.metadata };
  } finally {
    file.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Matching a file against a model

/** A tensor a model expects: its name, shape and, optionally, dtype. */
export interface StExpected {
  name: string;
  shape: readonly number[];
  /** When given, the file's tensor must also have this dtype. */
  dtype?: StDtype;
}

/**
 * Checks that `file` (tensors read from `path`) holds exactly the tensors in `expected`, with the
 * same shapes (and dtypes where given), and returns `file` when it does. Otherwise throws one
 * SafetensorsError listing every problem, for example:
 * `ckpt.safetensors: missing 2 (a.b, c), unexpected 1 (d), mis-shaped 1 (e: file [3,4] vs model [4,3])`
 * (categories without problems are left out; `wrong dtype` lists dtype mismatches).
 */
export function loadStateByName(
  expected: readonly StExpected[],
  file: Map<string, StTensor>,
  path: string,
): Map<string, StTensor> {
  const missing: string[] = [];
  const misShaped: string[] = [];
  const wrongDtype: string[] = [];
  const seen = new Set<string>();
  for (const e of expected) {
    if (seen.has(e.name)) fail(path, `the model lists tensor ${q(e.name)} twice`);
    seen.add(e.name);
    const t = file.get(e.name);
    if (t === undefined) {
      missing.push(e.name);
      continue;
    }
    if (
      t.shape.length !== e.shape.length || t.shape.some((d, i) => d !== e.shape[i])
    ) {
      misShaped.push(`${e.name}: file ${fmtShape(t.shape)} vs model ${fmtShape(e.shape)}`);
    }
    if (e.dtype !== undefined && t.dtype !== e.dtype) {
      wrongDtype.push(`${e.name}: file ${t.dtype} vs model ${e.dtype}`);
    }
  }
  const unexpected = [...file.keys()].filter((k) => !seen.has(k));
  const problems: string[] = [];
  const add = (label: string, items: string[]) => {
    if (items.length > 0) problems.push(`${label} ${items.length} (${items.join(", ")})`);
  };
  add("missing", missing);
  add("unexpected", unexpected);
  add("mis-shaped", misShaped);
  add("wrong dtype", wrongDtype);
  if (problems.length > 0) fail(path, problems.join(", "));
  return file;
}
