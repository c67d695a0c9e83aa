// Times each kernel family on the cpu and emu backends (and cuda when a GPU is visible) and
// prints one table. Not a test: figures depend on the machine (see README for measured ones).
//   deno run -A bench/kernels.ts [--size small|model] [--reps N] [--backends cpu,emu,cuda]
// "small" shapes keep the emulator (one OS thread per CUDA thread) within seconds; "model" uses a
// 124M-config layer slice (B*T = 4096 rows, C = 768) and skips emu.
import { parseArgs } from "node:util";
import { Backend, type BackendName, gpuVisible, type Tensor } from "../cuda/backend.ts";
import { kernelsHeaderConstants } from "../cuda/abi.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    size: { type: "string", default: "small" },
    reps: { type: "string", default: "5" },
    backends: { type: "string" }, // default: cpu, emu (small shapes only), cuda (with a GPU)
  },
  strict: true,
});
const size = values.size === "model" ? "model" : "small";
const reps = Number(values.reps);
const OP = kernelsHeaderConstants();

const S = size === "model"
  ? { N: 4096, C: 768, V: 50304, B: 4, T: 1024, H: 12, D: 64, logitRows: 1024, Bwkv: 32 }
  : { N: 256, C: 128, V: 2048, B: 1, T: 64, H: 2, D: 64, logitRows: 64, Bwkv: 1 };

interface Case {
  name: string;
  run: (be: Backend, t: (shape: number[], dtype?: "f32" | "bf16" | "i32") => Tensor) => () => void;
}

const cases: Case[] = [
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
        be.k.mn_unary_backward(dx.ptr, y.ptr, x.ptr, y.ptr, OP.MN_OP_TANH, n, be.stream);
      };
    },
  },
  {
    name: `softcap cross-entropy ${S.logitRows}x${S.V}`,
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
  },
  // the three WKV-7 structures at the record's per-GPU batch (device_bsz 32 x T 1024, 12 heads of 64)
  ...(["wkv7g (default)", "backstepping (--fast_cuda)", "wind (--wind_cuda)"] as const).map(
    (kind): Case => ({
      name: `wkv7 ${kind} fwd+bwd B${S.Bwkv} T${S.T} H${S.H} N${S.D}`,
      run: (be, t) => {
        const B = S.Bwkv, shp = [B, S.T, S.H, S.D];
        const ins = Array.from({ length: 6 }, () => t(shp, "bf16").ptr); // r, w, k, v, a, b
        const y = t(shp), sa = t(shp), s = t([B, S.H, S.T / 16, S.D, S.D]);
        const g = Array.from({ length: 6 }, () => t(shp).ptr);
        const dims = [B, S.T, S.H, S.D, be.stream] as const;
        if (kind.startsWith("wkv7g")) {
          const ws = t([B, S.H, 17, S.D, S.D]);
          return () => {
            be.k.mn_wkv7g_forward(y.ptr, s.ptr, ...ins, ...dims);
            be.k.mn_wkv7g_backward(...g, y.ptr, ...ins, s.ptr, ws.ptr, ...dims);
          };
        }
        const [fwd, bwd] = kind.startsWith("wind")
          ? [be.k.mn_wkv7_wind_forward, be.k.mn_wkv7_wind_backward]
          : [be.k.mn_wkv7_forward, be.k.mn_wkv7_backward];
        return () => {
          fwd(y.ptr, s.ptr, sa.ptr, ...ins, ...dims);
          bwd(...g, y.ptr, ...ins, s.ptr, sa.ptr, ...dims); // y doubles as dy: any finite values
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

const backends: BackendName[] = ["cpu"];
if (size === "small") backends.push("emu");
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
    rows.push([name, c.name, ms.toFixed(3)]);
    for (const x of made) be.free(x);
  }
  be.close();
}
const w0 = Math.max(...rows.map((r) => r[1].length));
console.log(`kernel timings (${size} shapes, ${reps} reps, ms per call)`);
console.log(`${"backend".padEnd(8)} ${"kernel".padEnd(w0)} ms`);
for (const [b, n, ms] of rows) console.log(`${b.padEnd(8)} ${n.padEnd(w0)} ${ms.padStart(10)}`);
