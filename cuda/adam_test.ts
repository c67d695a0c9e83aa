import assert from "node:assert/strict";
import type { Backend, Tensor } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  Rng,
  SEED,
  VARIANT,
  withTensors,
} from "./test/harness.ts";

interface AdamCfg {
  n: number;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  wd: number;
  /** number of the first step (later ones follow), > 1: starts from a non-zero m, v */
  firstStep: number;
  steps: number;
}

interface AdamData {
  p0: Float32Array;
  m0: Float32Array;
  v0: Float32Array;
  grads: Float32Array[];
}

const GRAD_STD = 0.5;

function draw(c: AdamCfg, rng: Rng): AdamData {
  const p0 = rng.normal(c.n);
  const later = c.firstStep > 1;
  const m0 = later ? rng.normal(c.n, 0.1) : new Float32Array(c.n);
  const v0 = later ? rng.uniform(c.n, 0, 0.2) : new Float32Array(c.n); // v >= 0
  const grads: Float32Array[] = [];
  for (let s = 0; s < c.steps; s++) {
    const g = rng.normal(c.n, GRAD_STD);
    if (c.n > 1) g[1] = 0; // an element whose gradient vanishes: only decay and momentum move it
    grads.push(g);
  }
  return { p0, m0, v0, grads };
}

/** Runs c.steps consecutive Adam steps on `be`; returns the final param, m, v. */
function runAdam(be: Backend, c: AdamCfg, d: AdamData) {
  return withTensors(be, { g: { data: d.grads[0], shape: [c.n] } }, {
    param: { shape: [c.n], init: d.p0 },
    m: { shape: [c.n], init: d.m0 },
    v: { shape: [c.n], init: d.v0 },
  }, (t) => {
    for (let s = 0; s < c.steps; s++) {
      be.write(t.g, d.grads[s]);
      be.k.mn_adam_step(
        t.param.ptr,
        t.g.ptr,
        t.m.ptr,
        t.v.ptr,
        t.g.n,
        c.lr,
        c.beta1,
        c.beta2,
        c.eps,
        c.wd,
        c.firstStep + s,
        be.stream,
      );
    }
  });
}

/**
 * torch.optim.Adam (amsgrad=False) in float64, from its documented algorithm, with the fp32
 * values of the hyperparameters that cross the ABI (Math.fround), so the comparison is about the
 * arithmetic, not about 0.9 vs fp32(0.9).
 */
function adam64(c: AdamCfg, d: AdamData) {
  const lr = Math.fround(c.lr), b1 = Math.fround(c.beta1), b2 = Math.fround(c.beta2);
  const eps = Math.fround(c.eps), wd = Math.fround(c.wd);
  const p = Float64Array.from(d.p0), m = Float64Array.from(d.m0), v = Float64Array.from(d.v0);
  for (let s = 0; s < c.steps; s++) {
    const t = c.firstStep + s;
    const bc1 = 1 - b1 ** t, bc2 = 1 - b2 ** t;
    for (let i = 0; i < c.n; i++) {
      const g = d.grads[s][i] + wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] -= (lr / bc1) * m[i] / (Math.sqrt(v[i]) / Math.sqrt(bc2) + eps);
    }
  }
  return { param: p, m, v };
}

const CONFIGS: AdamCfg[] = [
  { n: 1, lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, wd: 0, firstStep: 1, steps: 3 },
  { n: 1000, lr: 3e-3, beta1: 0.8, beta2: 0.95, eps: 1e-10, wd: 0.1, firstStep: 1, steps: 3 },
  { n: 4097, lr: 1e-2, beta1: 0.9, beta2: 0.99, eps: 1e-8, wd: 0.01, firstStep: 7, steps: 3 },
  { n: 300, lr: 0.05, beta1: 0.3, beta2: 0.9, eps: 1e-6, wd: 0, firstStep: 2, steps: 3 },
];
const label = (c: AdamCfg) =>
  `n=${c.n} lr=${c.lr} betas=(${c.beta1},${c.beta2}) eps=${c.eps} wd=${c.wd} steps ${c.firstStep}..${
    c.firstStep + c.steps - 1
  }`;

// fp32 kernel (emu) vs the double-per-step reference (cpu), three steps. m, v: a few fp32 roundings
// per step of values ~ GRAD_STD (m can cancel to ~0, hence an atol at the gradient's scale);
// param: fp32 rounding of p (~1e-7 |p|) plus the update lr * m / denom with a few ulps of relative
// error per step, so atol 1e-5 * lr (all configs have lr <= 0.05: atol 5e-7) and rtol 1e-6.
checkKernel({
  name: "adam_step",
  configs: CONFIGS,
  tol: {
    param: { atol: 5e-7, rtol: 1e-6 },
    m: { atol: 1e-6 * GRAD_STD, rtol: 1e-6 },
    v: { atol: 1e-9, rtol: 1e-6 },
  },
  label,
  run: (be, c, rng) => runAdam(be, c, draw(c, rng)),
});

Deno.test("adam_step: cpu follows torch.optim.Adam's formula (float64) over several steps", () => {
  const be = backend("cpu");
  for (const c0 of CONFIGS) {
    const c = { ...c0, steps: 6 };
    const d = draw(c, new Rng(SEED + 21));
    const got = runAdam(be, c, d);
    const want = adam64(c, d);
    // The cpu keeps fp32 state between steps (a 6e-8 relative rounding per step that the float64
    // run does not have); six steps of that, propagated through the update, stay within these.
    compare(`${label(c)} param (cpu vs float64)`, got.param, want.param, {
      atol: 1e-6 * c.lr,
      rtol: 1e-6,
    });
    compare(`${label(c)} m (cpu vs float64)`, got.m, want.m, { atol: 1e-7 * GRAD_STD, rtol: 1e-6 });
    compare(`${label(c)} v (cpu vs float64)`, got.v, want.v, { atol: 1e-10, rtol: 1e-6 });
  }
});

Deno.test("adam_step: the first step moves each parameter by about lr against its gradient", () => {
  // A property of Adam's bias correction, independent of both implementations: at step 1,
  // m/bc1 = g and sqrt(v/bc2) = |g|, so the update is lr * g / (|g| + eps) = lr * sign(g).
  for (const name of ["cpu", "emu"] as const) {
    const n = 257, lr = 0.01;
    const rng = new Rng(SEED + 23);
    const d: AdamData = {
      p0: rng.normal(n),
      m0: new Float32Array(n),
      v0: new Float32Array(n),
      grads: [rng.normal(n)],
    };
    const got = runAdam(backend(name), {
      n,
      lr,
      beta1: 0.9,
      beta2: 0.999,
      eps: 1e-8,
      wd: 0,
      firstStep: 1,
      steps: 1,
    }, d);
    const want = d.p0.map((p, i) =>
      p -
      lr * Math.sign(d.grads[0][i]) * (Math.abs(d.grads[0][i]) / (Math.abs(d.grads[0][i]) + 1e-8))
    );
    compare(`${name} first step`, got.param, want, { atol: 1e-7, rtol: 1e-6 });
  }
});

Deno.test("adam_step: argument checks", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const t = be.zeros([4]);
    try {
      const step = (stepNo: number, b1 = 0.9, lr = 1e-3) =>
        be.k.mn_adam_step(
          t.ptr,
          t.ptr,
          t.ptr,
          t.ptr,
          4n,
          lr,
          b1,
          0.999,
          1e-8,
          0,
          stepNo,
          be.stream,
        );
      assert.throws(() => step(0), /steps count from 1/);
      assert.throws(() => step(1, 1.0), /betas/);
      assert.throws(() => step(1, 0.9, -1), /lr=-1/);
    } finally {
      be.free(t);
    }
  }
});

// ---- mn_adam_multi_step: one launch over a list of tensors, the same bits as mn_adam_step

/** The device list of mn_adam_multi_step: {param, grad, m, v, n, offset} per tensor, int64. */
function adamList(be: Backend, tensors: { p: Tensor; g: Tensor; m: Tensor; v: Tensor }[]) {
  const list = new BigInt64Array(6 * tensors.length);
  let offset = 0n;
  tensors.forEach((t, i) => {
    const addr = (x: Tensor) => BigInt(Deno.UnsafePointer.value(x.ptr));
    list.set([addr(t.p), addr(t.g), addr(t.m), addr(t.v), t.p.n, offset], 6 * i);
    offset += t.p.n;
  });
  return {
    list: be.upload(new Int32Array(list.buffer), [12 * tensors.length], "i32"),
    total: offset,
  };
}

// the last size spans several blocks' worth of tensors; left out under the (slow) sanitizers
const MULTI_SIZES = [1, 3, 257, 1000, 4097, 2, ...(VARIANT ? [] : [70000])];
const MULTI_STEPS = 3;

/** Adam over MULTI_SIZES tensors, per tensor (mn_adam_step) or all at once (mn_adam_multi_step,
 * or "dev": mn_adam_multi_step_dev with lr and step written to device memory before each step). */
function runAdamTensors(be: Backend, multi: boolean | "dev", c: AdamCfg, seed: number) {
  const rng = new Rng(seed);
  const data = MULTI_SIZES.map((n) => draw({ ...c, n, steps: MULTI_STEPS }, rng));
  const ts = MULTI_SIZES.map((n, i) => ({
    p: be.upload(data[i].p0, [n]),
    g: be.alloc([n]),
    m: be.upload(data[i].m0, [n]),
    v: be.upload(data[i].v0, [n]),
  }));
  const { list, total } = adamList(be, ts);
  const lrStep = be.alloc([2]);
  try {
    for (let s = 0; s < MULTI_STEPS; s++) {
      ts.forEach((t, i) => be.write(t.g, data[i].grads[s]));
      const step = c.firstStep + s;
      if (multi === "dev") {
        be.write(lrStep, new Float32Array([c.lr, step]));
        be.k.mn_adam_multi_step_dev(
          list.ptr,
          ts.length,
          total,
          lrStep.ptr,
          c.beta1,
          c.beta2,
          c.eps,
          c.wd,
          be.stream,
        );
      } else if (multi) {
        be.k.mn_adam_multi_step(
          list.ptr,
          ts.length,
          total,
          c.lr,
          c.beta1,
          c.beta2,
          c.eps,
          c.wd,
          step,
          be.stream,
        );
      } else {
        for (const t of ts) {
          be.k.mn_adam_step(
            t.p.ptr,
            t.g.ptr,
            t.m.ptr,
            t.v.ptr,
            t.p.n,
            c.lr,
            c.beta1,
            c.beta2,
            c.eps,
            c.wd,
            step,
            be.stream,
          );
        }
      }
    }
    const cat = (k: "p" | "m" | "v") => {
      const out = new Float32Array(Number(total));
      let o = 0;
      for (const t of ts) {
        out.set(be.download(t[k]) as Float32Array, o);
        o += t[k].numel;
      }
      return out;
    };
    return { param: cat("p"), m: cat("m"), v: cat("v") };
  } finally {
    for (const t of ts) for (const x of [t.p, t.g, t.m, t.v]) be.free(x);
    be.free(list);
    be.free(lrStep);
  }
}

Deno.test("adam_multi_step: the same bits as mn_adam_step on each tensor (cpu and emu)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const [ci, c] of CONFIGS.entries()) {
      const one = runAdamTensors(be, false, c, SEED + 31 + ci);
      const all = runAdamTensors(be, true, c, SEED + 31 + ci);
      for (const k of ["param", "m", "v"] as const) {
        compare(`${name} ${label(c)} ${k}: multi vs per tensor`, all[k], one[k], EXACT);
      }
    }
  }
});

Deno.test("adam_multi_step_dev: lr and step from device memory, the same bits as adam_multi_step (cpu and emu)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const [ci, c] of CONFIGS.entries()) {
      const dev = runAdamTensors(be, "dev", c, SEED + 47 + ci);
      const multi = runAdamTensors(be, true, c, SEED + 47 + ci);
      for (const k of ["param", "m", "v"] as const) {
        compare(`${name} ${label(c)} ${k}: dev vs multi`, dev[k], multi[k], EXACT);
      }
    }
    if (name === "cpu") { // the one backend that can read the device scalars before the launch
      const x = be.zeros([8]);
      const { list } = adamList(be, [{ p: x, g: x, m: x, v: x }]);
      const ls = be.upload(new Float32Array([1e-3, 1.5]));
      assert.throws(
        () => be.k.mn_adam_multi_step_dev(list.ptr, 1, 8n, ls.ptr, 0.9, 0.95, 1e-8, 0, be.stream),
        /step 1.5 is not an integer/,
      );
      for (const t of [x, list, ls]) be.free(t);
    }
  }
});

// emu's one launch over all tensors vs the cpu reference: adam_step's tolerances
checkKernel({
  name: "adam_multi_step",
  configs: CONFIGS,
  tol: {
    param: { atol: 5e-7, rtol: 1e-6 },
    m: { atol: 1e-6 * GRAD_STD, rtol: 1e-6 },
    v: { atol: 1e-9, rtol: 1e-6 },
  },
  label,
  run: (be, c, rng) => runAdamTensors(be, true, c, Math.floor(rng.next() * 2 ** 31)),
});

Deno.test("adam_multi_step: argument checks (the cpu also checks the list)", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    const x = be.zeros([8]);
    const step = (list: Tensor | null, count: number, total: bigint, stepNo = 1, b1 = 0.9) =>
      be.k.mn_adam_multi_step(
        list?.ptr ?? null,
        count,
        total,
        1e-3,
        b1,
        0.999,
        1e-8,
        0,
        stepNo,
        be.stream,
      );
    const { list } = adamList(be, [{ p: x, g: x, m: x, v: x }]);
    try {
      step(null, 0, 0n); // nothing to do
      assert.throws(() => step(list, 1, 8n, 0), /adam_multi_step: step = 0/);
      assert.throws(() => step(list, 1, 8n, 1, 1.0), /betas/);
      assert.throws(() => step(list, 0, 8n), /0 tensors cannot hold total_n = 8/);
      assert.throws(() => step(null, 1, 8n), /NULL list/);
      if (name === "cpu") {
        assert.throws(() => step(list, 1, 9n), /hold 8 elements, total_n = 9/);
        const bad = new BigInt64Array(be.download(list).buffer);
        bad[5] = 1n;
        be.write(list, new Int32Array(bad.buffer));
        assert.throws(() => step(list, 1, 8n), /tensor 0 has offset 1, expected 0/);
      }
    } finally {
      be.free(list);
      be.free(x);
    }
  }
});
