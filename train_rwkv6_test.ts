// train_rwkv6.ts: the WKV-6 graph op (bf16 path) against an fp64 reference, whole-model gradients
// by finite differences (fp32 path), emu = cpu on the whole model (bf16), the fused time mixing =
// --unfused, a Brown training run, 2 ranks = 1 process, resume, --dump_grads, errors.
import assert from "node:assert/strict";
import { Backend, type BackendName } from "./cuda/backend.ts";
import { Graph, Param } from "./cuda/autograd.ts";
import { readSafetensors, writeSafetensors } from "./cuda/safetensors.ts";
import {
  type BackendCheck,
  backendDifference,
  BROWN,
  checkDumpGrads,
  checkFlagErrors,
  checkGradientsByFiniteDifferences,
  checkHelp,
  checkMissingWeightsFile,
  checkResume,
  compareBackends,
  ensureBrown,
  KERNEL_BACKENDS,
  norm,
  PRECISION_FLAG_CASES,
  runTrainer,
  tinyLossAndGrads,
  valLosses,
} from "./cuda/test/trainer_harness.ts";
import { SEED } from "./cuda/test/harness.ts";
import * as trainer from "./train_rwkv6.ts";
import { parseFlags, Rng, wkv6 } from "./train_rwkv6.ts";

const TINY = [
  "--n_layer",
  "2",
  "--n_embd",
  "64",
  "--headsz",
  "16",
  "--sequence_length",
  "32",
  "--device_bsz",
  "2",
  "--vocab_size",
  "512",
];
const train = (args: string[], env: Record<string, string> = {}) =>
  runTrainer("train_rwkv6.ts", args, env);

/** round to the nearest bf16 (ties to even), so the kernel's cast of these values is exact */
function bf16Round(x: number): number {
  const f = new Float32Array([x]), u = new Uint32Array(f.buffer);
  u[0] = (u[0] + 0x7fff + ((u[0] >> 16) & 1)) & 0xffff0000;
  return f[0];
}

/** The RWKV-6 recurrence in fp64: r,k,v,w [B,T,H,N], u [H,N] -> y [B,T,H,N] */
function wkv6Ref(
  r: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  w: ArrayLike<number>,
  u: ArrayLike<number>,
  B: number,
  T: number,
  H: number,
  N: number,
): Float64Array {
  const y = new Float64Array(B * T * H * N);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const S = new Float64Array(N * N); // S[i*N+j]: value channel i, key channel j
      for (let t = 0; t < T; t++) {
        const o = ((b * T + t) * H + h) * N;
        let bonus = 0;
        for (let j = 0; j < N; j++) bonus += r[o + j] * u[h * N + j] * k[o + j];
        for (let i = 0; i < N; i++) {
          let s = 0;
          for (let j = 0; j < N; j++) s += S[i * N + j] * r[o + j];
          y[o + i] = s + v[o + i] * bonus;
        }
        for (let i = 0; i < N; i++) {
          for (let j = 0; j < N; j++) {
            S[i * N + j] = S[i * N + j] * Math.exp(-Math.exp(w[o + j])) + v[o + i] * k[o + j];
          }
        }
      }
    }
  }
  return y;
}

for (
  const [beName, chunked] of [["cpu", false], ["emu", true]] as ["cpu" | "emu", boolean][]
) {
  const what = chunked ? "the chunked WKV-6 graph op (--fla_cuda)" : "the WKV-6 graph op";
  Deno.test(`train_rwkv6: ${what} matches an fp64 reference, values and gradients (${beName})`, () => {
    // Inputs are bf16-exact, so the op's bf16 casts are lossless and the reference sees the same
    // numbers: forward and backward can be held to fp32 accuracy. Gradients are checked as
    // directional derivatives of L = sum(dy * y) by central differences of the fp64 reference.
    // T = 20: one whole 16-step chunk and a ragged one for the chunked kernel.
    const be = Backend.open({ name: beName });
    const B = 2, T = 20, H = 2, N = 16, C = H * N, n = B * T * C;
    const rng = new Rng(11);
    const gen = (len: number, f: () => number) =>
      Float64Array.from({ length: len }, () => bf16Round(f()));
    const host = {
      r: gen(n, () => rng.normal() * 0.5),
      k: gen(n, () => rng.normal() * 0.5),
      v: gen(n, () => rng.normal()),
      w: gen(n, () => -2 + rng.normal()), // decays exp(-exp(w)) spread over (0, 1)
      u: gen(C, () => rng.normal() * 0.5),
    };
    const params = Object.fromEntries(
      Object.entries(host).map(([name, x]) => [
        name,
        new Param(be, name, be.upload(Float32Array.from(x), name === "u" ? [H, N] : [B, T, C])),
      ]),
    ) as Record<keyof typeof host, Param>;
    const g = new Graph(be);
    const P = (p: Param) => g.param(p);
    const y = wkv6(g, P(params.r), P(params.k), P(params.v), P(params.w), P(params.u), H, chunked);
    const dy = Float64Array.from({ length: n }, () => rng.normal());
    const yk = be.download(y.t) as Float32Array;
    const yRef = wkv6Ref(host.r, host.k, host.v, host.w, host.u, B, T, H, N);
    const ferr = norm(yk.map((v, i) => v - yRef[i])) / norm(yRef);
    assert.ok(ferr < 1e-5, `forward: normwise error ${ferr}`);
    y.g = be.upload(Float32Array.from(dy), [B, T, C]);
    g.backward();
    const L = (x: typeof host) => {
      const yy = wkv6Ref(x.r, x.k, x.v, x.w, x.u, B, T, H, N);
      return yy.reduce((s, v, i) => s + v * dy[i], 0);
    };
    const h = 1e-5;
    let worst = 0;
    for (const name of Object.keys(host) as (keyof typeof host)[]) {
      const grad = be.download(params[name].grad) as Float32Array;
      for (let rep = 0; rep < 2; rep++) {
        const z = Float64Array.from(host[name], () => rng.normal());
        const zn = norm(z);
        const d = z.map((v) => v / zn);
        const analytic = grad.reduce((s, v, i) => s + v * d[i], 0);
        const up = { ...host, [name]: host[name].map((v, i) => v + h * d[i]) };
        const down = { ...host, [name]: host[name].map((v, i) => v - h * d[i]) };
        const numeric = (L(up) - L(down)) / (2 * h);
        assert.ok(Math.abs(numeric) > 1e-2, `d${name}: derivative ${numeric} too small to test`);
        const err = Math.abs(numeric - analytic), tol = 1e-6 + 1e-4 * norm(grad);
        worst = Math.max(worst, err / tol);
        assert.ok(
          err <= tol,
          `d${name}: directional derivative ${numeric} by FD, ${analytic} by backward`,
        );
      }
    }
    g.release();
    be.close();
    console.log(
      `  forward error ${ferr.toExponential(1)}; 5 inputs x 2 directions, worst error ${
        worst.toExponential(1)
      } x tolerance`,
    );
  });
}

// The whole-model checks on random inputs (a fresh seed per run; MN_TEST_SEED replays one). Their
// bounds come from tools/tolerance_sweep.ts, each seed with OpenBLAS's default kernels and with
// OPENBLAS_CORETYPE=Haswell (2026-12-04): the worst figure and the median of the per-seed worst
// are in brackets; each bound is 2x or more the worst. Re-run on seeds 1-12 after
// main's kernel changes (two-stage reductions, cpu gemm): the same worst figures within 10%.
/** FD (Richardson-extrapolated central differences at h and h/2, see the harness): h = 2.5e-3,
 * not train_rwkv7's 1e-2, as the loss is strongly curved along key.weight (its init is 10x smaller
 * than the other projections'; plain central differences at h = 2.5e-3 failed seed 8 by their
 * O(h^2) term). fp32 loss noise ~(5/3) 1e-6 / h. [the fused time mixing (2026-12-05): worst 20%
 * of this bound, seeds 1-12 x 2 BLAS; the composition, now --unfused: 24%, seeds 1-40 x 2 BLAS] */
export const FD_CHECK = { flags: TINY, h: 2.5e-3, tol: { abs: 4e-4, rel: 3e-3 } };
export const BACKEND_CHECKS: BackendCheck[] = [
  // bf16: a different fp32 sum can round a bf16 operand the other way, and those flips spread.
  // [fused time mixing, bf16 logits (2026-12-05), seeds 1-12 x 2 BLAS: worst 1.2e-2
  // (time_faaaa), median 4.5e-3; loss 1.3e-4; seeds 15-114, default BLAS: worst 1.65e-2 (48:
  // h.1's time_decay), median 3.9e-3; loss 9.1e-5]: tol 3e-2 -> 3.5e-2 to keep 2x (it was 1.8x)
  { label: "bf16", flags: TINY, tol: 3.5e-2, lossTol: 3e-4 },
  // The same model and batch through mn_wkv6_chunked_* (cpu: the double reference; that the op
  // really takes the chunked kernel on emu is checked against fp64 at the top), the same bf16
  // reason. T = 32: two chunks. [fused (2026-12-05), seeds 1-12 x 2 BLAS: worst 1.2e-2, median
  // 4.6e-3; loss 1.3e-4; seeds 15-114: as "bf16" to three digits]: 3.5e-2 as "bf16"
  { label: "bf16, --fla_cuda", flags: [...TINY, "--fla_cuda"], tol: 3.5e-2, lossTol: 3e-4 },
  // The generic-op composition with fp32 logits (--unfused). [seeds 1-12 x 2 BLAS: worst 1.1e-2,
  // median 4.3e-3; loss 7.5e-5; seeds 15-114, default BLAS: worst 2.41e-2 (69: h.1's time_faaaa),
  // median 4.0e-3; loss 5.6e-5]: tol 3e-2 -> 5e-2 to keep 2x (it was 1.2x)
  { label: "bf16, --unfused", flags: [...TINY, "--unfused"], tol: 5e-2, lossTol: 3e-4 },
];
Deno.test("train_rwkv6: every parameter's gradient matches central finite differences (cpu, fp32 path)", () => {
  checkGradientsByFiniteDifferences(trainer, FD_CHECK.flags, FD_CHECK.h, FD_CHECK.tol);
});
// The same on the generic-op composition (--unfused), FD_CHECK's bound (measured on it before the
// fused kernels existed).
Deno.test("train_rwkv6: --unfused gradients match central finite differences (cpu, fp32 path)", () => {
  checkGradientsByFiniteDifferences(
    trainer,
    [...FD_CHECK.flags, "--unfused"],
    FD_CHECK.h,
    FD_CHECK.tol,
  );
});

for (const { other, ignore } of KERNEL_BACKENDS) {
  Deno.test({
    name: `train_rwkv6: ${other} and cpu give the same loss and gradients (bf16)`,
    ignore,
    fn() {
      const check = BACKEND_CHECKS[0];
      compareBackends(trainer, check.flags, check.tol, {
        other,
        smallTol: check.smallTol,
        lossTol: check.lossTol,
      });
    },
  });

  Deno.test({
    name:
      `train_rwkv6: --fla_cuda (chunked WKV-6) on ${other} matches cpu, loss and gradients (bf16)`,
    ignore,
    fn() {
      const check = BACKEND_CHECKS[1];
      compareBackends(trainer, check.flags, check.tol, {
        other,
        smallTol: check.smallTol,
        lossTol: check.lossTol,
      });
    },
  });

  Deno.test({
    name: `train_rwkv6: --unfused on ${other} matches cpu, loss and gradients (bf16)`,
    ignore,
    fn() {
      const check = BACKEND_CHECKS[2];
      compareBackends(trainer, check.flags, check.tol, {
        other,
        smallTol: check.smallTol,
        lossTol: check.lossTol,
      });
    },
  });
}

/** The fused time-mixing kernels, MLP and bf16 logits (the default) against the generic-op
 * composition with fp32 logits (--unfused), the same weights and batch on cpu: on the f32 path
 * (where both take fp32 logits and the generic MLP) they differ only in rounding order; on the bf16
 * path also in what the fused path keeps in bf16 as the original's autocast does and the generic
 * ops in fp32: the logits, the MLP's pre-activation, relu^2, the gate and their gradients (most of
 * the difference: two roundings of the model are compared), and in bf16 operands that round the
 * other way now and then (a flipped operand spreads). Bounds on the loss and on every gradient
 * tensor's normwise relative difference from seeds on cpu (tools/fused_sweep.ts rwkv6), figures in
 * brackets: worst (seed), median; each bound >= 2x the worst. */
export const FUSED_CHECKS = [
  // seeds 1-30 (2026-12-05) [tensors 2.8e-6, 1.2e-6; loss 1.2e-8, 3.5e-9]
  { label: "f32", flags: TINY, precision: "f32" as const, tol: 6e-6, lossTol: 3e-8 },
  // seeds 1-1000 (2026-12-05, `deno run -A tools/fused_sweep.ts rwkv6 --seeds 1-1000`): [tensors
  // 3.16e-1 (853: h.1's time_faaaa), 2.5e-2, p99 1.0e-1, p99.9 2.0e-1; loss 2.86e-4 (268), 5.9e-5]:
  // tol 0.17 -> 0.65 to keep 2x (MN_TEST_SEED=853 and 381 failed it). Both bf16 paths have such
  // seeds, so it is the model's sensitivity to where a bf16 operand rounds (h.1's time-mix and WKV
  // gradients move together), not a fused kernel: at 853 the fused path is 0.36 from the f32 path
  // and --unfused 0.05, at 120 and 716 the other way round (0.05 / 0.18, 0.02 / 0.12). The fused
  // kernels' exactness is the f32 check above and cuda/rwkv6_fused_test.ts.
  // Before, seeds 1-30 x OpenBLAS default/Haswell (the same figures), with the gate also bf16
  // (2026-12-05) [tensors 8.06e-2 (18: time_faaaa), 2.5e-2; loss 2.88e-4 (27), 6.5e-5]: loss
  // 4.5e-4 -> 6e-4 to keep 2x (it was 1.6x). Before it, with the bf16 MLP [tensors 8.2e-2 (18:
  // time_faaaa), 2.4e-2; loss 2.04e-4 (17), 7.2e-5]; before that [tensors 7.8e-3; loss 4.8e-5]
  // At b944988 (also the add + ln2 kernel and the bf16 output projection), seeds 1-30: [tensors
  // 7.95e-2 (19: time_faaaa), 2.6e-2; loss 1.84e-4 (5), 6.1e-5]
  { label: "bf16", flags: TINY, precision: "bf16" as const, tol: 0.65, lossTol: 6e-4 },
];
/** the fused entry points the default path must call once per layer, and --unfused never */
const FUSED_ENTRIES = [
  "mn_rwkv7_mix_x_forward",
  "mn_rwkv7_mix_x_backward",
  "mn_rwkv6_mix5_forward",
  "mn_rwkv6_mix5_backward",
  "mn_rwkv6_decay_k_forward",
  "mn_rwkv6_decay_k_backward",
  "mn_rwkv6_gn_gate_forward",
  "mn_rwkv6_gn_gate_backward",
];
for (const check of FUSED_CHECKS) {
  Deno.test(`train_rwkv6: fused time mixing = --unfused composition (cpu, ${check.label})`, () => {
    const counted = (want: number) => (_: BackendName, be: Backend) => {
      const calls = new Map<string, number>();
      for (const f of FUSED_ENTRIES) {
        const inner = be.k[f];
        calls.set(f, 0);
        be.k[f] = (...args) => (calls.set(f, calls.get(f)! + 1), inner(...args));
      }
      // the bf16 logits' cross-entropy: the default's bf16 path only
      const ce = "mn_softcap_crossentropy_bf16", inner = be.k[ce];
      let ceCalls = 0;
      be.k[ce] = (...args) => (ceCalls++, inner(...args));
      return () => {
        calls.forEach((n, f) => assert.equal(n, want, `${f} calls`));
        const bf16Logits = want > 0 && check.precision === "bf16";
        assert.equal(ceCalls > 0, bf16Logits, `${ce} calls: ${ceCalls}`);
      };
    };
    const [fused, unfused] = [
      tinyLossAndGrads(trainer, check.flags, "cpu", SEED, check.precision, counted(2)),
      tinyLossAndGrads(
        trainer,
        [...check.flags, "--unfused"],
        "cpu",
        SEED,
        check.precision,
        counted(0),
      ),
    ];
    const d = backendDifference(unfused, fused);
    const replay = `replay with MN_TEST_SEED=${SEED}`;
    assert.ok(d.loss <= check.lossTol, `loss: relative difference ${d.loss} (${replay})`);
    for (const [name, rel] of d.perTensor) {
      assert.ok(
        rel <= check.tol,
        `${name}: normwise relative difference ${rel} > ${check.tol} (${replay})`,
      );
    }
    console.log(
      `  worst gradient difference ${d.worst.toExponential(2)} (${d.worstName}; loss ${
        d.loss.toExponential(2)
      }; seed ${SEED})`,
    );
  });
}

Deno.test("train_rwkv6: a short cpu run on the Brown corpus lowers the val loss", () => {
  ensureBrown();
  const r = train([
    ...BROWN,
    "--backend",
    "cpu",
    "--n_layer",
    "2",
    "--n_embd",
    "64",
    "--headsz",
    "16",
    "--sequence_length",
    "32",
    "--device_bsz",
    "4",
    "--bsz",
    "4",
    "--num_iterations",
    "20",
    "--warmdown_iters",
    "5",
    "--val_loss_every",
    "10",
    "--val_tokens",
    "1024",
    "--adam_lr",
    "0.006",
    "--random_seed",
    "1",
    "--log_dir",
    Deno.makeTempDirSync(),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const v = valLosses(r.stdout);
  assert.equal(v.length, 3, r.stdout);
  console.log(`  val loss ${v.join(" -> ")}`);
  assert.ok(v[2] < v[0] - 1.0, `val loss did not fall clearly: ${v.join(", ")}`);
  assert.match(r.stdout, /peak memory consumption: \d+ MiB/);
});

Deno.test("train_rwkv6: a --fla_cuda smoke run (cpu, 10 steps) trains through the chunked WKV-6 ABI", () => {
  // On cpu mn_wkv6_chunked_* is the double reference: this checks the flag end to end (parsing,
  // the graph op's per-chunk state buffers kept from forward to backward, the optimizer loop);
  // the kernel itself is checked on emu above and in cuda/wkv6_chunked_test.ts.
  ensureBrown();
  const r = train([
    ...BROWN,
    ...TINY.slice(0, -2),
    "--fla_cuda",
    "--backend",
    "cpu",
    "--bsz",
    "2",
    "--num_iterations",
    "10",
    "--warmdown_iters",
    "3",
    "--val_loss_every",
    "10",
    "--val_tokens",
    "1024",
    "--adam_lr",
    "0.006",
    "--random_seed",
    "1",
    "--log_dir",
    Deno.makeTempDirSync(),
  ]);
  assert.equal(r.code, 0, r.stderr);
  const v = valLosses(r.stdout);
  assert.equal(v.length, 2, r.stdout);
  console.log(`  val loss ${v.join(" -> ")}`);
  assert.ok(v[1] < v[0], `val loss did not fall: ${v.join(", ")}`);
});

Deno.test("train_rwkv6: 2 ranks (tcp collective, bucketed all-reduce) train bit-identically to 1 process with gradient accumulation (cpu)", async () => {
  // As launcher_test.ts's RWKV-7 check: the same batches and per-batch gradients, summed in the
  // same order (micro-steps whole, in order; ranks in rank order), so weights and optimizer state
  // after 4 steps must be the same bits; the val losses (4 decimals) sum in another order: one unit
  // in the last printed place. Fused path (the default) and --unfused.
  ensureBrown();
  const common = [
    ...BROWN,
    ...["--backend", "cpu", "--n_layer", "2", "--n_embd", "64", "--headsz", "16"],
    ...["--sequence_length", "32", "--device_bsz", "2", "--random_seed", "3"],
    ...["--warmdown_iters", "1", "--num_iterations", "4", "--val_loss_every", "1"],
    ...["--val_tokens", "1152", "--bsz", "4"],
  ];
  const run = (world: number, extra: string[]) => {
    const port = String(20000 + Math.floor(Math.random() * 30000));
    return Promise.all(Array.from({ length: world }, (_, r) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "train_rwkv6.ts", ...common, ...extra],
        cwd: new URL(".", import.meta.url).pathname,
        env: { RANK: String(r), WORLD_SIZE: String(world), MASTER_PORT: port },
        stdout: "piped",
        stderr: "piped",
      }).output().then((o) => {
        assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
        return new TextDecoder().decode(o.stdout);
      })));
  };
  const vals = (out: string) => [...out.matchAll(/val_loss:([\d.]+)/g)].map((m) => Number(m[1]));
  const state = (dir: string, suffix: string) => {
    const r = [...Deno.readDirSync(dir)].find((e) => e.isDirectory)!.name;
    return readSafetensors(`${dir}/${r}/state_step000004${suffix}`).tensors;
  };
  for (const flags of [[], ["--unfused"]]) {
    const d1 = Deno.makeTempDirSync(), d2 = Deno.makeTempDirSync();
    const [one] = await run(1, [...flags, "--log_dir", d1]);
    const [two] = await run(2, [...flags, "--log_dir", d2, "--bucket_cap_mb", "0.25"]);
    const v1 = vals(one), v2 = vals(two);
    assert.equal(v1.length, 5);
    v1.forEach((x, i) =>
      assert.ok(Math.abs(x - v2[i]) <= 1e-4 + 1e-9, `val loss ${i}: ${x}, ${v2[i]}`)
    );
    let compared = 0;
    for (const suffix of [".safetensors", ".opt.safetensors"]) {
      const w1 = state(d1, suffix), w2 = state(d2, suffix);
      assert.deepEqual([...w2.keys()], [...w1.keys()]);
      for (const [name, t] of w1) {
        const a = t.data as Float32Array, b = w2.get(name)!.data as Float32Array;
        const diff = a.findIndex((x, i) => !Object.is(x, b[i]));
        assert.equal(diff, -1, `${flags.join(" ")} ${name}${suffix}: element ${diff} differs`);
        compared += a.length;
      }
    }
    console.log(`  ${flags.join(" ") || "fused"}: ${compared} elements bit-identical`);
    Deno.removeSync(d1, { recursive: true });
    Deno.removeSync(d2, { recursive: true });
  }
});

Deno.test("train_rwkv6: --resume continues bit-for-bit (cpu)", () => {
  checkResume(
    "train_rwkv6.ts",
    [
      ...BROWN,
      ...TINY.slice(0, -2),
      ...["--backend", "cpu", "--bsz", "2", "--warmdown_iters", "2", "--val_loss_every", "0"],
      ...["--val_tokens", "2048", "--random_seed", "5"],
    ],
    2,
    4,
  );
});

Deno.test("train_rwkv6: --dump_grads writes every gradient under its PyTorch name plus a scalar loss", () => {
  const { grad, specs } = checkDumpGrads(trainer, "train_rwkv6.ts", TINY.slice(0, -2));
  assert.equal(specs.length, 1 + 26 * 2 + 2, "wte (tied to lm_head), 26 per block, ln_out");
  const shapeOf = (name: string) => specs.find((s) => s.name === name)!.shape;
  assert.deepEqual(shapeOf("transformer.h.0.attn.time_maa_w2"), [5, 32, 64]);
  assert.deepEqual(shapeOf("transformer.h.0.attn.time_faaaa"), [4, 16]);
  assert.deepEqual(shapeOf("transformer.h.0.attn.gate_w1"), [64, 160]);
  assert.ok(norm(grad("transformer.wte.weight")) > 0, "the tied embedding/head has a gradient");
  assert.ok(
    norm(grad("transformer.h.0.attn.time_maa_w2")) === 0,
    "zero-init time_maa_w1 gives time_maa_w2 no gradient (as in PyTorch)",
  );
  assert.ok(
    norm(grad("transformer.h.0.attn.gate_w1")) === 0,
    "zero-init output.weight gives the gate LoRA no gradient",
  );
});

Deno.test("train_rwkv6: invalid flags and combinations are one-line errors", () => {
  const cases: [string[], RegExp][] = [
    [
      ["--bsz", "10", "--device_bsz", "4"],
      /--bsz 10 is not divisible by --device_bsz 4 x 1 process/,
    ],
    [
      ["--val_tokens", "1000"],
      /--val_tokens 1000 is not divisible by device_bsz x sequence_length x world = 65536/,
    ],
    [["--headsz", "48"], /--headsz 48: expected 16, 32, 64 or 128/],
    [["--headsz", "32", "--n_embd", "48"], /--headsz 32 does not divide --n_embd 48/],
    [["--bogus"], /Unknown option '--bogus'/],
    [["--emb_scale", "x"], /--emb_scale: expected a number, got "x"/],
    [
      ["--input_bin", "/nonexistent/x_*.bin"],
      /--input_bin \/nonexistent\/x_\*\.bin: no files match/,
    ],
    [
      ["--resume", "a.safetensors", "--init_from", "b.safetensors"],
      /--resume and --init_from exclude each other/,
    ],
    [["--n_layer", "1"], /--n_layer 1: RWKV-6's init needs at least 2 layers/],
    [["--backend", "rocm"], /--backend rocm: expected one of cuda, emu, cpu/],
  ];
  checkFlagErrors("train_rwkv6.ts", [...cases, ...PRECISION_FLAG_CASES]);
  checkHelp("train_rwkv6.ts");
});

Deno.test("train_rwkv6: --init_from or --resume of a missing file is a one-line error naming the flag", () => {
  checkMissingWeightsFile("train_rwkv6.ts", TINY);
});

Deno.test("train_rwkv6: checkpoints and --init_from use the PyTorch state_dict names, the tied weight under both", () => {
  ensureBrown();
  const dir = Deno.makeTempDirSync();
  const a = parseFlags([...TINY.slice(0, -2), "--random_seed", "4"]);
  const specs = trainer.modelSpecs(a, new Rng(4));
  const t = new Map(
    specs.map((s) => [s.name, { dtype: "F32" as const, shape: s.shape, data: s.init() }]),
  );
  t.set("lm_head.weight", t.get("transformer.wte.weight")!); // state_dict() lists both
  writeSafetensors(`${dir}/w.safetensors`, t);
  const args = [
    ...BROWN,
    ...TINY.slice(0, -2),
    "--backend",
    "cpu",
    "--num_iterations",
    "0",
    "--warmdown_iters",
    "0",
    "--val_tokens",
    "256",
    "--log_dir",
    dir,
  ];
  const freshDir = `${dir}/fresh`;
  const fresh = train([...args, "--random_seed", "4", "--log_dir", freshDir]);
  const loaded = train([...args, "--random_seed", "77", "--init_from", `${dir}/w.safetensors`]);
  assert.equal(fresh.code, 0, fresh.stderr);
  assert.equal(loaded.code, 0, loaded.stderr);
  assert.deepEqual(
    valLosses(loaded.stdout),
    valLosses(fresh.stdout),
    "same weights, same val loss",
  );
  // the run's own checkpoint: exactly the keys of the original's state_dict() (named_parameters
  // order, then lm_head.weight, the tied tensor's second name), so a strict load_state_dict takes
  // it; and --init_from takes it back
  const run = [...Deno.readDirSync(freshDir)].find((e) => e.isDirectory)!.name;
  const ckpt = `${freshDir}/${run}/state_step000000.safetensors`;
  const saved = readSafetensors(ckpt).tensors;
  assert.deepEqual([...saved.keys()], [...specs.map((s) => s.name), "lm_head.weight"]);
  assert.deepEqual(saved.get("lm_head.weight"), saved.get("transformer.wte.weight"));
  for (const [name, want] of t) assert.deepEqual(saved.get(name)!.data, want.data, name);
  const again = train([...args, "--random_seed", "77", "--init_from", ckpt]);
  assert.equal(again.code, 0, again.stderr);
  assert.deepEqual(valLosses(again.stdout), valLosses(fresh.stdout), "from our own checkpoint");
  // the two names of one tensor must agree
  const head = saved.get("lm_head.weight")!;
  const changed = (head.data as Float32Array).slice();
  changed[5] += 1;
  saved.set("lm_head.weight", { ...head, data: changed });
  writeSafetensors(`${dir}/untied.safetensors`, saved);
  const untied = train([...args, "--init_from", `${dir}/untied.safetensors`]);
  assert.equal(untied.code, 2, untied.stdout + untied.stderr);
  assert.match(
    untied.stderr,
    /untied\.safetensors: lm_head\.weight and transformer\.wte\.weight differ, but this model ties them/,
  );
  t.delete("transformer.h.0.ln1.bias");
  writeSafetensors(`${dir}/bad.safetensors`, t);
  const bad = train([...args, "--init_from", `${dir}/bad.safetensors`]);
  assert.equal(bad.code, 2, bad.stdout + bad.stderr);
  assert.match(bad.stderr, /missing 1 \(transformer\.h\.0\.ln1\.bias\)/);
  assert.equal(bad.stderr.trim().split("\n").length, 1, "one line");
});
