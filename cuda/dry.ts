// The `dry` backend and the call trace: run the real trainers at the record configuration without
// executing a kernel, and see every ABI call they make (bench/step_cost.ts turns that into time,
// bytes and launches with cuda/cost_model.ts).
//
// - `dryLibrary()` stands in for a libmn_*.so: every function of cuda/kernels.h returns 0 and does
//   nothing, except what the caller needs back to keep going: mn_malloc hands out fake, never
//   reused device addresses (so Backend's allocator count, and so peakBytes, is exact), names and
//   counts are answered, and the host-only size queries (mn_wkv6_chunked_sizes) are asked of the cpu
//   library. Downloads leave the host buffer as it is (zeros when fresh).
// - `CallTrace` records calls on any backend (MN_TRACE=file, or always on dry): the function and its
//   numeric arguments in kernels.h order (pointers as addresses, host buffers as -1), allocation
//   sizes, collectives, and marks the trainers place at the start of each step (Backend.mark).
//   `MN_DRY_STOP_AT=step N` ends a dry run (trace written, exit 0) when that mark is reached, so a
//   tool can take one steady-state step without the final validation and checkpoint.
import { type AbiFunction, kernelsHeaderFunctions } from "./abi.ts";

export type TraceEvent =
  | { c: number; a: number[] } // call: index into `functions`, numeric arguments
  | { mark: string; inUse: number; peak: number } // Backend.mark: bytes allocated now / peak so far
  | { coll: string; bytes: number; dtype: string }; // a collective on a tensor of that size

export interface TraceFile {
  backend: string;
  functions: string[];
  events: TraceEvent[];
  peakBytes: number;
  /** MN_PEAK_SITES=1: what was allocated at the peak, bytes by site (Backend.peakSites) */
  peakSites?: [string, number][];
}

export class CallTrace {
  readonly events: TraceEvent[] = [];
  readonly functions: string[];
  private readonly index = new Map<string, number>();
  private readonly numericPos: number[][];

  constructor(readonly abi: AbiFunction[] = kernelsHeaderFunctions()) {
    this.functions = abi.map((f) => f.name);
    abi.forEach((f, i) => this.index.set(f.name, i));
    this.numericPos = abi.map((f) => f.params.map((_, j) => j));
  }

  call(fn: string, args: unknown[]) {
    const c = this.index.get(fn);
    if (c === undefined) return;
    const a = this.numericPos[c].map((j) => numeric(args[j]));
    this.events.push({ c, a });
  }

  mark(label: string, inUse: number, peak: number) {
    this.events.push({ mark: label, inUse, peak });
  }

  collective(op: string, bytes: number, dtype: string) {
    this.events.push({ coll: op, bytes, dtype });
  }

  toJson(backend: string, peakBytes: number, peakSites: [string, number][] | null = null): string {
    const t: TraceFile = { backend, functions: this.functions, events: this.events, peakBytes };
    if (peakSites) t.peakSites = peakSites;
    return JSON.stringify(t);
  }

  write(path: string, backend: string, peakBytes: number, peakSites: [string, number][] | null) {
    Deno.writeTextFileSync(path + ".tmp", this.toJson(backend, peakBytes, peakSites));
    Deno.renameSync(path + ".tmp", path);
  }
}

function numeric(x: unknown): number {
  if (typeof x === "number") return x;
  if (typeof x === "bigint") return Number(x);
  if (x === null || x === undefined) return 0;
  if (typeof x === "object" && !ArrayBuffer.isView(x)) {
    return Number(Deno.UnsafePointer.value(x as Deno.PointerObject)); // a device pointer
  }
  return -1; // a host buffer
}

/** Arguments of a traced call by parameter name (kernels.h), for the cost model. */
export function namedArgs(fn: AbiFunction, a: number[]): Record<string, number> {
  const out: Record<string, number> = {};
  fn.params.forEach((p, j) => (out[p.name] = a[j]));
  return out;
}

const FAKE_BASE = 0x7e00_0000_0000n; // far from anything real; never dereferenced
const ALIGN = 512n;

/** A stand-in for Deno.dlopen's result: the same symbol names, nothing executed. */
export function dryLibrary(
  cpuLibPath: string,
): Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>> {
  const abi = kernelsHeaderFunctions();
  let next = FAKE_BASE;
  let streams = 0, events = 0;
  const pinned = new Map<bigint, Uint8Array>(); // kept alive until mn_host_free
  let cpu: Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>> | null = null;
  const writeString = (buf: Uint8Array, len: number, s: string) => {
    const b = new TextEncoder().encode(s);
    const n = Math.min(b.length, len - 1);
    buf.set(b.subarray(0, n));
    buf[n] = 0;
  };
  const special: Record<string, (...a: never[]) => number> = {
    mn_backend_name: (buf: Uint8Array, len: number) => (writeString(buf, len, "dry"), 0),
    mn_last_error: (buf: Uint8Array, len: number) => (writeString(buf, len, ""), 0),
    mn_device_count: (out: Int32Array) => ((out[0] = 8), 0),
    mn_device_name: (_d: number, buf: Uint8Array, len: number) => (
      writeString(buf, len, "dry run (no device)"), 0
    ),
    mn_gemm_provider: (buf: Uint8Array, len: number) => (writeString(buf, len, "dry"), 0),
    mn_malloc: (out: BigUint64Array, bytes: bigint) => {
      out[0] = next;
      next += ((BigInt(bytes) + ALIGN - 1n) / ALIGN) * ALIGN + ALIGN;
      return 0;
    },
    mn_stream_create: (out: BigUint64Array) => ((out[0] = 0x10n + BigInt(streams++)), 0),
    mn_event_create: (out: BigUint64Array) => ((out[0] = 0x1000n + BigInt(events++)), 0),
    mn_graph_end_capture: (_s: unknown, out: BigUint64Array) => ((out[0] = 0x2000n), 0),
    // pinned memory is real: the trainers write batches and step scalars into it
    mn_host_alloc: (out: BigUint64Array, bytes: bigint) => {
      const mem = new Uint8Array(Math.max(1, Number(bytes)));
      const p = Deno.UnsafePointer.of(mem);
      const addr = BigInt(Deno.UnsafePointer.value(p));
      pinned.set(addr, mem);
      out[0] = addr;
      return 0;
    },
    mn_host_free: (p: Deno.PointerValue) => (pinned.delete(BigInt(Deno.UnsafePointer.value(p))), 0),
    mn_mem_get_info: (free: BigInt64Array, total: BigInt64Array) => {
      free[0] = total[0] = 80n << 30n;
      return 0;
    },
  };
  // host-only queries whose answers the caller uses (sizes): asked of the cpu reference
  const delegated = abi.filter((f) =>
    !special[f.name] && f.name !== "mn_gemm_init" &&
    f.params.some((p) => p.type === "buffer") && !f.params.some((p) => p.type === "pointer")
  );
  const cpuSymbols = () => {
    if (!cpu) {
      try {
        cpu = Deno.dlopen(
          cpuLibPath,
          Object.fromEntries(delegated.map((f) => [
            f.name,
            { parameters: f.params.map((p) => p.type), result: "i32" },
          ])) as Record<string, Deno.ForeignFunction>,
        );
      } catch (e) {
        throw new Error(
          `backend dry: needs ${cpuLibPath} (make -C cuda cpu): ${(e as Error).message}`,
        );
      }
    }
    return cpu.symbols as unknown as Record<string, (...a: unknown[]) => number>;
  };
  const symbols: Record<string, unknown> = {};
  for (const f of abi) {
    if (special[f.name]) symbols[f.name] = special[f.name];
    else if (delegated.includes(f)) {
      symbols[f.name] = (...a: unknown[]) => cpuSymbols()[f.name](...a);
    } else symbols[f.name] = () => 0;
  }
  return { symbols, close() {} } as unknown as Deno.DynamicLibrary<
    Record<string, Deno.ForeignFunction>
  >;
}
