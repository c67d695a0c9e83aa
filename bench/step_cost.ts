// What one training step costs on a GPU, measured without one: each trainer runs unmodified on the
// dry backend (cuda/dry.ts: every ABI call recorded, nothing executed, exact allocator) as rank 0 of
// the 8-GPU record run, and every call of one steady-state step (from the mark "step 1" to "step 2")
// is priced by cuda/cost_model.ts (DRAM bytes, FLOPs, kernel launches with their grid sizes).
//
//   deno task cost                         every record config, H100 constants, the table below
//   deno run -A bench/step_cost.ts [--hw H100|H200|A800] [--only NAME] [--json FILE] [--top N]
//                                  [--calibrate]   (our measured H200 step times vs the model)
//                                  [--device_bsz B] (every config at that batch per GPU)
//                                  [--peak N]  (the N largest allocation sites at the peak)
//   deno run -A bench/step_cost.ts --measured PROFILE.json[.gz] [--hw H200]
//       per ABI function: time measured by MN_PROFILE=1 with blocking launches (MN_PROFILE_JSON,
//       written by bench/gpu_session.sh for a record-batch step) against this model's estimate of
//       the same calls: the calibration of the per-family factors
//
// Per launch: roofline = max(bytes / bandwidth, tensor FLOPs / bf16 peak, fp32 FLOPs / fp32 peak);
// "with launch shapes" charges a grid of fewer blocks than SMs by its real parallelism (the roofline
// divided by blocks / SMs), a block that walks a dependent chain by its length (serialSteps x one
// DRAM round trip), and every launch at least the device's minimum kernel time. The estimate of the
// step: between two host syncs the host's launches (launches x per-launch host cost) overlap the
// device's work and the longer of the two counts; each sync adds a drain. A launch
// of ours (not cuBLAS's) with fewer blocks than SMs that moves more than 4 MB is flagged as
// under-parallel.
import { parseArgs } from "node:util";
import { kernelsHeaderFunctions } from "../cuda/abi.ts";
import { namedArgs, type TraceFile } from "../cuda/dry.ts";
import { callLaunches, hostTransfer, type Launch } from "../cuda/cost_model.ts";
import { writeShard } from "../data/shard.ts";
import { GRAD_MEMSET_MARK } from "../cuda/autograd.ts";

const ROOT = new URL("../", import.meta.url).pathname;

export interface Hardware {
  name: string;
  bw: number; // DRAM bytes/s a large copy achieves
  tc: number; // bf16 dense tensor-core FLOP/s (achieved by a large GEMM)
  fp32: number; // CUDA-core FP32 FLOP/s
  sms: number;
  launchHostUs: number; // host time per kernel launch (driver + our FFI call)
  minKernelUs: number; // shortest time a launch occupies the device back to back
  roundTripUs: number; // one dependent DRAM round trip (a serial chain's step)
  busBw: number; // NCCL all-reduce bus bandwidth over 8 GPUs (nccl-tests' busbw), bytes/s
}

// H100 SXM: 3.35 TB/s and 132 SMs (datasheet); bf16 790 TFLOP/s as measured on the lent H200 kind
// (the same SMs and clocks); fp32 ~60 TFLOP/s (datasheet 67). H200: copy 4.3 TB/s measured here.
// A800 80 GB (the RWKV records' card): 2.0 TB/s, 108 SMs, ~280 TFLOP/s bf16 achieved, 19.5 fp32.
// busBw: an assumption, not a measurement here: NVLink 4 (450 GB/s a direction) reaches ~360 GB/s
// of all-reduce bus bandwidth on 8 GPUs in nccl-tests' terms; the A800's NVLink is capped at 400
// GB/s both ways (~150). An all-reduce of S bytes on n ranks then takes 2 (n - 1) / n * S / busBw.
export const HARDWARE: Record<string, Hardware> = {
  H100: {
    name: "H100 SXM",
    bw: 3.35e12,
    tc: 790e12,
    fp32: 60e12,
    sms: 132,
    launchHostUs: 4,
    minKernelUs: 2.5,
    roundTripUs: 0.7,
    busBw: 360e9,
  },
  H200: {
    name: "H200",
    bw: 4.3e12,
    tc: 790e12,
    fp32: 60e12,
    sms: 132,
    launchHostUs: 4,
    minKernelUs: 2.5,
    roundTripUs: 0.7,
    busBw: 360e9,
  },
  A800: {
    name: "A800 80GB",
    bw: 2.0e12,
    tc: 280e12,
    fp32: 19.5e12,
    sms: 108,
    launchHostUs: 4,
    minKernelUs: 3,
    roundTripUs: 0.8,
    busBw: 150e9,
  },
};

/** A trainer configuration to price. */
export interface RunSpec {
  name: string;
  script: string;
  flags: string[];
  deviceBsz: number;
  bsz: number;
  world: number;
}

const T = 1024;
// The record configs: bsz 512 x T 1024 over 8 GPUs; device_bsz as in the originals' record logs.
export const RECORD_RUNS: RunSpec[] = [
  {
    name: "rwkv7 --fast_cuda",
    script: "train_rwkv7.ts",
    flags: ["--fast_cuda"],
    deviceBsz: 32,
    bsz: 512,
    world: 8,
  },
  {
    name: "rwkv7 --wind_cuda",
    script: "train_rwkv7.ts",
    flags: ["--wind_cuda"],
    deviceBsz: 32,
    bsz: 512,
    world: 8,
  },
  { name: "rwkv7 (wkv7g)", script: "train_rwkv7.ts", flags: [], deviceBsz: 32, bsz: 512, world: 8 },
  { name: "gpt2", script: "train_gpt2.ts", flags: [], deviceBsz: 64, bsz: 512, world: 8 },
  {
    name: "gpt2 --unfused",
    script: "train_gpt2.ts",
    flags: ["--unfused"],
    deviceBsz: 64,
    bsz: 512,
    world: 8,
  },
  { name: "rwkv6", script: "train_rwkv6.ts", flags: [], deviceBsz: 32, bsz: 512, world: 8 },
  {
    name: "rwkv6 --fla_cuda",
    script: "train_rwkv6.ts",
    flags: ["--fla_cuda"],
    deviceBsz: 32,
    bsz: 512,
    world: 8,
  },
  {
    name: "rwkv6 --unfused",
    script: "train_rwkv6.ts",
    flags: ["--unfused"],
    deviceBsz: 32,
    bsz: 512,
    world: 8,
  },
];

// What was measured on a GPU (README "Measured on a GPU"): one micro-step of 32 x 1024 on one H200.
export const MEASURED: { spec: RunSpec; hw: string; ms: number; what: string }[] = [
  {
    spec: {
      name: "rwkv7 --fast_cuda B32",
      script: "train_rwkv7.ts",
      flags: ["--fast_cuda"],
      deviceBsz: 32,
      bsz: 32,
      world: 1,
    },
    hw: "H200",
    ms: 921.9,
    what: "step_avg, 2026-12-04, commit 45bf634",
  },
  {
    spec: {
      name: "gpt2 B32",
      script: "train_gpt2.ts",
      flags: [],
      deviceBsz: 32,
      bsz: 32,
      world: 1,
    },
    hw: "H200",
    ms: 489.9,
    what: "step_avg, 2026-12-04, commit 45bf634",
  },
];

/** Synthetic shards big enough for any config here (the Brown val shard is smaller than one
 * record batch of 8 ranks); the token values do not change which calls a step makes. */
export function syntheticShards(
  dir: string,
  trainTokens = 4_200_000,
  valTokens = 600_000,
  vocab = 50257,
) {
  Deno.mkdirSync(dir, { recursive: true });
  const make = (n: number) => {
    const t = new Uint16Array(n);
    for (let i = 0; i < n; i++) t[i] = (i * 7919) % vocab;
    return t;
  };
  const train = `${dir}/cost_train_v${vocab}_000001.bin`,
    val = `${dir}/cost_val_v${vocab}_000000.bin`;
  try {
    if (
      Deno.statSync(train).size === 1024 + 2 * trainTokens &&
      Deno.statSync(val).size === 1024 + 2 * valTokens
    ) {
      return { train, val };
    }
  } catch { /* make them */ }
  writeShard(train, make(trainTokens));
  writeShard(val, make(valTokens));
  return { train, val };
}

/** Runs one config on the dry backend (a subprocess, the trainer unmodified) and returns its trace. */
export function dryTrace(
  spec: RunSpec,
  shards: { train: string; val: string },
  tmp: string,
  peakSites = false,
): TraceFile {
  const trace = `${tmp}/${spec.name.replace(/[^\w]+/g, "_")}.trace.json`;
  const args = [
    "run",
    "-A",
    spec.script,
    "--backend",
    "dry",
    ...spec.flags,
    "--input_bin",
    shards.train,
    "--input_val_bin",
    shards.val,
    "--device_bsz",
    String(spec.deviceBsz),
    "--bsz",
    String(spec.bsz),
    "--val_tokens",
    String(spec.deviceBsz * T * spec.world),
    "--val_loss_every",
    "0",
    "--log_dir",
    `${tmp}/logs`,
  ];
  const out = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: {
      WORLD_SIZE: String(spec.world),
      RANK: "0",
      LOCAL_RANK: "0",
      MN_TRACE: trace,
      MN_DRY_STOP_AT: "step 2",
      ...(peakSites ? { MN_PEAK_SITES: "1" } : {}),
    },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (out.code !== 0) {
    throw new Error(
      `dry run of ${spec.name} failed (exit ${out.code}): ${
        text.trim().split("\n").slice(-3).join(" | ")
      }`,
    );
  }
  return JSON.parse(Deno.readTextFileSync(trace)) as TraceFile;
}

export interface CallRow {
  fn: string;
  launches: Launch[];
}

/** The calls between two marks of a trace (default: the steady-state step "step 1" .. "step 2"). */
export function stepCalls(t: TraceFile, from = "step 1", to = "step 2") {
  const abi = kernelsHeaderFunctions();
  const byName = new Map(abi.map((f) => [f.name, f]));
  let on = false, peak = 0, inUse = 0;
  const calls: { fn: string; a: Record<string, number> }[] = [];
  // at: how many calls came before it (where it sits in the host's sequence)
  const colls: { op: string; bytes: number; dtype: string; at: number }[] = [];
  let gradMemsets = 0;
  for (const e of t.events) {
    if ("mark" in e) {
      if (on && e.mark === GRAD_MEMSET_MARK) gradMemsets++;
      if (e.mark === from) on = true;
      else if (e.mark === to) {
        peak = e.peak;
        inUse = e.inUse;
        break;
      }
      continue;
    }
    if (!on) continue;
    if ("coll" in e) colls.push({ op: e.coll, bytes: e.bytes, dtype: e.dtype, at: calls.length });
    else {
      const fn = t.functions[e.c];
      calls.push({ fn, a: namedArgs(byName.get(fn)!, e.a) });
    }
  }
  if (!on) throw new Error(`trace has no mark "${from}"`);
  return { calls, colls, peak, inUse, gradMemsets };
}

export interface StepCost {
  name: string;
  hw: string;
  launches: number;
  hostSyncs: number;
  h2dBytes: number;
  d2hBytes: number;
  collectives: number;
  collectiveBytes: number;
  /** the gradient buckets' all-reduce time (busBw), and how much of it runs while the backward
   * still computes (the comm stream starts a bucket when it is final: cuda/step.ts) */
  gradCommMs: number;
  gradCommHiddenMs: number;
  dramBytes: number;
  rooflineMs: number;
  shapedMs: number;
  hostMs: number;
  estimateMs: number;
  tokensPerS: number;
  peakBytes: number;
  memsets: number;
  /** of those, memsets of activation gradients (the tape's fallback, cuda/autograd.ts) */
  gradMemsets: number;
  families: {
    fn: string;
    calls: number;
    launches: number;
    roofMs: number;
    shapedMs: number;
    bytes: number;
    flagged: number;
  }[];
  flagged: { fn: string; kernel: string; blocks: number; bytes: number; ms: number }[];
}

// a host sync's own cost: the device drains, the host wakes, the next launch reaches the device
const SYNC_MS = 0.02;

/** Prices one launch: [roofline ms, with-launch-shapes ms, under-parallel?]. */
export function priceLaunch(l: Launch, hw: Hardware): [number, number, boolean] {
  const bytes = l.bytesRead + l.bytesWritten;
  const roof = Math.max(bytes / hw.bw, l.tcFlops / hw.tc, l.fp32Flops / hw.fp32) * 1e3;
  const fill = Math.min(1, l.blocks / hw.sms);
  const serial = (l.serialSteps ?? 0) * hw.roundTripUs / 1e3;
  const shaped = Math.max(roof / Math.max(fill, 1e-9), serial, hw.minKernelUs / 1e3);
  // cuBLAS chooses its own grids (cost_model.ts models split-K); only our kernels are flagged
  return [roof, shaped, l.blocks < hw.sms && bytes > 4e6 && l.kernel !== "cublas_gemm"];
}

export function priceStep(spec: RunSpec, t: TraceFile, hw: Hardware): StepCost {
  const { calls, colls, peak, gradMemsets } = stepCalls(t);
  const fam = new Map<string, StepCost["families"][number]>();
  const flagged: StepCost["flagged"] = [];
  let launches = 0, syncs = 0, h2d = 0, d2h = 0, dram = 0, roof = 0, shaped = 0, memsets = 0;
  // Host syncs cut the step into segments: inside one the host's launches overlap the device's
  // work (the segment takes the longer of the two), at its end the host waits for the device.
  let segDevice = 0, segHost = 0, estimate = 0;
  const devAt: number[] = []; // device time (shaped) before call j
  for (const { fn, a } of calls) {
    devAt.push(shaped);
    if (fn === "mn_memset") memsets++;
    const f = fam.get(fn) ??
      { fn, calls: 0, launches: 0, roofMs: 0, shapedMs: 0, bytes: 0, flagged: 0 };
    f.calls++;
    for (const l of callLaunches(fn, a)) {
      const [r, s, under] = priceLaunch(l, hw);
      const b = l.bytesRead + l.bytesWritten;
      launches++;
      dram += b;
      roof += r;
      shaped += s;
      segDevice += s;
      segHost += hw.launchHostUs / 1e3;
      f.launches++;
      f.roofMs += r;
      f.shapedMs += s;
      f.bytes += b;
      if (under) {
        f.flagged++;
        flagged.push({ fn, kernel: l.kernel, blocks: l.blocks, bytes: b, ms: s });
      }
    }
    fam.set(fn, f);
    const ht = hostTransfer(fn, a);
    if (ht) {
      h2d += ht.h2d;
      d2h += ht.d2h;
      if (ht.sync) {
        syncs++;
        estimate += Math.max(segDevice, segHost) + SYNC_MS;
        segDevice = segHost = 0;
      }
    }
  }
  estimate += Math.max(segDevice, segHost);
  devAt.push(shaped);
  const comm = gradCommOverlap(spec.world, colls, calls, devAt, hw);
  const hostMs = launches * hw.launchHostUs / 1e3;
  const tokens = spec.bsz / spec.world * T;
  return {
    name: spec.name,
    hw: hw.name,
    launches,
    hostSyncs: syncs,
    h2dBytes: h2d,
    d2hBytes: d2h,
    collectives: colls.length,
    collectiveBytes: colls.reduce((s, c) => s + c.bytes, 0),
    gradCommMs: comm.total,
    gradCommHiddenMs: comm.hidden,
    dramBytes: dram,
    rooflineMs: roof,
    shapedMs: shaped,
    hostMs,
    estimateMs: estimate,
    tokensPerS: tokens / (estimate / 1e3),
    peakBytes: peak,
    memsets,
    gradMemsets,
    families: [...fam.values()].sort((x, y) => y.shapedMs - x.shapedMs),
    flagged: flagged.sort((x, y) => y.ms - x.ms),
  };
}

/**
 * The gradient buckets on the communication stream: bucket i (an f32 all-reduce; Muon's is bf16,
 * on the compute stream) may start once the compute stream has reached it (its event) and the
 * previous bucket is done; the compute stream waits for the last at the join (the first
 * mn_stream_wait_event after it). What ends after the join is exposed, the rest hidden.
 */
function gradCommOverlap(
  world: number,
  colls: { op: string; bytes: number; dtype: string; at: number }[],
  calls: { fn: string }[],
  devAt: number[],
  hw: Hardware,
): { total: number; hidden: number } {
  const buckets = colls.filter((c) => c.op === "all_reduce" && c.dtype === "f32");
  if (!buckets.length || world < 2) return { total: 0, hidden: 0 };
  let end = 0, total = 0;
  for (const b of buckets) {
    const t = 2 * (world - 1) / world * b.bytes / hw.busBw * 1e3;
    end = Math.max(end, devAt[b.at]) + t;
    total += t;
  }
  const last = buckets[buckets.length - 1].at;
  let join = calls.findIndex((c, j) => j >= last && c.fn === "mn_stream_wait_event");
  if (join < 0) join = last;
  const exposed = Math.max(0, end - devAt[join]);
  return { total, hidden: total - exposed };
}

const gb = (b: number) => (b / 1e9).toFixed(1);

/** A MN_PROFILE_JSON file (cuda/backend.ts), parsed back into calls with named arguments. */
export function readProfile(path: string) {
  let text: string;
  if (path.endsWith(".gz")) {
    const out = new Deno.Command("gzip", { args: ["-dc", path], stdout: "piped" }).outputSync();
    if (out.code !== 0) throw new Error(`${path}: gzip -dc failed`);
    text = new TextDecoder().decode(out.stdout);
  } else {
    try {
      text = Deno.readTextFileSync(path);
    } catch (e) {
      throw new Error(`${path}: cannot read the profile (${(e as Error).message})`);
    }
  }
  let p: { device: string; rows: { call: string; calls: number; ms: number; minMs: number }[] };
  try {
    p = JSON.parse(text);
  } catch (e) {
    throw new Error(
      `${path}: not a MN_PROFILE_JSON file (${(e as Error).message.replace(/\s+/g, " ")})`,
    );
  }
  if (!Array.isArray(p?.rows)) {
    throw new Error(`${path}: not a MN_PROFILE_JSON file (no "rows" list)`);
  }
  const abi = new Map(kernelsHeaderFunctions().map((f) => [f.name, f]));
  return {
    device: p.device,
    rows: p.rows.map((r) => {
      const m = /^(\w+)\((.*)\)$/.exec(r.call);
      if (!m || !abi.has(m[1])) throw new Error(`${path}: cannot read call "${r.call}"`);
      const vals = m[2] === "" ? [] : m[2].split(",").map((v) => (v === "_" ? 0 : Number(v)));
      return {
        fn: m[1],
        a: namedArgs(abi.get(m[1])!, vals),
        calls: r.calls,
        ms: r.ms,
        minMs: r.minMs,
      };
    }),
  };
}

/** Measured (fastest call x calls, and total) vs estimated ms per ABI function. */
export function measuredVsEstimated(path: string, hw: Hardware): string {
  const p = readProfile(path);
  const fam = new Map<
    string,
    { calls: number; minMs: number; totalMs: number; estMs: number; roofMs: number; bytes: number }
  >();
  for (const r of p.rows) {
    const f = fam.get(r.fn) ?? { calls: 0, minMs: 0, totalMs: 0, estMs: 0, roofMs: 0, bytes: 0 };
    f.calls += r.calls;
    f.minMs += r.minMs * r.calls;
    f.totalMs += r.ms;
    for (const l of callLaunches(r.fn, r.a)) {
      const [roof, shaped] = priceLaunch(l, hw);
      f.estMs += shaped * r.calls;
      f.roofMs += roof * r.calls;
      f.bytes += (l.bytesRead + l.bytesWritten) * r.calls;
    }
    fam.set(r.fn, f);
  }
  const rows = [...fam].filter(([, f]) => f.estMs > 0).sort((x, y) => y[1].minMs - x[1].minMs);
  const sum = (k: "minMs" | "estMs" | "roofMs") => rows.reduce((s, [, f]) => s + f[k], 0);
  const lines = rows.map(([fn, f]) =>
    `| ${fn} | ${f.calls} | ${f.minMs.toFixed(1)} | ${f.totalMs.toFixed(1)} | ${
      f.estMs.toFixed(1)
    } | ${f.roofMs.toFixed(1)} | ${(f.minMs / f.estMs).toFixed(2)} | ${
      (f.bytes / (f.minMs / 1e3) / 1e9).toFixed(0)
    } |`
  );
  return [
    `${path} (${p.device}) against the model with ${hw.name} constants; measured = fastest call of each shape x its calls (blocking launches: includes ~10 us of launch and FFI per call)`,
    "| function | calls | measured ms | measured total ms | estimated ms (shapes) | roofline ms | measured / estimated | achieved GB/s |",
    "|---|---|---|---|---|---|---|---|",
    ...lines,
    `| all | | ${sum("minMs").toFixed(0)} | | ${sum("estMs").toFixed(0)} | ${
      sum("roofMs").toFixed(0)
    } | ${(sum("minMs") / sum("estMs")).toFixed(2)} | |`,
  ].join("\n");
}

export function formatTable(rows: StepCost[]): string {
  const head =
    "| config | roofline ms | with launch shapes ms | host launch ms | est. ms/step | tokens/s | launches | host syncs | collectives (GB) | grad all-reduce ms (hidden) | DRAM GB | memsets (act. grads) | peak GB |";
  const sep = "|---|---|---|---|---|---|---|---|---|---|---|---|---|";
  const lines = rows.map((r) =>
    `| ${r.name} | ${r.rooflineMs.toFixed(0)} | ${r.shapedMs.toFixed(0)} | ${
      r.hostMs.toFixed(0)
    } | ${r.estimateMs.toFixed(0)} | ${
      r.tokensPerS.toFixed(0)
    } | ${r.launches} | ${r.hostSyncs} | ${r.collectives} (${gb(r.collectiveBytes)}) | ${
      r.gradCommMs.toFixed(1)
    } (${r.gradCommHiddenMs.toFixed(1)}) | ${gb(r.dramBytes)} | ${r.memsets} (${r.gradMemsets}) | ${
      gb(r.peakBytes)
    } |`
  );
  return [head, sep, ...lines].join("\n");
}

export function formatFamilies(r: StepCost, top: number): string {
  const lines = r.families.slice(0, top).map((f) =>
    `  ${f.fn.padEnd(30)} ${String(f.calls).padStart(6)} calls ${
      String(f.launches).padStart(6)
    } launches ${f.shapedMs.toFixed(1).padStart(8)} ms (roofline ${
      f.roofMs.toFixed(1).padStart(7)
    }) ${gb(f.bytes).padStart(7)} GB${f.flagged ? `  UNDER-PARALLEL x${f.flagged}` : ""}`
  );
  return `${r.name} on ${r.hw}: top ${top} ABI functions by estimated time\n${lines.join("\n")}`;
}

/** What is allocated at the peak (--peak N): the N largest allocation sites of the tape's buffers
 * (model file:line, label, dtype; buffers of one site summed over layers), then the rest. */
export function formatPeakSites(name: string, t: TraceFile, n: number): string {
  const sites = t.peakSites ?? [];
  const gb = (b: number) => (b / 1e9).toFixed(2).padStart(6);
  const shown = sites.slice(0, n), rest = sites.slice(n).reduce((a, [, b]) => a + b, 0);
  const lines = shown.map(([s, b]) => `  ${gb(b)} GB  ${s}`);
  if (rest) lines.push(`  ${gb(rest)} GB  (${sites.length - n} more sites)`);
  return `${name}: peak ${(t.peakBytes / 1e9).toFixed(1)} GB; allocated at the peak:\n${
    lines.join("\n")
  }`;
}

if (import.meta.main) {
  let parsed;
  try {
    parsed = parseArgs({
      args: Deno.args,
      options: {
        hw: { type: "string", default: "H100" },
        only: { type: "string" },
        json: { type: "string" },
        top: { type: "string", default: "8" },
        peak: { type: "string" },
        device_bsz: { type: "string" },
        calibrate: { type: "boolean", default: false },
        measured: { type: "string" },
        help: { type: "boolean", default: false },
      },
      strict: true,
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message.split("\n")[0]} (see --help)`);
    Deno.exit(2);
  }
  const { values } = parsed;
  if (values.help) {
    console.log(
      "deno run -A bench/step_cost.ts [--hw H100|H200|A800] [--only NAME] [--device_bsz B] [--peak N] [--json FILE] [--top N] [--calibrate] [--measured PROFILE.json]",
    );
    Deno.exit(0);
  }
  const hw = HARDWARE[values.hw!];
  if (!hw) {
    console.error(`error: --hw ${values.hw}: expected one of ${Object.keys(HARDWARE).join(", ")}`);
    Deno.exit(2);
  }
  const top = Number(values.top);
  if (!(Number.isInteger(top) && top > 0)) {
    console.error(`error: --top ${values.top}: expected a positive integer (families to list)`);
    Deno.exit(2);
  }
  const peakTop = values.peak === undefined ? 0 : Number(values.peak);
  if (values.peak !== undefined && !(Number.isInteger(peakTop) && peakTop > 0)) {
    console.error(`error: --peak ${values.peak}: expected a positive integer (sites to list)`);
    Deno.exit(2);
  }
  const deviceBsz = values.device_bsz === undefined ? 0 : Number(values.device_bsz);
  if (values.device_bsz !== undefined && !(Number.isInteger(deviceBsz) && deviceBsz > 0)) {
    console.error(`error: --device_bsz ${values.device_bsz}: expected a positive integer`);
    Deno.exit(2);
  }
  if (values.measured) {
    try {
      console.log(measuredVsEstimated(values.measured, hw));
    } catch (e) {
      console.error(`error: --measured ${(e as Error).message}`);
      Deno.exit(1);
    }
    Deno.exit(0);
  }
  const runs = RECORD_RUNS.filter((r) => !values.only || r.name.includes(values.only))
    .map((r) => deviceBsz ? { ...r, name: `${r.name} B${deviceBsz}`, deviceBsz } : r);
  if (!runs.length) {
    console.error(
      `error: --only ${values.only}: no config matches (${
        RECORD_RUNS.map((r) => r.name).join(", ")
      })`,
    );
    Deno.exit(2);
  }
  // the trainers accumulate bsz / (device_bsz * world) micro-steps: say so before a dry run fails
  const split = runs.find((r) => r.bsz % (r.deviceBsz * r.world) !== 0);
  if (split) {
    console.error(
      `error: --device_bsz ${split.deviceBsz}: expected a divisor of ${
        split.bsz / split.world
      } (the record bsz ${split.bsz} over ${split.world} GPUs)`,
    );
    Deno.exit(2);
  }
  const tmp = Deno.makeTempDirSync({ prefix: "step_cost_" });
  const shards = syntheticShards(`${tmp}/shards`);
  try {
    if (values.calibrate) {
      console.log(
        "| measured run | card | measured ms | estimate ms (roofline / with shapes / host) | ratio |",
      );
      console.log("|---|---|---|---|---|");
      for (const m of MEASURED) {
        const c = priceStep(m.spec, dryTrace(m.spec, shards, tmp), HARDWARE[m.hw]);
        console.log(
          `| ${m.spec.name} | ${m.hw} | ${m.ms} (${m.what}) | ${c.estimateMs.toFixed(0)} (${
            c.rooflineMs.toFixed(0)
          } / ${c.shapedMs.toFixed(0)} / ${c.hostMs.toFixed(0)}) | ${
            (m.ms / c.estimateMs).toFixed(2)
          } |`,
        );
      }
    } else {
      const rows: StepCost[] = [];
      const peaks: string[] = [];
      for (const spec of runs) {
        const t0 = performance.now();
        const trace = dryTrace(spec, shards, tmp, peakTop > 0);
        rows.push(priceStep(spec, trace, hw));
        if (peakTop) peaks.push(formatPeakSites(spec.name, trace, peakTop));
        console.error(
          `${spec.name}: dry run + pricing ${((performance.now() - t0) / 1e3).toFixed(1)} s`,
        );
      }
      console.log(
        `One step per GPU of the 8-GPU record run (bsz 512 x T 1024), ${hw.name} constants:\n`,
      );
      console.log(formatTable(rows));
      for (const r of rows) {
        console.log("\n" + formatFamilies(r, top));
        if (r.flagged.length) {
          const k = new Map<string, number>();
          for (const f of r.flagged) {
            k.set(
              `${f.fn}/${f.kernel} (${f.blocks} blocks)`,
              (k.get(`${f.fn}/${f.kernel} (${f.blocks} blocks)`) ?? 0) + 1,
            );
          }
          console.log(
            `  under-parallel launches: ${[...k].map(([n, c]) => `${n} x${c}`).join(", ")}`,
          );
        }
      }
      for (const p of peaks) console.log("\n" + p);
      if (values.json) Deno.writeTextFileSync(values.json, JSON.stringify(rows, null, 1));
    }
  } catch (e) {
    // a failed dry run or an unreadable trace: its message is the error line, no stack
    console.error(`error: ${(e as Error).message}`);
    Deno.exitCode = 1;
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
}
