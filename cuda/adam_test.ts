import assert from "node:assert/strict";
import type { Backend } from "./backend.ts";
import { backend, checkKernel, compare, Rng, SEED, withTensors } from "./test/harness.ts";

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
