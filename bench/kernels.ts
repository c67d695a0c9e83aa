// Times each kernel family on the cpu and emu backends (and cuda when a GPU is visible) and
// prints one table. Not a test: figures depend on the machine (see README for measured ones).
//   deno run -A bench/kernels.ts [--size small|model|record | --record] [--reps N]
//                                [--backends cpu,emu,cuda] [--hw H100|H200|A800]
// "small" shapes keep the emulator (one OS thread per CUDA thread) within seconds; "model" uses a
// 124M-config layer slice (B*T = 4096 rows, C = 768) and skips emu; "record" the GPT-2 record's
// micro-batch (64 x 1024 = 65,536 rows) for the memory-bound kernels only, and skips emu.
// Cases that declare the DRAM bytes one call must move (each tensor read or written once) get two
// more columns on cuda: their GB/s, and that of a device-to-device copy moving the same bytes.
// Every case also gets the step-cost model's estimate (cuda/cost_model.ts, the launches its calls
// make on the cuda build, priced "with launch shapes" on --hw, default H200 = the lent card kind)
// and, on cuda, measured / estimated: the per-family calibration of bench/step_cost.ts.
import { parseArgs } from "node:util";
import { Backend, type BackendName, gpuVisible, type Tensor } from "../cuda/backend.ts";
import { kernelsHeaderConstants, kernelsHeaderFunctions } from "../cuda/abi.ts";
import { namedArgs } from "../cuda/dry.ts";
import { callLaunches } from "../cuda/cost_model.ts";
import { HARDWARE, priceLaunch } from "./step_cost.ts";

let parsed;
try {
  parsed = parseArgs({
    args: Deno.args,
    options: {
      size: { type: "string", default: "small" },
      reps: { type: "string", default: "5" },
      backends: { type: "string" }, // default: cpu, emu (small shapes only), cuda (with a GPU)
      record: { type: "boolean", default: false }, // = --size record
      hw: { type: "string", default: "H200" },
    },
    strict: true,
  });
} catch (e) {
  console.error(`error: ${(e as Error).message.split("\n")[0]}`);
  Deno.exit(2);
}
const { values } = parsed;
const size = values.record
  ? "record"
  : values.size === "model" || values.size === "record"
  ? values.size
  : "small";
if (!["small", "model", "record"].includes(values.size!)) {
  console.error(`error: --size: '${values.size}' is not one of small, model, record`);
  Deno.exit(2);
}
const hw = HARDWARE[values.hw!];
if (!hw) {
  console.error(`error: --hw: '${values.hw}' is not one of ${Object.keys(HARDWARE).join(", ")}`);
  Deno.exit(2);
}
const reps = Number(values.reps);
if (!(Number.isInteger(reps) && reps > 0)) {
  console.error(`error: --reps: '${values.reps}' is not a positive integer`);
  Deno.exit(2);
}
const OP = kernelsHeaderConstants();

const S = size === "record"
  ? { N: 65536, C: 768, V: 50304, B: 64, T: 1024, H: 12, D: 64, logitRows: 8192, Bwkv: 32 }
  : size === "model"
  ? { N: 4096, C: 768, V: 50304, B: 4, T: 1024, H: 12, D: 64, logitRows: 1024, Bwkv: 32 }
  : { N: 256, C: 128, V: 2048, B: 1, T: 64, H: 2, D: 64, logitRows: 64, Bwkv: 1 };

interface Case {
  name: string;
  run: (be: Backend, t: (shape: number[], dtype?: "f32" | "bf16" | "i32") => Tensor) => () => void;
  /** DRAM bytes one call must move at least (every tensor read or written once) */
  bytes?: number;
}

const F = 4; // bytes per fp32
const NC = S.N * S.C;
/** ids in [0, V) drawn as GPT-2 text would repeat them: a few very frequent, a long tail */
function zipfIds(n: number, V: number): Int32Array {
  const ids = new Int32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const u = (s >>> 8) / 16777216; // [0, 1)
    ids[i] = Math.min(V - 1, Math.floor(Math.exp(u * Math.log(V)) - 1)); // ~1/rank
  }
  return ids;
}

// The kernels issue #14 moved to full-grid reductions (and the embedding sort, the one-pass
// cross-entropy statistics), at `S`'s rows with their ideal traffic.
const reductionCases: Case[] = [
  {
    name: `add_row_vector bwd dx+dv ${S.N}x${S.C}`,
    bytes: 3 * NC * F, // dout; dx read and written
    run: (be, t) => {
      const [dx, dv, dout] = [t([S.N, S.C]), t([S.C]), t([S.N, S.C])];
      return () =>
        be.k.mn_add_row_vector_backward(dx.ptr, dv.ptr, dout.ptr, S.N, S.C, -1, be.stream);
    },
  },
  {
    name: `mul_row_vector bwd dx+dv ${S.N}x${S.C}`,
    bytes: 4 * NC * F, // dout, x; dx read and written
    run: (be, t) => {
      const [dx, dv, dout, x, v] = [
        t([S.N, S.C]),
        t([S.C]),
        t([S.N, S.C]),
        t([S.N, S.C]),
        t([S.C]),
      ];
      return () =>
        be.k.mn_mul_row_vector_backward(
          dx.ptr,
          dv.ptr,
          dout.ptr,
          x.ptr,
          v.ptr,
          S.N,
          S.C,
          -1,
          be.stream,
        );
    },
  },
  {
    name: `axpby bwd dx,dy,da,db ${NC}`,
    bytes: 7 * NC * F, // dout, x, y; dx and dy read and written
    run: (be, t) => {
      const [dx, dy, dout, x, y] = Array.from({ length: 5 }, () => t([NC]));
      const [a, b, da, db] = Array.from({ length: 4 }, () => t([1]));
      const n = BigInt(NC);
      return () =>
        be.k.mn_axpby_backward(
          dx.ptr,
          dy.ptr,
          da.ptr,
          db.ptr,
          dout.ptr,
          x.ptr,
          y.ptr,
          a.ptr,
          b.ptr,
          n,
          -1,
          be.stream,
        );
    },
  },
  {
    name: `sum_squares ${NC}`,
    bytes: NC * F,
    run: (be, t) => {
      const [x, out] = [t([NC]), t([1])];
      return () => be.k.mn_sum_squares(out.ptr, x.ptr, BigInt(NC), be.stream);
    },
  },
  {
    name: `layernorm bwd ${S.N}x${S.C}`,
    bytes: 4 * NC * F, // dout, inp; dinp read and written (the params pass re-reads dout, inp)
    run: (be, t) => {
      const [dx, dout, x] = [t([S.N, S.C]), t([S.N, S.C]), t([S.N, S.C])];
      const [dw, db, w] = [t([S.C]), t([S.C]), t([S.C])];
      const [m, r] = [t([S.N]), t([S.N])];
      return () =>
        be.k.mn_layernorm_backward(
          dx.ptr,
          dw.ptr,
          db.ptr,
          dout.ptr,
          x.ptr,
          w.ptr,
          m.ptr,
          r.ptr,
          S.N,
          S.C,
          -1,
          be.stream,
        );
    },
  },
  {
    name: `groupnorm bwd ${S.N}x${S.H}x${S.D}`,
    bytes: 4 * NC * F,
    run: (be, t) => {
      const [dx, dout, x] = [t([S.N, S.C]), t([S.N, S.C]), t([S.N, S.C])];
      const [dw, db, w] = [t([S.C]), t([S.C]), t([S.C])];
      const [m, r] = [t([S.N, S.H]), t([S.N, S.H])];
      return () =>
        be.k.mn_groupnorm_backward(
          dx.ptr,
          dw.ptr,
          db.ptr,
          dout.ptr,
          x.ptr,
          w.ptr,
          m.ptr,
          r.ptr,
          S.N,
          S.H,
          S.D,
          -1,
          be.stream,
        );
    },
  },
  {
    name: `rwkv7_bonus bwd ${S.N}x${S.H}x${S.D}`,
    bytes: 10 * NC * F, // dout, r, k, v; dr, dk, dv read and written
    run: (be, t) => {
      const g = Array.from({ length: 9 }, () => t([S.N, S.C]).ptr); // dr dk dv dout r k v + 2 spare
      const [du, u] = [t([S.C]), t([S.C])];
      return () =>
        be.k.mn_rwkv7_bonus_backward(
          g[0],
          g[1],
          g[2],
          du.ptr,
          g[3],
          g[4],
          g[5],
          g[6],
          u.ptr,
          S.N,
          S.H,
          S.D,
          -1,
          be.stream,
        );
    },
  },
  {
    name: `embedding bwd ${S.N}x${S.C} V${S.V} (Zipf ids)`,
    bytes: NC * F, // dout (plus the rows of dwte it touches)
    run: (be, t) => {
      const [dwte, dout] = [t([S.V, S.C]), t([S.N, S.C])];
      const idx = t([S.N], "i32");
      be.write(idx, zipfIds(S.N, S.V));
      return () =>
        be.k.mn_embedding_backward(dwte.ptr, idx.ptr, dout.ptr, S.N, S.C, S.V, -1, be.stream);
    },
  },
];

const crossEntropyCase: Case = {
  name: `softcap cross-entropy ${S.logitRows}x${S.V}`,
  bytes: 3 * S.logitRows * S.V * F, // logits read twice (statistics, gradient), dlogits written
  run: (be, t) => {
    const lg = t([S.logitRows, S.V]), loss = t([S.logitRows]), tg = t([S.logitRows], "i32");
    return () =>
      be.k.mn_softcap_crossentropy(
        loss.ptr,
        lg.ptr,
        lg.ptr,
        tg.ptr,
        S.logitRows,
        S.V,
        30,
        1,
        be.stream,
      );
  },
};
const cases: Case[] = size === "record" ? [] : [
  {
    name: `gemm_bf16 ${S.N}x${S.C}x${4 * S.C}`,
    run: (be, t) => {
      const a = t([S.N, S.C], "bf16"), b = t([4 * S.C, S.C], "bf16"), c = t([S.N, 4 * S.C]);
      return () =>
        be.k.mn_gemm_bf16(
          0,
          1,
          S.N,
          4 * S.C,
          S.C,
          1,
          a.ptr,
          S.C,
          0n,
          b.ptr,
          S.C,
          0n,
          0,
          c.ptr,
          4 * S.C,
          0n,
          0,
          1,
          be.stream,
        );
    },
  },
  {
    name: `layernorm fwd+bwd ${S.N}x${S.C}`,
    run: (be, t) => {
      const x = t([S.N, S.C]),
        y = t([S.N, S.C]),
        w = t([S.C]),
        b = t([S.C]),
        m = t([S.N]),
        r = t([S.N]);
      const dx = t([S.N, S.C]), dw = t([S.C]), db = t([S.C]);
      return () => {
        be.k.mn_layernorm_forward(
          y.ptr,
          m.ptr,
          r.ptr,
          x.ptr,
          w.ptr,
          b.ptr,
          S.N,
          S.C,
          1e-5,
          be.stream,
        );
        be.k.mn_layernorm_backward(
          dx.ptr,
          dw.ptr,
          db.ptr,
          y.ptr,
          x.ptr,
          w.ptr,
          m.ptr,
          r.ptr,
          S.N,
          S.C,
          -1,
          be.stream,
        );
      };
    },
  },
  {
    name: `unary tanh fwd+bwd ${S.N * S.C}`,
    run: (be, t) => {
      const x = t([S.N * S.C]), y = t([S.N * S.C]), dx = t([S.N * S.C]);
      const n = BigInt(S.N * S.C);
      return () => {
        be.k.mn_unary_forward(y.ptr, x.ptr, OP.MN_OP_TANH, n, be.stream);
        be.k.mn_unary_backward(dx.ptr, y.ptr, x.ptr, y.ptr, OP.MN_OP_TANH, n, -1, be.stream);
      };
    },
  },
  crossEntropyCase,
  // the three WKV-7 structures at the record's per-GPU batch (device_bsz 32 x T 1024, 12 heads of 64)
  ...(["wkv7g (default)", "backstepping (--fast_cuda)", "wind (--wind_cuda)"] as const).map(
    (kind): Case => ({
      name: `wkv7 ${kind} fwd+bwd B${S.Bwkv} T${S.T} H${S.H} N${S.D}`,
      run: (be, t) => {
        const B = S.Bwkv, shp = [B, S.T, S.H, S.D];
        const ins = Array.from({ length: 6 }, () => t(shp, "bf16").ptr); // r, w, k, v, a, b
        const y = t(shp), sa = t(shp), s = t([B, S.H, S.T / 16, S.D, S.D]);
        const g = Array.from({ length: 6 }, () => t(shp).ptr);
        const dims = [B, S.T, S.H, S.D] as const;
        if (kind.startsWith("wkv7g")) {
          const ws = t([B, S.H, 17, S.D, S.D]);
          return () => {
            be.k.mn_wkv7g_forward(y.ptr, s.ptr, ...ins, ...dims, be.stream);
            // accumulate 0: the tape's first write of each gradient
            be.k.mn_wkv7g_backward(...g, y.ptr, ...ins, s.ptr, ws.ptr, ...dims, 0, be.stream);
          };
        }
        const [fwd, bwd] = kind.startsWith("wind")
          ? [be.k.mn_wkv7_wind_forward, be.k.mn_wkv7_wind_backward]
          : [be.k.mn_wkv7_forward, be.k.mn_wkv7_backward];
        return () => {
          fwd(y.ptr, s.ptr, sa.ptr, ...ins, ...dims, be.stream);
          // y doubles as dy: any finite values; accumulate 0: the tape's first write of each grad
          bwd(...g, y.ptr, ...ins, s.ptr, sa.ptr, ...dims, 0, 0, 0, be.stream);
        };
      },
    }),
  ),
  {
    name: `wkv6 chunked (--fla_cuda) fwd+bwd B${S.B} T${S.T} H${S.H} N${S.D}`,
    run: (be, t) => {
      const shp = [S.B, S.T, S.H, S.D];
      const [r, k, v, w] = Array.from({ length: 4 }, () => t(shp, "bf16"));
      const u = t([S.H, S.D]), y = t(shp), du = t([S.H, S.D]);
      const n = new BigInt64Array(2); // [s_ckpt elements, ws elements]
      be.k.mn_wkv6_chunked_sizes(n.subarray(0, 1), n.subarray(1, 2), S.B, S.T, S.H, S.D);
      const sCkpt = t([Number(n[0])]), ws = t([Number(n[1])]);
      const g = Array.from({ length: 4 }, () => t(shp));
      return () => {
        const ins = [r.ptr, k.ptr, v.ptr, w.ptr, u.ptr] as const;
        be.k.mn_wkv6_chunked_forward(y.ptr, sCkpt.ptr, ...ins, S.B, S.T, S.H, S.D, be.stream);
        be.k.mn_wkv6_chunked_backward(
          ...g.map((x) => x.ptr),
          du.ptr,
          y.ptr,
          ...ins,
          sCkpt.ptr,
          ws.ptr,
          S.B,
          S.T,
          S.H,
          S.D,
          -1,
          be.stream,
        );
      };
    },
  },
  // causal attention fwd+bwd: CUDA cores (the yardstick) next to tensor cores, same shapes; the
  // model size adds B = 1 (a quarter of the work: how the grid fills the GPU)
  ...(size === "model" ? [1, S.B] : [S.B]).flatMap((B) =>
    (["cuda-core", "tensor-core"] as const).map((impl): Case => ({
      name: `attention ${impl} fwd+bwd B${B} T${S.T} H${S.H} D${S.D}`,
      run: (be, t) => {
        const shp = [B, S.T, S.H, S.D];
        const [q, k, v] = [t(shp, "bf16"), t(shp, "bf16"), t(shp, "bf16")];
        const out = t(shp), dout = t(shp), lse = t([B, S.H, S.T]), ws = t([B, S.H, S.T]);
        const [dq, dk, dv] = [t(shp), t(shp), t(shp)];
        const tc = impl === "tensor-core";
        const fwd = tc ? be.k.mn_attention_tc_forward : be.k.mn_attention_forward;
        const bwd = tc ? be.k.mn_attention_tc_backward : be.k.mn_attention_backward;
        return () => {
          fwd(out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, B, S.T, S.H, S.D, be.stream);
          bwd(
            dq.ptr,
            dk.ptr,
            dv.ptr,
            dout.ptr,
            out.ptr,
            lse.ptr,
            q.ptr,
            k.ptr,
            v.ptr,
            ws.ptr,
            B,
            S.T,
            S.H,
            S.D,
            0, // the tape's first write of each gradient: overwrite
            be.stream,
          );
        };
      },
    }))
  ),
  {
    name: `adam ${S.N * S.C}`,
    run: (be, t) => {
      const p = t([S.N * S.C]), g = t([S.N * S.C]), m = t([S.N * S.C]), v = t([S.N * S.C]);
      return () =>
        be.k.mn_adam_step(
          p.ptr,
          g.ptr,
          m.ptr,
          v.ptr,
          BigInt(S.N * S.C),
          1e-3,
          0.9,
          0.95,
          1e-8,
          0,
          1,
          be.stream,
        );
    },
  },
];
cases.push(...reductionCases);

// Issue #14's other half: backward kernels as the tape now calls them on a gradient's first write,
// overwriting it (accumulate 0: the gradient is written, never read), at `S`'s rows.
const act = () => [S.N, S.C];
const overwriteCases: Case[] = [
  {
    name: `mul bwd dx+dy overwrite ${S.N}x${S.C}`,
    bytes: 5 * NC * F, // dout, x, y; dx, dy written
    run: (be, t) => {
      const [dx, dy, dout, x, y] = Array.from({ length: 5 }, () => t(act()).ptr);
      return () => be.k.mn_mul_backward(dx, dy, dout, x, y, BigInt(NC), 0, be.stream);
    },
  },
  {
    name: `unary bwd (tanh) overwrite ${S.N}x${S.C}`,
    bytes: 4 * NC * F, // dout, x, out; dx written
    run: (be, t) => {
      const [dx, dout, x, y] = Array.from({ length: 4 }, () => t(act()).ptr);
      return () => be.k.mn_unary_backward(dx, dout, x, y, OP.MN_OP_TANH, BigInt(NC), 0, be.stream);
    },
  },
  {
    name: `lerp bwd dx+dy+dg overwrite ${S.N}x${S.C}`,
    bytes: 7 * NC * F, // dout, x, y, g; dx, dy, dg written
    run: (be, t) => {
      const p = Array.from({ length: 7 }, () => t(act()).ptr);
      return () =>
        be.k.mn_lerp_backward(p[0], p[1], p[2], p[3], p[4], p[5], p[6], BigInt(NC), 0, be.stream);
    },
  },
  {
    name: `relu2 bwd overwrite ${S.N}x${4 * S.C}`,
    bytes: 3 * 4 * NC * F, // dout, x; dx written
    run: (be, t) => {
      const [dx, dout, x] = Array.from({ length: 3 }, () => t([S.N, 4 * S.C]).ptr);
      return () => be.k.mn_relu2_backward(dx, dout, x, BigInt(4 * NC), 0, be.stream);
    },
  },
  {
    name: `rmsnorm bwd overwrite ${S.N}x${S.C}`,
    bytes: 3 * NC * F, // dout, x; dx written
    run: (be, t) => {
      const [dx, dout, x] = Array.from({ length: 3 }, () => t(act()).ptr);
      const r = t([S.N]);
      return () => be.k.mn_rmsnorm_backward(dx, dout, x, r.ptr, S.N, S.C, 0, be.stream);
    },
  },
  {
    name: `time_shift bwd overwrite ${S.N}x${S.C}`,
    bytes: 2 * NC * F, // dout; dx written (the last step's as zeros)
    run: (be, t) => {
      const [dx, dout] = [t(act()).ptr, t(act()).ptr];
      const B = S.N / S.T;
      return () => be.k.mn_time_shift_backward(dx, dout, B, S.T, S.C, 0, be.stream);
    },
  },
  {
    name: `l2norm bwd overwrite ${S.N * S.H}x${S.D}`,
    bytes: 3 * NC * F, // dout, x; dx written
    run: (be, t) => {
      const [dx, dout, x] = Array.from({ length: 3 }, () => t(act()).ptr);
      return () => be.k.mn_l2norm_backward(dx, dout, x, S.N * S.H, S.D, 1e-12, 0, be.stream);
    },
  },
  {
    name: `add_row_vector bwd dx+dv overwrite ${S.N}x${S.C}`,
    bytes: 2 * NC * F, // dout; dx written
    run: (be, t) => {
      const [dx, dv, dout] = [t(act()), t([S.C]), t(act())];
      return () =>
        be.k.mn_add_row_vector_backward(dx.ptr, dv.ptr, dout.ptr, S.N, S.C, 0, be.stream);
    },
  },
];
if (size === "record") cases.push(...overwriteCases);
if (size === "record") cases.push(crossEntropyCase);

const backends: BackendName[] = ["cpu"];
if (size === "small") backends.push("emu");
if (size === "record") backends.splice(0, 1); // cpu at 65,536 rows: minutes, and no use
if (gpuVisible()) backends.push("cuda");
if (values.backends !== undefined) {
  const want = values.backends.split(",");
  for (const b of want) {
    if (!["cpu", "emu", "cuda"].includes(b)) {
      console.error(`error: --backends: '${b}' is not one of cpu, emu, cuda`);
      Deno.exit(2);
    }
  }
  backends.splice(0, backends.length, ...(want as BackendName[]));
}

// The model's estimate of one call of each case: the case runs once on the dry backend (nothing
// executes, every ABI call is recorded with its arguments) and each call's launches are priced.
const abiByName = new Map(kernelsHeaderFunctions().map((f) => [f.name, f]));
const dry = Backend.open({ name: "dry" }); // not closed: closing a dry backend writes its trace
function estimateMs(c: Case): number {
  const made: Tensor[] = [];
  const fn = c.run(dry, (shape, dtype = "f32") => {
    const x = dry.zeros(shape, dtype);
    made.push(x);
    return x;
  });
  const trace = dry.trace!;
  const from = trace.events.length;
  fn();
  let ms = 0;
  for (const e of trace.events.slice(from)) {
    if (!("c" in e)) continue;
    const f = trace.functions[e.c];
    for (const l of callLaunches(f, namedArgs(abiByName.get(f)!, e.a))) ms += priceLaunch(l, hw)[1];
  }
  for (const x of made) dry.free(x);
  return ms;
}
const estimates = new Map(cases.map((c) => [c.name, estimateMs(c)]));

const rows: string[][] = [];
for (const name of backends) {
  const be = Backend.open({ name });
  for (const c of cases) {
    const made: Tensor[] = [];
    // zero-filled inputs: finite values everywhere (w = 0 gives decay exp(-1), a valid input)
    const fn = c.run(be, (shape, dtype = "f32") => {
      const x = be.zeros(shape, dtype);
      made.push(x);
      return x;
    });
    fn();
    be.sync();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    be.sync();
    const ms = (performance.now() - t0) / reps;
    let rates = ["", ""];
    if (c.bytes && name === "cuda") {
      // a copy reads and writes half the bytes each
      const half = Math.floor(c.bytes / 2 / F) * F;
      const [src, dst] = [be.zeros([half / F]), be.zeros([half / F])];
      be.k.mn_memcpy_d2d(dst.ptr, src.ptr, BigInt(half), be.stream);
      be.sync();
      const c0 = performance.now();
      for (let i = 0; i < reps; i++) be.k.mn_memcpy_d2d(dst.ptr, src.ptr, BigInt(half), be.stream);
      be.sync();
      const copyMs = (performance.now() - c0) / reps;
      rates = [(c.bytes / ms / 1e6).toFixed(0), (2 * half / copyMs / 1e6).toFixed(0)];
      be.free(src);
      be.free(dst);
    }
    const est = estimates.get(c.name)!;
    rows.push([name, c.name, ms.toFixed(3), ...rates, est.toFixed(3), (ms / est).toFixed(2)]);
    for (const x of made) be.free(x);
  }
  be.close();
}
const w0 = Math.max(...rows.map((r) => r[1].length));
console.log(`kernel timings (${size} shapes, ${reps} reps, ms per call; est: ${hw.name} model)`);
console.log(
  `${"backend".padEnd(8)} ${"kernel".padEnd(w0)} ${"ms".padStart(10)}  GB/s  copy GB/s` +
    `     est ms  measured/est`,
);
for (const [b, n, ms, gbs, copy, est, ratio] of rows) {
  // the ratio says something only where the model describes the machine that ran it: cuda
  const r = b === "cuda" ? ratio : "";
  console.log(
    `${b.padEnd(8)} ${n.padEnd(w0)} ${ms.padStart(10)} ${gbs.padStart(5)} ${copy.padStart(10)}` +
      ` ${est.padStart(10)} ${r.padStart(13)}`,
  );
}
