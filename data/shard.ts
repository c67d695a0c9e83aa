/**
 * Token shards: the on-disk format of modded-nanogpt (and llm.c), so shards made by either
 * project work in both.
 *
 * ```text
 * [1024 bytes]  header: 256 little-endian int32
 *                 [0] = 20240520   magic
 *                 [1] = 1          version
 *                 [2] = N          number of tokens that follow
 *                 [3..255] = 0
 * [2*N bytes]   the tokens, little-endian uint16 (GPT-2 ids, < 65536)
 * ```
 *
 * Reading is strict: the magic, the version and the file length (exactly 1024 + 2*N bytes) are
 * checked, and every failure is a {@link ShardError} whose message is one line that starts with
 * the file's path and says what was found. Writing goes to a temporary file in the same folder
 * that is then renamed over the destination, so a reader never sees half a shard.
 *
 * The trainers keep their own copy of the reader (as the PyTorch originals do); the two functions
 * to copy are {@link readShardHeader} and {@link readShardTokens}, which are small and synchronous.
 *
 * @module
 */

/** header[0] of every shard. */
export const SHARD_MAGIC = 20240520;
/** header[1]: the only version there is (uint16 tokens). */
export const SHARD_VERSION = 1;
/** The header is 256 int32 = 1024 bytes. */
export const HEADER_BYTES = 1024;
/** The largest token count a header can hold (int32), as the original asserts. */
export const MAX_SHARD_TOKENS = 2 ** 31 - 1;

/** A malformed shard. The message is one line: `<path>: <what was found>`. */
export class ShardError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ShardError";
  }
}

/** What {@link readShardHeader} returns. */
export interface ShardHeader {
  /** Number of uint16 tokens after the header. */
  tokens: number;
  /** Size of the file in bytes (= 1024 + 2 * tokens). */
  bytes: number;
}

const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * Checks a shard header (the first 1024 bytes, or fewer if that is all there is) against the
 * length of the whole file, and returns the token count. `name` starts every error message.
 */
export function checkShardHeader(name: string, head: Uint8Array, fileBytes: number): ShardHeader {
  if (fileBytes === 0) throw new ShardError(`${name}: empty file (0 bytes), not a token shard`);
  if (fileBytes < HEADER_BYTES || head.length < HEADER_BYTES) {
    throw new ShardError(
      `${name}: ${fileBytes} bytes, shorter than the ${HEADER_BYTES}-byte shard header (truncated?)`,
    );
  }
  const dv = new DataView(head.buffer, head.byteOffset, HEADER_BYTES);
  const magic = dv.getInt32(0, true), version = dv.getInt32(4, true), n = dv.getInt32(8, true);
  if (magic !== SHARD_MAGIC) {
    throw new ShardError(`${name}: magic ${magic}, expected ${SHARD_MAGIC} (not a token shard)`);
  }
  if (version !== SHARD_VERSION) {
    throw new ShardError(`${name}: version ${version}, expected ${SHARD_VERSION}`);
  }
  if (n < 0) throw new ShardError(`${name}: negative token count ${n} in the header`);
  const want = HEADER_BYTES + 2 * n;
  if (fileBytes < want) {
    throw new ShardError(
      `${name}: truncated: header says ${n} tokens (${want} bytes) but the file has ${fileBytes} bytes`,
    );
  }
  if (fileBytes > want) {
    throw new ShardError(
      `${name}: token count mismatch: header says ${n} tokens (${want} bytes) but the file has ${fileBytes} bytes`,
    );
  }
  return { tokens: n, bytes: fileBytes };
}

/**
 * Reads and validates the header of the shard at `path` (1024 bytes and the file size; the
 * tokens are not read). Throws {@link ShardError} for a malformed file; errors from opening it
 * (such as `Deno.errors.NotFound`) pass through unchanged.
 */
export function readShardHeader(path: string): ShardHeader {
  const f = Deno.openSync(path);
  try {
    const size = f.statSync().size;
    const head = new Uint8Array(HEADER_BYTES);
    let got = 0;
    while (got < HEADER_BYTES) {
      const n = f.readSync(head.subarray(got));
      if (n === null || n === 0) break;
      got += n;
    }
    return checkShardHeader(path, head.subarray(0, got), size);
  } finally {
    f.close();
  }
}

/** Validates a whole shard held in memory and returns its tokens (a view into `bytes`). */
export function parseShard(name: string, bytes: Uint8Array): Uint16Array {
  const { tokens } = checkShardHeader(name, bytes, bytes.length);
  if (HOST_LE && (bytes.byteOffset + HEADER_BYTES) % 2 === 0) {
    return new Uint16Array(bytes.buffer, bytes.byteOffset + HEADER_BYTES, tokens);
  }
  const dv = new DataView(bytes.buffer, bytes.byteOffset + HEADER_BYTES, 2 * tokens);
  const out = new Uint16Array(tokens);
  for (let i = 0; i < tokens; i++) out[i] = dv.getUint16(2 * i, true);
  return out;
}

/** Reads the shard at `path`, validates it (see {@link readShardHeader}), returns its tokens. */
export function readShardTokens(path: string): Uint16Array {
  return parseShard(path, Deno.readFileSync(path));
}

/**
 * The bytes of a shard holding `tokens` (header + little-endian uint16). Numbers outside
 * [0, 65535] are rejected rather than wrapped.
 */
export function encodeShard(tokens: ArrayLike<number>): Uint8Array {
  const n = tokens.length;
  if (n > MAX_SHARD_TOKENS) throw new RangeError(`${n} tokens: more than a shard header can hold`);
  const out = new Uint8Array(HEADER_BYTES + 2 * n);
  const dv = new DataView(out.buffer);
  dv.setInt32(0, SHARD_MAGIC, true);
  dv.setInt32(4, SHARD_VERSION, true);
  dv.setInt32(8, n, true);
  if (tokens instanceof Uint16Array && HOST_LE) {
    out.set(new Uint8Array(tokens.buffer, tokens.byteOffset, 2 * n), HEADER_BYTES);
    return out;
  }
  for (let i = 0; i < n; i++) {
    const t = tokens[i];
    if (!Number.isInteger(t) || t < 0 || t > 65535) {
      throw new RangeError(`token ${t} at index ${i} does not fit in uint16`);
    }
    dv.setUint16(HEADER_BYTES + 2 * i, t, true);
  }
  return out;
}

/**
 * Writes `bytes` to `path` atomically: to `<path>.<pid>.tmp` in the same folder, then a rename.
 * On failure the temporary file is removed and the destination is left as it was.
 */
export function writeFileAtomic(path: string, bytes: Uint8Array): void {
  const tmp = `${path}.${Deno.pid}.tmp`;
  try {
    const f = Deno.openSync(tmp, { write: true, create: true, truncate: true });
    try {
      let off = 0;
      while (off < bytes.length) off += f.writeSync(bytes.subarray(off));
      f.syncSync();
    } finally {
      f.close();
    }
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* already gone */ }
    throw e;
  }
}

/** Writes a shard of `tokens` to `path` atomically; returns its size in bytes. */
export function writeShard(path: string, tokens: ArrayLike<number>): number {
  const bytes = encodeShard(tokens);
  writeFileAtomic(path, bytes);
  return bytes.length;
}

/** The file name of shard `index` as modded-nanogpt names them: `<name>_<split>_<000001>.bin`. */
export function shardName(name: string, split: "train" | "val", index: number): string {
  return `${name}_${split}_${String(index).padStart(6, "0")}.bin`;
}
