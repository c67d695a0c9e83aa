// The TypeScript side of the kernel ABI: pick a backend, dlopen its library, own device memory.
//
//   const be = openBackend({ name: "emu" });           // or "cuda" | "cpu"; default: see below
//   const x = be.upload(new Float32Array(n), [n]);     // Tensor in device memory
//   be.k.mn_relu2_forward(y.ptr, x.ptr, BigInt(n), be.stream);  // throws on a non-zero return
//   const host = be.download(y) as Float32Array;
//
// Every function of cuda/kernels.h is in `be.k`, wrapped so that a non-zero return code throws an
// Error carrying the library's message. Shape-checked wrappers live in cuda/ops.ts.
import { kernelsHeaderSymbols } from "./abi.ts";
import { CallTrace, dryLibrary } from "./dry.ts";
import { findNvidiaLibrary } from "./libsearch.ts";

// dry: no kernel runs; every call is recorded (cuda/dry.ts), for bench/step_cost.ts
export type BackendName = "cuda" | "emu" | "cpu" | "dry";
export const BACKEND_NAMES: readonly BackendName[] = ["cuda", "emu", "cpu", "dry"];
export type Variant = "" | "tsan" | "asan";
export type Dtype = "f32" | "bf16" | "i32" | "u16";
export const DTYPE_BYTES: Record<Dtype, number> = { f32: 4, bf16: 2, i32: 4, u16: 2 };
export type HostArray = Float32Array | Uint16Array | Int32Array;

const BUILD_DIR = new URL("./build/", import.meta.url);
const PROFILE = Deno.env.get("MN_PROFILE") === "1";
// MN_PROFILE_JSON=path: with MN_PROFILE=1, close() also writes the per-call-shape table there (the
// calibration data of the step-cost model: time every entry point at the shapes a real step uses).
const PROFILE_JSON = Deno.env.get("MN_PROFILE_JSON") ?? "";
// MN_TRACE=path: record every ABI call (cuda/dry.ts) and write the trace at close(); the dry backend
// always records. MN_DRY_STOP_AT=label: a dry run writes its trace and exits at that mark.
const TRACE_PATH = Deno.env.get("MN_TRACE") ?? "";
const DRY_STOP_AT = Deno.env.get("MN_DRY_STOP_AT") ?? "";
// MN_PEAK_SITES=1: the tape's buffer pools record where each of their live buffers was taken (a
// stack walk per buffer: for dry runs, bench/step_cost.ts --peak); Backend.peakSites holds them as
// of the pools' last growth, and the trace carries them with the rest of the peak.
export const PEAK_SITES = Deno.env.get("MN_PEAK_SITES") === "1";

export function libraryPath(name: BackendName, variant: Variant = ""): string {
  const file = variant ? `libmn_${name}_${variant}.so` : `libmn_${name}.so`;
  return new URL(file, BUILD_DIR).pathname;
}

/** A device buffer with a shape. `ptr` is null only for zero-size tensors on no backend. */
export class Tensor {
  constructor(
    readonly ptr: Deno.PointerObject,
    readonly shape: readonly number[],
    readonly dtype: Dtype,
    readonly label = "",
  ) {}
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get nbytes(): number {
    return this.numel * DTYPE_BYTES[this.dtype];
  }
  /** numel as a bigint, the form i64 ABI parameters take on Deno's fast FFI path. */
  get n(): bigint {
    return BigInt(this.numel);
  }
  toString(): string {
    return `${this.label || "tensor"}[${this.shape.join(",")}]:${this.dtype}`;
  }
  /** The same memory viewed with another shape of equal element count. */
  view(shape: readonly number[], label = this.label): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== this.numel) {
      throw new Error(
        `view ${this}: shape [${shape.join(",")}] has ${n} elements, not ${this.numel}`,
      );
    }
    return new Tensor(this.ptr, shape, this.dtype, label);
  }
  /** A view of `count` rows starting at row `start` along the first dimension. */
  rows(start: number, count: number): Tensor {
    const rowElems = this.numel / this.shape[0];
    if (start < 0 || count < 0 || start + count > this.shape[0]) {
      throw new Error(`rows(${start}, ${count}) out of range for ${this}`);
    }
    const off = start * rowElems * DTYPE_BYTES[this.dtype];
    const p = Deno.UnsafePointer.offset(this.ptr, off) as Deno.PointerObject;
    return new Tensor(p, [count, ...this.shape.slice(1)], this.dtype, this.label);
  }
}

// deno-lint-ignore no-explicit-any
type Kernels = Record<string, (...args: any[]) => number>;

export interface OpenOptions {
  /** "cuda" | "emu" | "cpu"; default: $MN_BACKEND, else cuda when a GPU is visible, else cpu. */
  name?: string;
  /** sanitizer build of emu ("tsan" | "asan"); the process must preload the matching runtime. */
  variant?: Variant;
  /** device index (cuda), default $LOCAL_RANK or 0 */
  device?: number;
  /** an explicit library file instead of cuda/build/libmn_<name>.so */
  libPath?: string;
}

export class Backend {
  readonly k: Kernels;
  /** functions of kernels.h this library does not export (a stale or partial build) */
  readonly missing: string[] = [];
  readonly stream: Deno.PointerValue = null;
  bytesInUse = 0;
  peakBytes = 0;
  /** with MN_PEAK_SITES=1: the tape pools' buffers by allocation site when they last grew
   * (cuda/autograd.ts); peakSitesWithRest() adds the rest of the peak */
  peakSites: [string, number][] | null = null;
  /** the device this backend runs on (cuda), from OpenOptions.device or $LOCAL_RANK */
  currentDevice = 0;
  /** per-function call counts and host-side milliseconds, collected when MN_PROFILE=1 (on cuda
   * the launches are asynchronous: synchronize, or set CUDA_LAUNCH_BLOCKING=1, to attribute time) */
  readonly profile = new Map<string, { calls: number; ms: number }>();
  /** the same per call shape: key "fname(args...)", every argument in kernels.h order with pointers
   * and host buffers as "_" (bench/step_cost.ts --measured prices the same calls), and the fastest */
  readonly profileShapes = new Map<string, { calls: number; ms: number; minMs: number }>();
  /** every ABI call, when MN_TRACE is set or on the dry backend */
  readonly trace: CallTrace | null = null;
  private live = new Map<bigint, number>();

  private constructor(
    readonly name: BackendName,
    readonly libPath: string,
    private readonly lib: Deno.DynamicLibrary<Record<string, Deno.ForeignFunction>>,
  ) {
    const raw = lib.symbols as unknown as Kernels;
    const k: Kernels = {};
    const trace = TRACE_PATH || name === "dry" ? new CallTrace() : null;
    this.trace = trace;
    for (const [fname, fn] of Object.entries(raw)) {
      if (fn === null) {
        // Declared in kernels.h but not in this library: fail at the call, naming both.
        k[fname] = () => {
          throw new Error(
            `${fname}: not in ${libPath} (declared in cuda/kernels.h): rebuild with make -C cuda`,
          );
        };
        this.missing.push(fname);
        continue;
      }
      if (fname === "mn_last_error") {
        k[fname] = fn;
        continue;
      }
      k[fname] = (...args) => {
        trace?.call(fname, args);
        const rc = fn(...args);
        if (rc !== 0) throw new Error(`${fname} (${this.name}): ${this.lastError()} [code ${rc}]`);
        return rc;
      };
      if (PROFILE) {
        const inner = k[fname];
        k[fname] = (...args) => {
          const t0 = performance.now();
          const rc = inner(...args);
          const ms = performance.now() - t0;
          const e = this.profile.get(fname) ?? { calls: 0, ms: 0 };
          e.calls++;
          e.ms += ms;
          this.profile.set(fname, e);
          const key = `${fname}(${
            args.map((x) => typeof x === "bigint" || typeof x === "number" ? String(x) : "_")
              .join(",")
          })`;
          const s = this.profileShapes.get(key) ?? { calls: 0, ms: 0, minMs: Infinity };
          s.calls++;
          s.ms += ms;
          s.minMs = Math.min(s.minMs, ms);
          this.profileShapes.set(key, s);
          return rc;
        };
      }
    }
    this.k = k;
  }

  static open(opts: OpenOptions = {}): Backend {
    const name = resolveBackendName(opts.name);
    const variant = opts.variant ?? "";
    if (variant && name !== "emu") {
      throw new Error(`sanitizer variant "${variant}" exists only for emu`);
    }
    if (name === "dry") {
      const be = new Backend(name, "dry (records calls)", dryLibrary(libraryPath("cpu")));
      be.initDevice(0);
      return be;
    }
    const path = opts.libPath ?? libraryPath(name, variant);
    try {
      Deno.statSync(path);
    } catch {
      const target = variant ? "sanitizers" : name;
      throw new Error(
        `${path} not found: build the ${name} backend first (make -C cuda ${target} -j2, or ./test.sh)`,
      );
    }
    let lib;
    try {
      const syms = kernelsHeaderSymbols();
      for (const f of Object.values(syms)) (f as { optional?: boolean }).optional = true;
      lib = Deno.dlopen(path, syms);
    } catch (e) {
      throw new Error(`cannot load ${path}: ${(e as Error).message}`);
    }
    const be = new Backend(name, path, lib);
    if (name === "cuda") be.initCuda(opts.device ?? Number(Deno.env.get("LOCAL_RANK") ?? "0"));
    return be;
  }

  private initCuda(device: number) {
    const count = this.deviceCount();
    if (count === 0) throw new Error("backend cuda: no GPU visible (use --backend cpu or emu)");
    if (device >= count) {
      throw new Error(`backend cuda: device ${device} requested, ${count} visible`);
    }
    this.initDevice(device);
  }

  /** cuda and dry: the device, cuBLAS and a stream of our own (dry: fake ones, recorded) */
  private initDevice(device: number) {
    this.k.mn_set_device(device);
    this.currentDevice = device;
    const enc = (s: string | null) => (s ? new TextEncoder().encode(s + "\0") : null);
    const cublas = findNvidiaLibrary("libcublas.so", "MN_CUBLAS", "cublas");
    const cublasLt = findNvidiaLibrary("libcublasLt.so", "MN_CUBLASLT", "cublas");
    this.k.mn_gemm_init(enc(cublas), enc(cublasLt));
    const out = new BigUint64Array(1);
    this.k.mn_stream_create(out);
    (this as { stream: Deno.PointerValue }).stream = Deno.UnsafePointer.create(out[0]);
  }

  lastError(): string {
    const buf = new Uint8Array(512);
    this.lib.symbols.mn_last_error(buf, buf.length);
    return cString(buf);
  }

  deviceCount(): number {
    const out = new Int32Array(1);
    this.k.mn_device_count(out);
    return out[0];
  }

  deviceName(device = 0): string {
    const buf = new Uint8Array(300);
    this.k.mn_device_name(device, buf, buf.length);
    return cString(buf);
  }

  gemmProvider(): string {
    const buf = new Uint8Array(64);
    this.k.mn_gemm_provider(buf, buf.length);
    return cString(buf);
  }

  alloc(shape: readonly number[], dtype: Dtype = "f32", label = ""): Tensor {
    for (const d of shape) {
      if (!Number.isInteger(d) || d < 0) {
        throw new Error(`alloc ${label || "tensor"}: bad shape [${shape.join(",")}]`);
      }
    }
    const bytes = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES[dtype];
    const out = new BigUint64Array(1);
    this.k.mn_malloc(out, BigInt(bytes));
    const ptr = Deno.UnsafePointer.create(out[0]) as Deno.PointerObject;
    this.live.set(out[0], bytes);
    this.bytesInUse += bytes;
    this.peakBytes = Math.max(this.peakBytes, this.bytesInUse);
    return new Tensor(ptr, shape, dtype, label);
  }

  zeros(shape: readonly number[], dtype: Dtype = "f32", label = ""): Tensor {
    const t = this.alloc(shape, dtype, label);
    this.k.mn_memset(t.ptr, 0, BigInt(t.nbytes), this.stream);
    return t;
  }

  free(t: Tensor) {
    const addr = BigInt(Deno.UnsafePointer.value(t.ptr));
    const bytes = this.live.get(addr);
    if (bytes === undefined) {
      throw new Error(`free ${t}: not an allocation of this backend (a view?)`);
    }
    this.live.delete(addr);
    this.bytesInUse -= bytes;
    this.k.mn_free(t.ptr);
  }

  upload(data: HostArray, shape?: readonly number[], dtype?: Dtype, label = ""): Tensor {
    const dt = dtype ?? hostDtype(data);
    const t = this.alloc(shape ?? [data.length], dt, label);
    this.write(t, data);
    return t;
  }

  write(t: Tensor, data: HostArray) {
    if (data.byteLength !== t.nbytes) {
      throw new Error(`write ${t}: host data has ${data.byteLength} bytes, tensor has ${t.nbytes}`);
    }
    this.k.mn_memcpy_h2d(t.ptr, data, BigInt(t.nbytes), this.stream);
  }

  download(t: Tensor): HostArray {
    const out = t.dtype === "f32"
      ? new Float32Array(t.numel)
      : t.dtype === "i32"
      ? new Int32Array(t.numel)
      : new Uint16Array(t.numel);
    if (t.numel > 0) this.k.mn_memcpy_d2h(out, t.ptr, BigInt(t.nbytes), this.stream);
    return out;
  }

  /** Host Float32Array of an f32 or bf16 tensor. */
  downloadF32(t: Tensor): Float32Array {
    const h = this.download(t);
    if (t.dtype === "f32") return h as Float32Array;
    if (t.dtype === "bf16") return bf16ToF32(h as Uint16Array);
    throw new Error(`downloadF32 ${t}: dtype ${t.dtype} is not a float`);
  }

  sync() {
    this.k.mn_synchronize(this.stream);
  }

  /** The MN_PROFILE=1 table: functions by total time. */
  profileReport(): string {
    const rows = [...this.profile.entries()].sort((a, b) => b[1].ms - a[1].ms);
    const total = rows.reduce((s, [, e]) => s + e.ms, 0);
    return rows.map(([n, e]) =>
      `${n.padEnd(32)} ${String(e.calls).padStart(8)} calls ${e.ms.toFixed(1).padStart(10)} ms ${
        (100 * e.ms / total).toFixed(1).padStart(5)
      }%`
    ).join("\n");
  }

  /** The per-call-shape profile as JSON rows, slowest total first. */
  profileShapesJson(): string {
    const rows = [...this.profileShapes.entries()].sort((a, b) => b[1].ms - a[1].ms)
      .map(([call, e]) => ({ call, ...e }));
    return JSON.stringify({ backend: this.name, device: this.deviceLabel(), rows }, null, 1);
  }

  private deviceLabel(): string {
    return this.name === "cuda" ? this.deviceName(this.currentDevice) : this.name;
  }

  /**
   * A point in the program a trace should show (the trainers mark the start of each step as
   * "step N"): recorded with the bytes allocated now and the peak so far; nothing otherwise.
   */
  mark(label: string) {
    if (!this.trace) return;
    this.trace.mark(label, this.bytesInUse, this.peakBytes);
    if (this.name === "dry" && label === DRY_STOP_AT) {
      this.trace.write(
        TRACE_PATH || "dry_trace.json",
        this.name,
        this.peakBytes,
        this.peakSitesWithRest(),
      );
      Deno.exit(0);
    }
  }

  /** peakSites and what the rest of the peak was (allocated outside the tape's pools: parameters,
   * gradients, optimizer state, ...): they sum to peakBytes; null without MN_PEAK_SITES */
  peakSitesWithRest(): [string, number][] | null {
    if (!this.peakSites) return null;
    const pooled = this.peakSites.reduce((a, [, b]) => a + b, 0);
    const rest: [string, number] = [
      "(outside the tape: parameters, gradients, optimizer state, ...)",
      this.peakBytes - pooled,
    ];
    return [...this.peakSites, rest].sort((a, b) => b[1] - a[1]);
  }

  /** Frees everything still allocated and releases the stream (call before Deno.exit). */
  close() {
    if (this.trace && (TRACE_PATH || this.name === "dry")) {
      this.trace.write(
        TRACE_PATH || "dry_trace.json",
        this.name,
        this.peakBytes,
        this.peakSitesWithRest(),
      );
    }
    if (PROFILE_JSON && this.profileShapes.size) {
      Deno.writeTextFileSync(PROFILE_JSON + ".tmp", this.profileShapesJson());
      Deno.renameSync(PROFILE_JSON + ".tmp", PROFILE_JSON);
    }
    for (const [addr] of this.live) this.k.mn_free(Deno.UnsafePointer.create(addr));
    this.live.clear();
    this.bytesInUse = 0;
    if (this.stream) this.k.mn_stream_destroy(this.stream);
    this.k.mn_synchronize(null);
  }
}

export function openBackend(opts: OpenOptions = {}): Backend {
  return Backend.open(opts);
}

/** cuda when its library loads and sees a GPU; otherwise cpu. $MN_BACKEND overrides. */
export function resolveBackendName(name?: string): BackendName {
  const chosen = name ?? Deno.env.get("MN_BACKEND");
  if (chosen !== undefined && chosen !== "") {
    if (!(BACKEND_NAMES as readonly string[]).includes(chosen)) {
      throw new Error(`--backend ${chosen}: expected one of ${BACKEND_NAMES.join(", ")}`);
    }
    return chosen as BackendName;
  }
  return defaultBackend(gpuProbe());
}

/** The backend chosen when none is named: cuda with a GPU, cpu without one; a GPU check that
 * failed (a driver the CUDA runtime cannot use, ...) is an error, never a quiet cpu run. */
export function defaultBackend(probe: GpuProbe): BackendName {
  if (probe.error) {
    throw new Error(
      `the GPU check failed: ${probe.error} (fix it, or choose --backend cpu to run without a GPU)`,
    );
  }
  return probe.count > 0 ? "cuda" : "cpu";
}

/** What the cuda library says about the GPUs here: how many, or why it could not count them. */
export interface GpuProbe {
  count: number;
  /** "" when the count is known (0 included: no NVIDIA device node, driver or cuda build) */
  error: string;
}

/** Asks libmn_cuda.so's mn_device_count (see cuda/runtime_cuda.cu for which CUDA errors mean
 * "no GPU"). No device node or no cuda build here is 0 GPUs; a library that is there but does
 * not load, or a driver error, is reported. */
export function probeGpus(libPath = libraryPath("cuda"), deviceNode = "/dev/nvidiactl"): GpuProbe {
  for (const path of [deviceNode, libPath]) {
    try {
      Deno.statSync(path);
    } catch {
      return { count: 0, error: "" };
    }
  }
  let lib;
  try {
    lib = Deno.dlopen(libPath, {
      mn_device_count: { parameters: ["buffer"], result: "i32" },
      mn_last_error: { parameters: ["buffer", "i32"], result: "i32" },
    });
  } catch (e) {
    return { count: 0, error: `cannot load ${libPath}: ${(e as Error).message}` };
  }
  try {
    const out = new Int32Array(1);
    if (lib.symbols.mn_device_count(out) === 0) return { count: out[0], error: "" };
    const buf = new Uint8Array(512);
    lib.symbols.mn_last_error(buf, buf.length);
    return { count: 0, error: cString(buf) };
  } finally {
    lib.close();
  }
}

let gpuProbeCache: GpuProbe | undefined;
/** probeGpus() for this machine, once per process. */
export function gpuProbe(): GpuProbe {
  return gpuProbeCache ??= probeGpus();
}
export function gpuVisible(): boolean {
  return gpuProbe().count > 0;
}

export function hostDtype(a: HostArray): Dtype {
  if (a instanceof Float32Array) return "f32";
  if (a instanceof Int32Array) return "i32";
  return "bf16";
}

function cString(buf: Uint8Array): string {
  const end = buf.indexOf(0);
  return new TextDecoder().decode(end < 0 ? buf : buf.subarray(0, end));
}

// bf16 bit patterns <-> float32 on the host (round to nearest even), for tests and checkpoints.
export function bf16ToF32(h: Uint16Array): Float32Array {
  const u = new Uint32Array(h.length);
  for (let i = 0; i < h.length; i++) u[i] = h[i] << 16;
  return new Float32Array(u.buffer);
}

export function f32ToBf16(f: Float32Array): Uint16Array {
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const out = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) {
    const x = u[i];
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x40;
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}
