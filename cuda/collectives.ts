// Collectives for multi-process training: one process per GPU, started torchrun-style with the
// environment RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
//
//   const be = openBackend();
//   const comm = openCollective(be);        // "single" (WORLD_SIZE 1), "tcp" (cpu/emu) or "nccl" (cuda)
//   comm.agree(configHash, "config hash");  // every rank runs the same configuration
//   comm.broadcast(weights, 0);             // rank 0's initial weights everywhere
//   ... backward ...; comm.allReduceMean(grads); ... optimizer step ...
//   comm.destroy(); be.close();
//
// Design: every method is SYNCHRONOUS (it blocks the JS thread until the operation is complete on
// this rank), like the FFI kernels the step loop calls; the trainer needs no `await`. The transport
// is a set of blocking TCP sockets driven through libc with Deno.dlopen (socket/connect/send/recv/
// poll), not Deno's promise-based networking, which a synchronous caller could not wait on. While a
// collective waits, timers and JS signal handlers do not run (the launcher must escalate to SIGKILL,
// as with a rank stuck inside NCCL).
//
// Topology ("tcp" kind): a star. Rank 0 listens on MASTER_PORT (on every interface, as torch's
// TCPStore does), the other ranks connect to MASTER_ADDR:MASTER_PORT (retrying until the rendezvous
// timeout) and introduce themselves. For each operation every rank > 0 sends a request frame to
// rank 0; rank 0 reads them IN RANK ORDER, computes, and answers every rank with a reply frame:
// - allReduceSum: rank 0 adds the ranks' float32 arrays in rank order (((x0 + x1) + x2) + ...,
//   rounded to float32 after each addition), so the result is deterministic and bit-identical on
//   every rank (bf16 arrays: each addition in float32, rounded to bf16, as NCCL adds bf16).
//   allReduceMean: the same sum, multiplied on rank 0 by float32(1/world) (one float32 rounding,
//   the bits of mn_scale by 1/world) before it is sent back: the averaging costs no launch.
// - broadcast: the root's bytes (any dtype) travel root -> rank 0 -> the others.
// - barrier: empty frames. agree: rank 0 compares the ranks' strings and answers with its own value
//   or with the error, which every rank then throws.
// Each frame carries the operation and a sequence number, so ranks that call different collectives
// (or different tensor sizes, or different broadcast roots) fail with an error naming both sides
// instead of exchanging garbage. A peer that dies closes its socket (the kernel does this even for
// SIGKILL), which the reader sees as end-of-file: rank 0 then reports "rank 2 disconnected during
// allReduceSum #7", sends that reason to the surviving ranks in an abort frame, and closes; they fail
// with "aborted by rank 0: rank 2 disconnected during allReduceSum #7". After any such failure the
// collective is unusable (every later call throws the first error).
//
// Timeouts: the rendezvous waits opts.timeoutMs, else $MN_COLLECTIVE_TIMEOUT_MS, else 60 s; each
// later operation waits opts.opTimeoutMs, else $MN_COLLECTIVE_OP_TIMEOUT_MS, else 30 min (0 = no
// limit) for a peer that is alive but silent (a dead peer's socket reports end-of-file as soon as
// rank 0 reads from it).
//
// Kind: $MN_COLLECTIVE (or opts.kind) = single | tcp | nccl overrides the default; "tcp" works on
// the cuda backend too (through host memory: a fallback where NCCL is missing, not fast).
//
// "nccl" kind (backend cuda): the same TCP star carries the rendezvous, the 128-byte ncclUniqueId
// from rank 0 to the others, barrier() and agree(); allReduce/broadcast run in NCCL on be.stream
// (asynchronous with respect to the host, ordered with the kernels on that stream). NCCL's summation
// order is its own (ring/tree), deterministic for a fixed topology but not rank order;
// allReduceMean is ncclAvg (NCCL >= 2.10), one call, no scaling launch. A failed NCCL call, an
// error reported for an operation in flight (a peer that died) or a failure at destroy() tears the
// communicator down with ncclCommAbort, never ncclCommDestroy, which would wait for the dead peer
// forever; cuda/collectives_test.ts runs these paths against a stand-in libnccl.
import type { Backend, Tensor } from "./backend.ts";
import { findNvidiaLibrary } from "./libsearch.ts";

export type CollectiveKind = "single" | "tcp" | "nccl" | "dry";

export interface Collective {
  readonly rank: number;
  readonly world: number;
  readonly kind: CollectiveKind;
  /** In place: t (float32 or bf16, in the backend's device memory) becomes the sum over ranks.
   * stream (nccl): where the collective runs, default be.stream (the caller orders it by events);
   * the other kinds run synchronously and ignore it. */
  allReduceSum(t: Tensor, stream?: Deno.PointerValue): void;
  /** In place (float32): the sum over ranks times 1/world, inside the collective (no launch). */
  allReduceMean(t: Tensor): void;
  /** In place: every rank's t becomes root's t (any dtype; sizes must agree). */
  broadcast(t: Tensor, root: number): void;
  /** Returns once every rank has called barrier() (nccl: after this rank's stream is idle). */
  barrier(): void;
  /**
   * Returns rank 0's value of a string (e.g. a config hash) on every rank. With check (the default)
   * a rank whose value differs from rank 0's makes every rank throw an Error naming the differing
   * ranks and `what`.
   */
  agree(value: string, what: string, check?: boolean): string;
  /** Closes the sockets (and the NCCL communicator). Idempotent; call before be.close(). */
  destroy(): void;
}

export interface CollectiveOptions {
  /** rendezvous limit in ms (default: $MN_COLLECTIVE_TIMEOUT_MS, else 60000) */
  timeoutMs?: number;
  /** per-operation limit for a silent but connected peer, ms; 0 = none (default:
   * $MN_COLLECTIVE_OP_TIMEOUT_MS, else 30 min) */
  opTimeoutMs?: number;
  /** force a kind (default: $MN_COLLECTIVE, else single for WORLD_SIZE 1, nccl on cuda, else tcp);
   * "tcp" and "nccl" also work with WORLD_SIZE 1 (tests) */
  kind?: CollectiveKind;
  /** tests with a stand-in libnccl (MN_NCCL) that touches no memory: "nccl" over cpu/emu */
  ncclOnHost?: boolean;
}

export const DEFAULT_TIMEOUT_MS = 60_000;
export const DEFAULT_OP_TIMEOUT_MS = 30 * 60_000;

/** The torchrun-style launch environment. */
export interface DistEnv {
  rank: number;
  world: number;
  localRank: number;
  masterAddr: string;
  masterPort: number;
}

function intVar(env: Record<string, string>, name: string, dflt: number, min: number): number {
  const s = env[name];
  if (s === undefined || s === "") return dflt;
  const v = Number(s);
  if (!Number.isInteger(v) || v < min) {
    throw new Error(`${name}=${s}: expected an integer >= ${min}`);
  }
  return v;
}

/** Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR (default 127.0.0.1), MASTER_PORT (29500). */
export function parseDistEnv(env: Record<string, string>): DistEnv {
  const world = intVar(env, "WORLD_SIZE", 1, 1);
  const rank = intVar(env, "RANK", 0, 0);
  if (rank >= world) throw new Error(`RANK=${rank} is out of range for WORLD_SIZE=${world}`);
  const localRank = intVar(env, "LOCAL_RANK", rank, 0);
  const masterPort = intVar(env, "MASTER_PORT", 29500, 1);
  if (masterPort > 65535) throw new Error(`MASTER_PORT=${masterPort}: not a TCP port`);
  const masterAddr = env.MASTER_ADDR || "127.0.0.1";
  return { rank, world, localRank, masterAddr, masterPort };
}

export function openCollective(
  be: Backend,
  env: Record<string, string> = Deno.env.toObject(),
  opts: CollectiveOptions = {},
): Collective {
  const d = parseDistEnv(env);
  const timeoutMs = opts.timeoutMs ??
    intVar(env, "MN_COLLECTIVE_TIMEOUT_MS", DEFAULT_TIMEOUT_MS, 1);
  const opTimeoutMs = opts.opTimeoutMs ??
    intVar(env, "MN_COLLECTIVE_OP_TIMEOUT_MS", DEFAULT_OP_TIMEOUT_MS, 0);
  const forced = opts.kind ?? (env.MN_COLLECTIVE || undefined);
  if (forced !== undefined && !["single", "tcp", "nccl"].includes(forced)) {
    throw new Error(`MN_COLLECTIVE=${forced}: expected single, tcp or nccl`);
  }
  // the dry backend (bench/step_cost.ts) simulates one rank of WORLD_SIZE: nothing to connect to
  if (be.name === "dry") return new DryCollective(be, d);
  const kind = (forced as CollectiveKind | undefined) ??
    (d.world === 1 ? "single" : be.name === "cuda" ? "nccl" : "tcp");
  if (kind === "single") {
    if (d.world !== 1) throw new Error(`collective "single" needs WORLD_SIZE=1, got ${d.world}`);
    return new SingleCollective();
  }
  if (kind === "nccl" && be.name !== "cuda" && !opts.ncclOnHost) {
    throw new Error(`collective "nccl" needs the cuda backend, not ${be.name}`);
  }
  const star = TcpStar.open(d, timeoutMs, opTimeoutMs);
  if (kind === "tcp") return new TcpCollective(be, star);
  try {
    return new NcclCollective(be, star);
  } catch (e) {
    star.abort((e as Error).message);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// world 1

class SingleCollective implements Collective {
  readonly rank = 0;
  readonly world = 1;
  readonly kind = "single" as const;
  allReduceSum(t: Tensor) {
    requireReducible(t, "allReduceSum", true);
  }
  allReduceMean(t: Tensor) {
    requireReducible(t, "allReduceMean", false);
  }
  broadcast(_t: Tensor, root: number) {
    requireRoot(root, 1);
  }
  barrier() {}
  agree(value: string, _what: string, _check = true): string {
    return value;
  }
  destroy() {}
}

// ---------------------------------------------------------------------------------------------
// "dry": one simulated rank of d.world; each collective is recorded in the backend's trace with its
// bytes (the nccl kind makes no launch around one: its mean is ncclAvg).

class DryCollective implements Collective {
  readonly kind = "dry" as const;
  readonly rank: number;
  readonly world: number;
  constructor(private readonly be: Backend, d: DistEnv) {
    this.rank = d.rank;
    this.world = d.world;
  }
  allReduceSum(t: Tensor) {
    requireReducible(t, "allReduceSum", true);
    if (this.world > 1 && t.numel > 0) this.be.trace?.collective("all_reduce", t.nbytes, t.dtype);
  }
  allReduceMean(t: Tensor) {
    requireReducible(t, "allReduceMean", false);
    if (this.world > 1 && t.numel > 0) this.be.trace?.collective("all_reduce", t.nbytes, t.dtype);
  }
  broadcast(t: Tensor, root: number) {
    requireRoot(root, this.world);
    if (this.world > 1 && t.numel > 0) this.be.trace?.collective("broadcast", t.nbytes, t.dtype);
  }
  barrier() {
    this.be.sync();
  }
  agree(value: string, _what: string, _check = true): string {
    return value;
  }
  destroy() {}
}

function requireReducible(t: Tensor, op: string, bf16: boolean) {
  if (t.dtype === "f32" || (bf16 && t.dtype === "bf16")) return;
  throw new Error(`${op} ${t}: only ${bf16 ? "f32 and bf16" : "f32"} tensors can be reduced`);
}

function requireRoot(root: number, world: number) {
  if (!Number.isInteger(root) || root < 0 || root >= world) {
    throw new Error(`broadcast: root ${root} is not a rank of WORLD_SIZE=${world}`);
  }
}

// ---------------------------------------------------------------------------------------------
// libc sockets through FFI (Linux, x86_64 and aarch64 share every constant and layout used here)

const AF_INET = 2; // <bits/socket.h>
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000; // not inherited by processes the trainer starts
const SOL_SOCKET = 1; // <asm-generic/socket.h>
const SO_REUSEADDR = 2;
const SO_SNDTIMEO = 21; // bounds a blocking connect() on Linux
const IPPROTO_TCP = 6;
const TCP_NODELAY = 1;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000; // a closed peer gives EPIPE, not SIGPIPE
const SHUT_WR = 1;
const POLLIN = 0x1;
const POLLOUT = 0x4;
const EINTR = 4;
const EAGAIN = 11;

const LIBC_SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept: { parameters: ["i32", "pointer", "pointer"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  send: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  getaddrinfo: { parameters: ["buffer", "pointer", "buffer", "buffer"], result: "i32" },
  freeaddrinfo: { parameters: ["pointer"], result: "void" },
  gai_strerror: { parameters: ["i32"], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];
let libcCache: { s: Libc; errno: Deno.UnsafePointerView } | undefined;

function libc(): { s: Libc; errno: Deno.UnsafePointerView } {
  if (!libcCache) {
    let lib;
    try {
      lib = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
    } catch (e) {
      throw new Error(`collective: cannot load libc.so.6 for sockets: ${(e as Error).message}`);
    }
    const ep = lib.symbols.__errno_location();
    if (ep === null) throw new Error("collective: __errno_location returned NULL");
    libcCache = { s: lib.symbols, errno: new Deno.UnsafePointerView(ep) };
  }
  return libcCache;
}

function errno(): number {
  return libc().errno.getInt32();
}

function strerror(e: number): string {
  const p = libc().s.strerror(e);
  return p === null ? `errno ${e}` : Deno.UnsafePointerView.getCString(p);
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A struct sockaddr_in (16 bytes) for an IPv4 address and port. */
function sockaddrIn(ip: Uint8Array, port: number): Uint8Array {
  const sa = new Uint8Array(16);
  const dv = new DataView(sa.buffer);
  dv.setUint16(0, AF_INET, true); // sin_family, host byte order (little-endian on both targets)
  dv.setUint16(2, port, false); // sin_port, network byte order
  sa.set(ip, 4); // sin_addr, network byte order
  return sa;
}

/** IPv4 address of a dotted quad or a host name (getaddrinfo, AF_INET). */
function resolveIPv4(host: string): Uint8Array {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(host);
  if (m) {
    const b = m.slice(1).map(Number);
    if (b.every((x) => x <= 255)) return new Uint8Array(b);
  }
  const { s } = libc();
  // struct addrinfo (64-bit glibc): ai_flags@0 ai_family@4 ai_socktype@8 ai_protocol@12
  // ai_addrlen@16 ai_addr@24 ai_canonname@32 ai_next@40; 48 bytes.
  const hints = new Uint8Array(48);
  const hv = new DataView(hints.buffer);
  hv.setInt32(4, AF_INET, true);
  hv.setInt32(8, SOCK_STREAM, true);
  const res = new BigUint64Array(1);
  const rc = s.getaddrinfo(enc.encode(host + "\0"), null, hints, res);
  if (rc !== 0) {
    const msg = s.gai_strerror(rc);
    throw new Error(
      `cannot resolve MASTER_ADDR=${host}: ${
        msg ? Deno.UnsafePointerView.getCString(msg) : `code ${rc}`
      }`,
    );
  }
  const ai = Deno.UnsafePointer.create(res[0]);
  try {
    const addr = new Deno.UnsafePointerView(ai!).getPointer(24);
    if (addr === null) throw new Error(`cannot resolve MASTER_ADDR=${host}: no address`);
    const v = new Deno.UnsafePointerView(addr);
    return new Uint8Array([v.getUint8(4), v.getUint8(5), v.getUint8(6), v.getUint8(7)]);
  } finally {
    s.freeaddrinfo(ai);
  }
}

/** Why a socket operation stopped: the peer closed/reset, the deadline passed, or another error. */
class SockError extends Error {
  constructor(readonly why: "eof" | "timeout" | "io", detail: string) {
    super(detail);
  }
}

const pollBuf = new Uint8Array(8);
const pollView = new DataView(pollBuf.buffer);

/** poll() one fd until it is ready for `events` (or has an error/hang-up); false at the deadline. */
function waitFd(fd: number, events: number, deadline: number): boolean {
  const { s } = libc();
  for (;;) {
    const left = deadline - performance.now();
    if (left <= 0 && deadline !== Infinity) return false;
    const ms = deadline === Infinity ? -1 : Math.min(Math.ceil(left), 0x7fffffff);
    pollView.setInt32(0, fd, true);
    pollView.setInt16(4, events, true);
    pollView.setInt16(6, 0, true);
    const rc = s.poll(pollBuf, 1n, ms);
    if (rc > 0) return true;
    if (rc < 0) {
      const e = errno();
      if (e !== EINTR) throw new SockError("io", `poll: ${strerror(e)}`);
    }
  }
}

function sleepMs(ms: number) {
  libc().s.poll(pollBuf, 0n, Math.max(0, Math.round(ms)));
}

function setIntOpt(fd: number, level: number, name: number, value: number) {
  libc().s.setsockopt(fd, level, name, new Int32Array([value]), 4);
}

class Sock {
  private open = true;
  constructor(readonly fd: number) {}

  /** Writes all of buf, or throws SockError. */
  sendAll(buf: Uint8Array, deadline: number) {
    const { s } = libc();
    let off = 0;
    while (off < buf.length) {
      if (!this.open) throw new SockError("io", "socket already closed");
      const n = Number(
        s.send(this.fd, buf.subarray(off), BigInt(buf.length - off), MSG_NOSIGNAL | MSG_DONTWAIT),
      );
      if (n > 0) {
        off += n;
        continue;
      }
      const e = n < 0 ? errno() : EAGAIN;
      if (e === EAGAIN || e === EINTR) {
        if (!waitFd(this.fd, POLLOUT, deadline)) throw new SockError("timeout", "send timed out");
        continue;
      }
      // EPIPE / ECONNRESET: the peer is gone.
      throw new SockError(e === 32 || e === 104 ? "eof" : "io", `send: ${strerror(e)}`);
    }
  }

  /** Fills all of buf, or throws SockError. */
  recvAll(buf: Uint8Array, deadline: number) {
    const { s } = libc();
    let off = 0;
    while (off < buf.length) {
      if (!this.open) throw new SockError("io", "socket already closed");
      const n = Number(s.recv(this.fd, buf.subarray(off), BigInt(buf.length - off), MSG_DONTWAIT));
      if (n > 0) {
        off += n;
        continue;
      }
      if (n === 0) throw new SockError("eof", "connection closed");
      const e = errno();
      if (e === EAGAIN || e === EINTR) {
        if (!waitFd(this.fd, POLLIN, deadline)) throw new SockError("timeout", "recv timed out");
        continue;
      }
      throw new SockError(e === 104 ? "eof" : "io", `recv: ${strerror(e)}`);
    }
  }

  /** Best effort: flush what was sent (FIN after the data), discard unread input, close. Closing
   * with unread input would send a reset, which can destroy an abort frame still in flight. */
  close() {
    if (!this.open) return;
    this.open = false;
    const { s } = libc();
    s.shutdown(this.fd, SHUT_WR);
    const sink = new Uint8Array(65536);
    for (let i = 0; i < 256; i++) {
      if (Number(s.recv(this.fd, sink, BigInt(sink.length), MSG_DONTWAIT)) <= 0) break;
    }
    s.close(this.fd);
  }
}

// ---------------------------------------------------------------------------------------------
// the TCP star: rendezvous and framed request/reply operations

// Frame header, 32 bytes little-endian: magic u32, op u32, seq u32, arg i32, size u64 (the size of
// the operand, checked across ranks), len u64 (the payload bytes that follow).
const MAGIC = 0x4c434e4d; // "MNCL"
const HDR = 32;
const OP = {
  HELLO: 1,
  WELCOME: 2,
  ABORT: 3,
  ALLREDUCE_SUM: 4,
  ALLREDUCE_MEAN: 5,
  BROADCAST: 6,
  BARRIER: 7,
  AGREE: 8,
} as const;
const OP_NAME: Record<number, string> = {
  1: "rendezvous",
  2: "rendezvous",
  3: "abort",
  4: "allReduceSum",
  5: "allReduceMean",
  6: "broadcast",
  7: "barrier",
  8: "agree",
};
const MAX_TEXT = 16 << 20; // agree() strings, abort reasons

interface Header {
  op: number;
  seq: number;
  arg: number;
  size: number;
  len: number;
}

/** Raised on rank > 0 when rank 0 sent an abort frame; the reason is rank 0's message. */
class Aborted extends Error {}

class TcpStar {
  /** rank 0: socks[r] for r = 1..world-1; other ranks: socks[0] */
  private socks: (Sock | null)[];
  private seq = 0;
  private closed = false;
  private broken: string | null = null;
  private readonly hdrOut = new Uint8Array(HDR);
  private readonly hdrIn = new Uint8Array(HDR);
  private scratch = new Uint8Array(0);

  private constructor(
    readonly rank: number,
    readonly world: number,
    readonly where: string,
    readonly opTimeoutMs: number,
  ) {
    this.socks = new Array(world).fill(null);
  }

  get prefix(): string {
    return `collective (rank ${this.rank}/${this.world})`;
  }

  /** Rendezvous of all ranks; throws a one-line error naming missing ranks or the address. */
  static open(d: DistEnv, timeoutMs: number, opTimeoutMs: number): TcpStar {
    const where = `MASTER_ADDR:MASTER_PORT=${d.masterAddr}:${d.masterPort}`;
    const star = new TcpStar(d.rank, d.world, where, opTimeoutMs);
    if (d.world === 1) return star;
    try {
      if (d.rank === 0) star.accept(d, timeoutMs);
      else star.connect(d, timeoutMs);
    } catch (e) {
      star.fail(e);
    }
    return star;
  }

  private accept(d: DistEnv, timeoutMs: number) {
    const { s } = libc();
    const lfd = s.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) throw new Error(`socket: ${strerror(errno())}`);
    try {
      setIntOpt(lfd, SOL_SOCKET, SO_REUSEADDR, 1);
      if (s.bind(lfd, sockaddrIn(new Uint8Array(4), d.masterPort), 16) !== 0) {
        throw new Error(
          `cannot listen on port ${d.masterPort} (${this.where}): ${strerror(errno())}`,
        );
      }
      if (s.listen(lfd, Math.max(d.world, 16)) !== 0) {
        throw new Error(`listen on port ${d.masterPort}: ${strerror(errno())}`);
      }
      const deadline = performance.now() + timeoutMs;
      const pending = new Set<number>();
      for (let r = 1; r < d.world; r++) pending.add(r);
      while (pending.size > 0) {
        if (!waitFd(lfd, POLLIN, deadline)) {
          throw new Error(
            `timed out after ${timeoutMs} ms waiting for rank(s) ${
              [...pending].join(", ")
            } of WORLD_SIZE=${d.world} to connect to port ${d.masterPort} (${this.where})`,
          );
        }
        const fd = s.accept(lfd, null, null);
        if (fd < 0) continue; // EINTR, ECONNABORTED: try again
        const sock = new Sock(fd);
        let hello: { rank: number; world: number };
        try {
          const h = this.readHeader(sock, deadline);
          if (h.op !== OP.HELLO || h.len > 4096) throw new SockError("io", "not a hello frame");
          const body = new Uint8Array(h.len);
          sock.recvAll(body, deadline);
          hello = JSON.parse(dec.decode(body));
        } catch (e) {
          // A stray connection (or a rank that died before saying hello): drop it, keep waiting.
          sock.close();
          if (e instanceof SockError && e.why === "timeout") continue;
          console.error(`${this.prefix}: ignored a connection on port ${d.masterPort}: ${e}`);
          continue;
        }
        const r = hello.rank;
        // Store it first so that the abort frame of an error below reaches this rank too.
        const dup = Number.isInteger(r) && r > 0 && r < d.world && this.socks[r] !== null;
        if (!dup && Number.isInteger(r) && r > 0 && r < d.world) this.socks[r] = sock;
        else this.socks.push(sock);
        if (hello.world !== d.world) {
          throw new Error(`rank ${r} has WORLD_SIZE=${hello.world}, rank 0 has ${d.world}`);
        }
        if (!Number.isInteger(r) || r <= 0 || r >= d.world) {
          throw new Error(`a process connected as rank ${r}, not a rank of WORLD_SIZE=${d.world}`);
        }
        if (dup) throw new Error(`two processes connected as rank ${r} (RANK set twice?)`);
        setIntOpt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
        pending.delete(r);
      }
    } finally {
      s.close(lfd);
    }
    const deadline = performance.now() + timeoutMs;
    for (let r = 1; r < d.world; r++) {
      this.writeFrame(this.socks[r]!, OP.WELCOME, 0, 0, 0, null, deadline);
    }
  }

  private connect(d: DistEnv, timeoutMs: number) {
    const { s } = libc();
    const ip = resolveIPv4(d.masterAddr);
    const sa = sockaddrIn(ip, d.masterPort);
    const deadline = performance.now() + timeoutMs;
    let lastErr = "";
    let fd = -1;
    for (;;) {
      fd = s.socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      if (fd < 0) throw new Error(`socket: ${strerror(errno())}`);
      // struct timeval {long tv_sec; long tv_usec}: bounds connect() to an unreachable host.
      const left = Math.max(1, deadline - performance.now());
      const tv = new BigInt64Array([
        BigInt(Math.floor(left / 1000)),
        BigInt(1000 * (left % 1000) | 0),
      ]);
      libc().s.setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, new Uint8Array(tv.buffer), 16);
      if (s.connect(fd, sa, 16) === 0) break;
      lastErr = strerror(errno());
      s.close(fd);
      fd = -1;
      if (performance.now() >= deadline) {
        throw new Error(
          `cannot connect to rank 0 at ${this.where} within ${timeoutMs} ms (last error: ${lastErr})`,
        );
      }
      sleepMs(Math.min(100, deadline - performance.now()));
    }
    setIntOpt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    const sock = new Sock(fd);
    this.socks[0] = sock;
    const hello = enc.encode(JSON.stringify({ rank: d.rank, world: d.world, pid: Deno.pid }));
    // Rank 0 enforces the rendezvous timeout and sends its reason; this wait only guards against a
    // rank 0 that stopped answering, with a grace period so that rank 0's verdict arrives first.
    const grace = timeoutMs + 5000;
    const wait = performance.now() + grace;
    try {
      this.writeFrame(sock, OP.HELLO, 0, d.rank, 0, hello, wait);
      const h = this.readHeader(sock, wait);
      if (h.op !== OP.WELCOME) throw new Error(`unexpected ${OP_NAME[h.op] ?? h.op} frame`);
    } catch (e) {
      if (e instanceof Aborted) throw new Error(`aborted by rank 0: ${e.message}`);
      if (e instanceof SockError) {
        throw new Error(
          e.why === "timeout"
            ? `connected to rank 0 at ${this.where}, but it did not complete the rendezvous within ${grace} ms`
            : `rank 0 at ${this.where} closed the connection during the rendezvous (${e.message})`,
        );
      }
      throw e;
    }
  }

  // --- framing ---

  private writeFrame(
    sock: Sock,
    op: number,
    seq: number,
    arg: number,
    size: number,
    payload: Uint8Array | null,
    deadline: number,
  ) {
    const dv = new DataView(this.hdrOut.buffer);
    dv.setUint32(0, MAGIC, true);
    dv.setUint32(4, op, true);
    dv.setUint32(8, seq, true);
    dv.setInt32(12, arg, true);
    dv.setBigUint64(16, BigInt(size), true);
    dv.setBigUint64(24, BigInt(payload?.length ?? 0), true);
    sock.sendAll(this.hdrOut, deadline);
    if (payload && payload.length > 0) sock.sendAll(payload, deadline);
  }

  /** Reads a frame header; an abort frame is read whole and raised as Aborted(reason). */
  private readHeader(sock: Sock, deadline: number): Header {
    sock.recvAll(this.hdrIn, deadline);
    const dv = new DataView(this.hdrIn.buffer);
    if (dv.getUint32(0, true) !== MAGIC) throw new SockError("io", "malformed frame (bad magic)");
    const h = {
      op: dv.getUint32(4, true),
      seq: dv.getUint32(8, true),
      arg: dv.getInt32(12, true),
      size: Number(dv.getBigUint64(16, true)),
      len: Number(dv.getBigUint64(24, true)),
    };
    if (h.op === OP.ABORT) {
      const body = new Uint8Array(Math.min(h.len, MAX_TEXT));
      sock.recvAll(body, deadline);
      throw new Aborted(dec.decode(body));
    }
    return h;
  }

  private deadline(): number {
    return this.opTimeoutMs > 0 ? performance.now() + this.opTimeoutMs : Infinity;
  }

  /** Runs fn against peer `peer`, turning socket errors into messages naming the peer and op. */
  private io<T>(peer: number, ctx: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (!(e instanceof SockError)) throw e;
      if (e.why === "eof") throw new Error(`rank ${peer} disconnected during ${ctx}`);
      if (e.why === "timeout") {
        throw new Error(
          `rank ${peer} did not respond for ${this.opTimeoutMs} ms during ${ctx} ` +
            `(hung? $MN_COLLECTIVE_OP_TIMEOUT_MS sets the limit)`,
        );
      }
      throw new Error(`connection to rank ${peer} failed during ${ctx}: ${e.message}`);
    }
  }

  /** Gives up: rank 0 sends the reason to every other rank (best effort), then all sockets close
   * and every later call throws. */
  abort(reason: string) {
    if (this.rank === 0 && !this.closed) {
      const body = enc.encode(reason);
      for (const sock of this.socks) {
        if (!sock) continue;
        try {
          this.writeFrame(sock, OP.ABORT, this.seq, 0, 0, body, performance.now() + 200);
        } catch {
          // the peer is gone or not reading; it sees the closed connection instead
        }
      }
    }
    this.close();
    this.broken ??= reason;
  }

  private fail(e: unknown): never {
    let reason = e instanceof Error ? e.message : String(e);
    if (e instanceof Aborted) reason = `aborted by rank 0: ${reason}`;
    this.abort(reason);
    throw new Error(`${this.prefix}: ${reason}`);
  }

  private begin(): number {
    if (this.broken !== null) {
      throw new Error(`${this.prefix}: unusable after an earlier error: ${this.broken}`);
    }
    if (this.closed) throw new Error(`${this.prefix}: used after destroy()`);
    return ++this.seq;
  }

  /**
   * One operation on the star. A rank > 0 sends (op, arg, size, payload), then reads rank 0's reply
   * header and its payload into hooks.replyInto(header). Rank 0 reads the requests of ranks 1, 2,
   * ... in that order: hooks.onRequest(r, header) checks the header against rank 0's own call and
   * says where to read the payload, hooks.afterRequest(r, payload) consumes it; then rank 0 sends
   * hooks.replyFor(r) to every rank. Returns the reply header (null on rank 0).
   */
  private op(
    op: number,
    arg: number,
    size: number,
    payload: Uint8Array | null,
    hooks: {
      onRequest: (r: number, h: Header, ctx: string) => Uint8Array | null;
      afterRequest?: (r: number, body: Uint8Array | null) => void;
      replyFor: (r: number) => { arg: number; payload: Uint8Array | null };
      replyInto: (h: Header, ctx: string) => Uint8Array | null;
    },
  ): Header | null {
    const seq = this.begin();
    const ctx = `${OP_NAME[op]} #${seq}`;
    try {
      const deadline = this.deadline();
      if (this.rank !== 0) {
        const sock = this.socks[0]!;
        this.io(0, ctx, () => this.writeFrame(sock, op, seq, arg, size, payload, deadline));
        // Rank 0 answers after hearing from every rank: the wait starts afresh.
        const h = this.io(0, ctx, () => this.readHeader(sock, this.deadline()));
        if (h.op !== op || h.seq !== seq) {
          throw new Error(
            `protocol error: rank 0 answered ${OP_NAME[h.op] ?? h.op} #${h.seq} to ${ctx}`,
          );
        }
        const into = hooks.replyInto(h, ctx);
        if ((into?.length ?? 0) !== h.len) {
          throw new Error(`protocol error: rank 0 sent ${h.len} bytes in reply to ${ctx}`);
        }
        if (into && into.length > 0) this.io(0, ctx, () => sock.recvAll(into, this.deadline()));
        return h;
      }
      for (let r = 1; r < this.world; r++) {
        const sock = this.socks[r]!;
        const h = this.io(r, ctx, () => this.readHeader(sock, deadline));
        if (h.op !== op || h.seq !== seq) {
          throw new Error(
            `rank ${r} called ${
              OP_NAME[h.op] ?? `op ${h.op}`
            } #${h.seq} while rank 0 called ${ctx}`,
          );
        }
        const into = hooks.onRequest(r, h, ctx);
        if ((into?.length ?? 0) !== h.len) {
          throw new Error(
            `rank ${r} sent ${h.len} payload bytes for ${ctx}, expected ${into?.length ?? 0}`,
          );
        }
        if (into && into.length > 0) this.io(r, ctx, () => sock.recvAll(into, deadline));
        hooks.afterRequest?.(r, into);
      }
      const out = this.deadline();
      for (let r = 1; r < this.world; r++) {
        const { arg: a, payload: p } = hooks.replyFor(r);
        this.io(r, ctx, () => this.writeFrame(this.socks[r]!, op, seq, a, size, p, out));
      }
      return null;
    } catch (e) {
      this.fail(e);
    }
  }

  private scratchBytes(n: number): Uint8Array {
    if (this.scratch.length < n) this.scratch = new Uint8Array(n);
    return this.scratch.subarray(0, n);
  }

  /**
   * In place over ranks: x = ((x_0 + x_1) + x_2) + ... in rank order, in float32 (a Float32Array)
   * or in float32 rounded to bf16 after each addition (a Uint16Array of bf16 bits). mean (float32
   * only): the sum is then multiplied by float32(1/world) on rank 0, before it is sent back.
   */
  allReduceSum(x: Float32Array | Uint16Array, mean: boolean) {
    const bf16 = x instanceof Uint16Array;
    if (bf16 && mean) throw new Error(`${this.prefix}: allReduceMean of bf16 is not supported`);
    const dtype = bf16 ? 1 : 0, width = bf16 ? 2 : 4;
    const bytes = new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
    const tmpBytes = this.rank === 0 ? this.scratchBytes(x.byteLength) : bytes;
    const f32 = !bf16 ? x as Float32Array : null;
    const tmp32 = !bf16 ? new Float32Array(tmpBytes.buffer, 0, x.length) : null;
    const tmp16 = bf16 ? new Uint16Array(tmpBytes.buffer, 0, x.length) : null;
    this.op(mean ? OP.ALLREDUCE_MEAN : OP.ALLREDUCE_SUM, dtype, x.byteLength, bytes, {
      onRequest: (r, h, ctx) => {
        if (h.arg !== dtype) {
          throw new Error(
            `rank ${r} reduces ${h.arg ? "bf16" : "f32"} in ${ctx}, rank 0 ${
              bf16 ? "bf16" : "f32"
            }`,
          );
        }
        if (h.size !== x.byteLength) {
          throw new Error(
            `rank ${r} has ${h.size / width} elements in ${ctx}, rank 0 has ${x.length}`,
          );
        }
        return tmpBytes;
      },
      // Rank r's data is added as soon as it is read, r = 1, 2, ... A Float32Array store rounds
      // each sum to float32; the double-precision sum of two floats is exact enough (53 >= 2*24+2
      // bits) that this equals a float32 addition.
      afterRequest: (r) => {
        if (f32) {
          for (let i = 0; i < x.length; i++) f32[i] += tmp32![i];
          if (mean && r === this.world - 1) {
            const alpha = Math.fround(1 / this.world);
            for (let i = 0; i < x.length; i++) f32[i] *= alpha;
          }
        } else addBf16(x as Uint16Array, tmp16!);
      },
      replyFor: () => ({ arg: dtype, payload: bytes }),
      replyInto: () => bytes,
    });
  }

  /** In place over ranks: every rank gets root's bytes. */
  broadcastBytes(b: Uint8Array, root: number) {
    requireRoot(root, this.world);
    this.op(OP.BROADCAST, root, b.length, this.rank === root ? b : null, {
      onRequest: (r, h, ctx) => {
        if (h.arg !== root) {
          throw new Error(`rank ${r} broadcasts from root ${h.arg} in ${ctx}, rank 0 from ${root}`);
        }
        if (h.size !== b.length) {
          throw new Error(`rank ${r} has ${h.size} bytes in ${ctx}, rank 0 has ${b.length}`);
        }
        return r === root ? b : null;
      },
      replyFor: (r) => ({ arg: root, payload: r === root ? null : b }),
      replyInto: () => (this.rank === root ? null : b),
    });
  }

  barrier() {
    this.op(OP.BARRIER, 0, 0, null, {
      onRequest: () => null,
      replyFor: () => ({ arg: 0, payload: null }),
      replyInto: () => null,
    });
  }

  /** Rank 0's value on every rank; with check, a differing rank makes every rank throw. */
  agree(value: string, what: string, check: boolean): string {
    const values: string[] = [value];
    let verdict: Uint8Array | null = null;
    let failed = false;
    let reply = new Uint8Array(0);
    const h = this.op(OP.AGREE, check ? 1 : 0, 0, enc.encode(value), {
      onRequest: (r, h) => {
        if (h.len > MAX_TEXT) {
          throw new Error(`rank ${r}: agree(${what}) value over ${MAX_TEXT} bytes`);
        }
        return new Uint8Array(h.len);
      },
      afterRequest: (r, body) => {
        values[r] = dec.decode(body ?? new Uint8Array(0));
      },
      replyFor: () => {
        if (verdict === null) {
          const bad = values.map((v, r) => (v === value ? -1 : r)).filter((r) => r >= 0);
          failed = check && bad.length > 0;
          verdict = enc.encode(failed ? agreeMismatch(what, values, bad) : value);
        }
        return { arg: failed ? 1 : 0, payload: verdict };
      },
      replyInto: (h) => {
        if (h.len > MAX_TEXT) throw new Error(`protocol error: agree reply of ${h.len} bytes`);
        reply = new Uint8Array(h.len);
        return reply;
      },
    });
    let text: string;
    if (h) {
      failed = h.arg !== 0;
      text = dec.decode(reply);
    } else {
      text = failed ? dec.decode(verdict!) : value;
    }
    // Every rank throws the same error and the connections stay in step, but a run that does not
    // agree on its configuration should stop: the caller is expected to let this propagate.
    if (failed) throw new Error(`${this.prefix}: ${text}`);
    return text;
  }

  close() {
    this.closed = true;
    for (const sock of this.socks) sock?.close();
    this.socks.fill(null);
  }
}

function agreeMismatch(what: string, values: string[], bad: number[]): string {
  const show = (v: string) => JSON.stringify(v.length > 80 ? v.slice(0, 77) + "..." : v);
  const many = bad.length > 1;
  return `agree(${what}): rank${many ? "s" : ""} ${bad.join(", ")} differ${many ? "" : "s"} ` +
    `from rank 0 (rank 0: ${show(values[0])}; ${
      bad.map((r) => `rank ${r}: ${show(values[r])}`).join("; ")
    })`;
}

// ---------------------------------------------------------------------------------------------
// "tcp": tensors go through host memory and the star

class TcpCollective implements Collective {
  readonly kind = "tcp" as const;
  readonly rank: number;
  readonly world: number;

  constructor(private readonly be: Backend, private readonly star: TcpStar) {
    this.rank = star.rank;
    this.world = star.world;
  }

  allReduceSum(t: Tensor) {
    this.reduce(t, false, "allReduceSum");
  }

  allReduceMean(t: Tensor) {
    this.reduce(t, true, "allReduceMean");
  }

  private reduce(t: Tensor, mean: boolean, what: string) {
    requireReducible(t, what, !mean);
    if (this.world === 1) return;
    // An empty tensor still takes part, so that every rank makes the same sequence of calls.
    const host = this.be.download(t) as Float32Array | Uint16Array;
    this.star.allReduceSum(host, mean);
    if (t.numel > 0) this.be.write(t, host);
  }

  broadcast(t: Tensor, root: number) {
    requireRoot(root, this.world);
    if (this.world === 1) return;
    const host = this.be.download(t);
    const bytes = new Uint8Array(host.buffer, host.byteOffset, host.byteLength);
    this.star.broadcastBytes(bytes, root);
    if (this.rank !== root && t.numel > 0) this.be.write(t, host);
  }

  barrier() {
    this.star.barrier();
  }

  agree(value: string, what: string, check = true): string {
    return this.star.agree(value, what, check);
  }

  destroy() {
    this.star.close();
  }
}

/** x += y elementwise on bf16 bit patterns: a float32 addition rounded to bf16 (to nearest even,
 * NaN kept quiet), as NCCL reduces bf16. */
function addBf16(x: Uint16Array, y: Uint16Array) {
  const f = new Float32Array(2), u = new Uint32Array(f.buffer);
  for (let i = 0; i < x.length; i++) {
    u[0] = x[i] << 16;
    u[1] = y[i] << 16;
    f[0] += f[1];
    const b = u[0];
    x[i] = (b & 0x7fffffff) > 0x7f800000
      ? (b >>> 16) | 0x40
      : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

// ---------------------------------------------------------------------------------------------
// "nccl": NCCL on the device, the star for the rendezvous, the unique id, barrier and agree
//
// Declarations and enum values from nccl.h (NCCL 2.x; the NVIDIA NCCL User Guide, API > Types:
// https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/api/types.html, and API >
// Communicator Creation / Collective Communication Functions):
//   typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;  NCCL_UNIQUE_ID_BYTES 128
//   ncclResult_t: ncclSuccess 0, ncclUnhandledCudaError 1, ncclSystemError 2, ncclInternalError 3,
//     ncclInvalidArgument 4, ncclInvalidUsage 5, ncclRemoteError 6, ncclInProgress 7
//   ncclRedOp_t: ncclSum 0, ncclProd 1, ncclMax 2, ncclMin 3, ncclAvg 4
//   ncclDataType_t: ncclInt8 0, ncclUint8 1, ncclInt32 2, ncclUint32 3, ncclInt64 4, ncclUint64 5,
//     ncclFloat16 6, ncclFloat32 7, ncclFloat64 8, ncclBfloat16 9
//   ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId);
//   ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank);
//   ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
//     ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
//   ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count,
//     ncclDataType_t datatype, int root, ncclComm_t comm, cudaStream_t stream);
//   ncclResult_t ncclCommDestroy(ncclComm_t comm);
//   ncclResult_t ncclCommAbort(ncclComm_t comm);
//   ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError);
//   const char* ncclGetErrorString(ncclResult_t result);
//   const char* ncclGetLastError(ncclComm_t comm);          (NCCL >= 2.13)
//   ncclResult_t ncclGetVersion(int* version);
// In-place operation happens when sendbuff == recvbuff (both collectives).

export const NCCL_UNIQUE_ID_BYTES = 128;
export const NCCL = {
  success: 0,
  inProgress: 7,
  sum: 0,
  avg: 4, // NCCL >= 2.10
  uint8: 1,
  float32: 7,
  bfloat16: 9, // NCCL >= 2.10, CUDA >= 11
} as const;

const NCCL_UNIQUE_ID: Deno.NativeStructType = {
  struct: new Array<Deno.NativeType>(NCCL_UNIQUE_ID_BYTES).fill("u8"),
};

const NCCL_SYMBOLS = {
  ncclGetVersion: { parameters: ["buffer"], result: "i32" },
  ncclGetUniqueId: { parameters: ["buffer"], result: "i32" },
  // The id is passed BY VALUE (a 128-byte struct); Deno's slow struct path is fine once per run.
  ncclCommInitRank: { parameters: ["buffer", "i32", NCCL_UNIQUE_ID, "i32"], result: "i32" },
  ncclAllReduce: {
    parameters: ["pointer", "pointer", "usize", "i32", "i32", "pointer", "pointer"],
    result: "i32",
  },
  ncclBroadcast: {
    parameters: ["pointer", "pointer", "usize", "i32", "i32", "pointer", "pointer"],
    result: "i32",
  },
  ncclCommDestroy: { parameters: ["pointer"], result: "i32" },
  ncclCommAbort: { parameters: ["pointer"], result: "i32" },
  ncclCommGetAsyncError: { parameters: ["pointer", "buffer"], result: "i32" },
  ncclGetErrorString: { parameters: ["i32"], result: "pointer" },
  ncclGetLastError: { parameters: ["pointer"], result: "pointer", optional: true },
} as const;

type NcclLib = Deno.DynamicLibrary<typeof NCCL_SYMBOLS>;
let ncclCache: { lib: NcclLib; path: string } | undefined;

/** Absolute path of libnccl ($MN_NCCL, LD_LIBRARY_PATH, CUDA folders, the nvidia-nccl wheel). */
export function findNccl(): string | null {
  return findNvidiaLibrary("libnccl.so", "MN_NCCL", "nccl");
}

function loadNccl(): { lib: NcclLib; path: string } {
  if (ncclCache) return ncclCache;
  const path = findNccl();
  if (!path) {
    throw new Error(
      "collective nccl: libnccl.so not found (pip install nvidia-nccl-cu12, or set MN_NCCL to the " +
        "library file; MN_COLLECTIVE=tcp runs without NCCL, slowly)",
    );
  }
  try {
    ncclCache = { lib: Deno.dlopen(path, NCCL_SYMBOLS), path };
  } catch (e) {
    throw new Error(`collective nccl: cannot load ${path}: ${(e as Error).message}`);
  }
  return ncclCache;
}

/** The NCCL library that the "nccl" kind loads, and its ncclGetVersion() code (e.g. 23007). */
export function ncclInfo(): { path: string; version: number } {
  const { lib, path } = loadNccl();
  const v = new Int32Array(1);
  const rc = lib.symbols.ncclGetVersion(v);
  if (rc !== NCCL.success) throw new Error(`ncclGetVersion: ncclResult_t ${rc}`);
  return { path, version: v[0] };
}

class NcclCollective implements Collective {
  readonly kind = "nccl" as const;
  readonly rank: number;
  readonly world: number;
  private comm: Deno.PointerValue = null;
  private readonly nccl: NcclLib["symbols"];
  private readonly asyncErr = new Int32Array(1);

  constructor(private readonly be: Backend, private readonly star: TcpStar) {
    this.rank = star.rank;
    this.world = star.world;
    const { lib, path } = loadNccl();
    this.nccl = lib.symbols;
    const ver = new Int32Array(1);
    this.check(this.nccl.ncclGetVersion(ver), "ncclGetVersion");
    // Mixed NCCL versions across ranks can hang in init; refuse them up front.
    this.agree(`${ver[0]} (${path.split("/").pop()})`, "NCCL version");
    if (ver[0] < 21000) { // ncclGetVersion's code is major * 10000 + minor * 100 + patch since 2.9
      throw new Error(
        `collective nccl: ${path} is NCCL ${ver[0]}; 2.10 or later is needed (ncclAvg, bf16)`,
      );
    }
    const id = new Uint8Array(NCCL_UNIQUE_ID_BYTES);
    if (this.rank === 0) this.check(this.nccl.ncclGetUniqueId(id), "ncclGetUniqueId");
    if (this.world > 1) star.broadcastBytes(id, 0);
    const out = new BigUint64Array(1);
    // Uses the current CUDA device, which Backend.open set (LOCAL_RANK) on this thread.
    this.check(this.nccl.ncclCommInitRank(out, this.world, id, this.rank), "ncclCommInitRank");
    this.comm = Deno.UnsafePointer.create(out[0]);
  }

  /** Throws for a failed call; a communicator that was live is aborted first (see abortComm). */
  private check(rc: number, what: string) {
    if (rc === NCCL.success) return;
    const s = this.nccl.ncclGetErrorString(rc);
    let msg = s ? Deno.UnsafePointerView.getCString(s) : "unknown error";
    const last = this.nccl.ncclGetLastError ? this.nccl.ncclGetLastError(this.comm) : null;
    if (last) {
      const l = Deno.UnsafePointerView.getCString(last);
      if (l) msg += `: ${l}`;
    }
    const err = `collective (rank ${this.rank}/${this.world}): ${what} failed: ${msg} ` +
      `[ncclResult_t ${rc}] (NCCL_DEBUG=WARN prints more)`;
    this.abortComm(err);
    throw new Error(err);
  }

  /**
   * The error-path teardown: ncclCommAbort returns without waiting for the operations in flight,
   * where ncclCommDestroy waits for them, forever once a peer rank is gone. The star is aborted too
   * (rank 0 tells the others why). Afterwards every call fails and destroy() does nothing.
   */
  private abortComm(reason: string) {
    const comm = this.comm;
    if (comm === null) return;
    this.comm = null;
    this.nccl.ncclCommAbort(comm); // its own result adds nothing to the error being reported
    this.star.abort(reason);
  }

  /** Errors of operations already enqueued (a peer that died, a network failure). */
  private checkAsync(what: string) {
    this.check(this.nccl.ncclCommGetAsyncError(this.comm, this.asyncErr), "ncclCommGetAsyncError");
    const e = this.asyncErr[0];
    if (e !== NCCL.success && e !== NCCL.inProgress) this.check(e, what);
  }

  private live(what: string) {
    if (this.comm === null) {
      throw new Error(`collective (rank ${this.rank}/${this.world}): ${what} after destroy()`);
    }
  }

  allReduceSum(t: Tensor, stream?: Deno.PointerValue) {
    requireReducible(t, "allReduceSum", true);
    this.allReduce(t, NCCL.sum, "allReduceSum", stream ?? this.be.stream);
  }

  allReduceMean(t: Tensor) {
    requireReducible(t, "allReduceMean", false);
    this.allReduce(t, NCCL.avg, "allReduceMean", this.be.stream);
  }

  private allReduce(t: Tensor, op: number, what: string, stream: Deno.PointerValue) {
    this.live(what);
    if (t.numel === 0) return;
    const dtype = t.dtype === "bf16" ? NCCL.bfloat16 : NCCL.float32;
    this.check(
      this.nccl.ncclAllReduce(t.ptr, t.ptr, t.n, dtype, op, this.comm, stream),
      `ncclAllReduce(${t})`,
    );
    this.checkAsync(`ncclAllReduce(${t})`);
  }

  broadcast(t: Tensor, root: number) {
    requireRoot(root, this.world);
    this.live("broadcast");
    if (t.numel === 0) return;
    // Bytes: any dtype travels unchanged.
    this.check(
      this.nccl.ncclBroadcast(
        t.ptr,
        t.ptr,
        BigInt(t.nbytes),
        NCCL.uint8,
        root,
        this.comm,
        this.be.stream,
      ),
      `ncclBroadcast(${t}, root ${root})`,
    );
    this.checkAsync(`ncclBroadcast(${t})`);
  }

  barrier() {
    this.live("barrier");
    this.be.sync();
    this.checkAsync("barrier");
    this.star.barrier();
  }

  agree(value: string, what: string, check = true): string {
    return this.star.agree(value, what, check);
  }

  /** Waits for this rank's stream; if that or an enqueued operation failed, aborts the
   * communicator (and throws that error), else destroys it. */
  destroy() {
    if (this.comm === null) return;
    try {
      this.be.sync();
      this.checkAsync("destroy"); // aborts on an error of an operation in flight
    } catch (e) {
      this.abortComm((e as Error).message);
      throw e;
    }
    const comm = this.comm;
    this.comm = null;
    try {
      const rc = this.nccl.ncclCommDestroy(comm);
      if (rc !== NCCL.success) {
        const s = this.nccl.ncclGetErrorString(rc);
        throw new Error(
          `collective (rank ${this.rank}/${this.world}): ncclCommDestroy failed: ${
            s ? Deno.UnsafePointerView.getCString(s) : "unknown error"
          } [ncclResult_t ${rc}]`,
        );
      }
    } finally {
      this.star.close();
    }
  }
}
