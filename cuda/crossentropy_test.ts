import assert from "node:assert/strict";
import type { Backend } from "./backend.ts";
import {
  backend,
  checkKernel,
  compare,
  EXACT,
  f64,
  numericalGrad,
  Rng,
  SEED,
  withTensors,
} from "./test/harness.ts";

interface CE {
  N: number;
  V: number;
  softcap: number;
  /** dlogits written over the logits buffer (dlogits == logits) */
  inplace?: boolean;
  /** no gradient (dlogits = NULL) */
  noGrad?: boolean;
}

const DLOSS = 0.37;
const TOL_DLOGITS = { atol: DLOSS * 2 ** -21, rtol: 1e-5 };

/** Logits ~ N(0, 4) with some far-out values (|x| 40..60) that the softcap saturates. */
function drawLogits(rng: Rng, N: number, V: number): Float32Array {
  const x = rng.normal(N * V, 4);
  const picks = rng.ints(Math.max(1, (N * V) >> 6), N * V);
  const signs = rng.uniform(picks.length);
  for (let j = 0; j < picks.length; j++) {
    x[picks[j]] = (signs[j] < 0 ? -1 : 1) * (40 + 20 * Math.abs(signs[j]));
  }
  return x;
}

/** losses, and dlogits unless noGrad */
function runCE(
  be: Backend,
  c: CE,
  x: Float32Array,
  targets: Int32Array,
): Record<string, Float32Array> {
  const { N, V } = c;
  if (c.inplace) {
    const r = withTensors(be, { tg: { data: targets, shape: [N] } }, {
      losses: { shape: [N] },
      dlogits: { shape: [N, V], init: x },
    }, (t) => {
      be.k.mn_softcap_crossentropy(
        t.losses.ptr,
        t.dlogits.ptr,
        t.dlogits.ptr,
        t.tg.ptr,
        N,
        V,
        c.softcap,
        DLOSS,
        be.stream,
      );
    });
    return { losses: r.losses as Float32Array, dlogits: r.dlogits as Float32Array };
  }
  if (c.noGrad) {
    const r = withTensors(
      be,
      { x: { data: x, shape: [N, V] }, tg: { data: targets, shape: [N] } },
      {
        losses: { shape: [N] },
      },
      (t) => {
        be.k.mn_softcap_crossentropy(
          t.losses.ptr,
          null,
          t.x.ptr,
          t.tg.ptr,
          N,
          V,
          c.softcap,
          DLOSS,
          be.stream,
        );
      },
    );
    return { losses: r.losses as Float32Array };
  }
  const r = withTensors(be, { x: { data: x, shape: [N, V] }, tg: { data: targets, shape: [N] } }, {
    losses: { shape: [N] },
    dlogits: { shape: [N, V] },
  }, (t) => {
    be.k.mn_softcap_crossentropy(
      t.losses.ptr,
      t.dlogits.ptr,
      t.x.ptr,
      t.tg.ptr,
      N,
      V,
      c.softcap,
      DLOSS,
      be.stream,
    );
  });
  return { losses: r.losses as Float32Array, dlogits: r.dlogits as Float32Array };
}

/** float64 forward, independent of both libraries: per-row logsumexp(z) - z[target]. */
function ceForward64(
  x: ArrayLike<number>,
  targets: Int32Array,
  N: number,
  V: number,
  softcap: number,
): Float64Array {
  const out = new Float64Array(N);
  const z = new Float64Array(V);
  for (let r = 0; r < N; r++) {
    let m = -Infinity;
    for (let i = 0; i < V; i++) {
      const xi = x[r * V + i];
      z[i] = softcap > 0 ? softcap * Math.tanh(xi / softcap) : xi;
      m = Math.max(m, z[i]);
    }
    let s = 0;
    for (let i = 0; i < V; i++) s += Math.exp(z[i] - m);
    out[r] = m + Math.log(s) - z[targets[r]];
  }
  return out;
}

// emu (fp32) vs cpu (double, rounded once). loss = lse - z_t: the fp32 sum of exp over a row (a
// thread's ~V/256 terms in sequence, then a tree) has relative error ~1e-6 at V = 50304, and log
// turns that into an absolute error of the same size; tanh/exp/log each add a few ulps of values
// up to ~|softcap| + log V ~ 40: atol 1e-5, rtol 1e-5. dlogits = dloss * (p - onehot) * dz: p =
// exp(z - m) / s carries the relative error of s and of exp(z - m) (a few ulps of an argument up
// to ~2*softcap in size: 30 * 2^-24 ~ 2e-6 relative; measured worst ~2e-6), and dz = sech^2 is
// computed without cancellation (a few ulps), so rtol 1e-5. Where p is near 1 (a dominant target)
// p - 1 cancels: p = 1/s has an absolute error of a few ulps of 1, so the entry an absolute error
// of ~dloss * 2^-22; atol = dloss * 2^-21 covers it (and is small next to dloss * p elsewhere).
checkKernel({
  name: "softcap_crossentropy",
  configs: [
    { N: 3, V: 5, softcap: 0 },
    { N: 7, V: 257, softcap: 15 },
    { N: 5, V: 1000, softcap: 30, inplace: true },
    { N: 4, V: 1000, softcap: 15, noGrad: true },
    { N: 2, V: 50304, softcap: 15 },
    { N: 3, V: 50304, softcap: 0, inplace: true },
  ] as CE[],
  tol: { losses: { atol: 1e-5, rtol: 1e-5 }, dlogits: TOL_DLOGITS },
  label: (c) =>
    `N=${c.N} V=${c.V} softcap=${c.softcap}${c.inplace ? " in-place" : ""}${
      c.noGrad ? " no-grad" : ""
    }`,
  run(be, c, rng) {
    return runCE(be, c, drawLogits(rng, c.N, c.V), rng.ints(c.N, c.V));
  },
});

Deno.test("softcap_crossentropy: in-place and loss-only runs give the same bits as the plain run", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = backend(name);
    for (const c of [{ N: 5, V: 257, softcap: 15 }, { N: 3, V: 1000, softcap: 0 }]) {
      const rng = new Rng(SEED + 7);
      const x = drawLogits(rng, c.N, c.V), tg = rng.ints(c.N, c.V);
      const plain = runCE(be, c, x, tg);
      const inplace = runCE(be, { ...c, inplace: true }, x, tg);
      const lossOnly = runCE(be, { ...c, noGrad: true }, x, tg);
      compare(`${name} in-place losses`, inplace.losses, plain.losses, EXACT);
      compare(`${name} in-place dlogits`, inplace.dlogits, plain.dlogits, EXACT);
      compare(`${name} loss-only losses`, lossOnly.losses, plain.losses, EXACT);
    }
  }
});

Deno.test("softcap_crossentropy: cpu matches a float64 forward and its finite differences", () => {
  const be = backend("cpu");
  for (
    const c of [{ N: 3, V: 5, softcap: 0 }, { N: 4, V: 33, softcap: 15 }, {
      N: 2,
      V: 70,
      softcap: 5,
    }]
  ) {
    const rng = new Rng(SEED + 11);
    const x = drawLogits(rng, c.N, c.V), tg = rng.ints(c.N, c.V);
    const got = runCE(be, c, x, tg);
    const lbl = `N=${c.N} V=${c.V} softcap=${c.softcap}`;
    // the cpu computes in double and rounds once to fp32: ~1e-7 relative
    compare(`${lbl} losses (cpu vs float64)`, got.losses, ceForward64(x, tg, c.N, c.V, c.softcap), {
      atol: 1e-6,
      rtol: 1e-6,
    });
    // dlogits = d(dloss * sum_r loss_r)/dx. Central differences in float64 with h = 1e-6 are good to
    // ~1e-9 here; the cpu's fp32 rounding is 6e-8 relative.
    const fd = numericalGrad(
      (xx) => ceForward64(xx, tg, c.N, c.V, c.softcap),
      f64(x),
      new Float64Array(c.N).fill(DLOSS),
    );
    compare(`${lbl} dlogits (cpu vs finite differences)`, got.dlogits, fd, {
      atol: 1e-7,
      rtol: 1e-5,
    });
  }
});

Deno.test("softcap_crossentropy: a target outside [0, V) is an error on cpu, a NaN row on emu", () => {
  const N = 3, V = 17;
  const rng = new Rng(SEED + 13);
  const x = drawLogits(rng, N, V);
  for (const bad of [-1, V]) {
    const tg = new Int32Array([2, bad, 5]);
    assert.throws(
      () => runCE(backend("cpu"), { N, V, softcap: 15 }, x, tg),
      /target .* of row 1 is not in \[0, 17\)/,
    );
    const emu = runCE(backend("emu"), { N, V, softcap: 15 }, x, tg);
    const good = runCE(backend("cpu"), { N, V, softcap: 15 }, x, new Int32Array([2, 0, 5]));
    assert.ok(Number.isNaN(emu.losses[1]), "bad row loss is NaN");
    assert.ok(emu.dlogits.subarray(V, 2 * V).every(Number.isNaN), "bad row gradient is NaN");
    // the other rows are unaffected
    compare("row 0, 2 losses", [emu.losses[0], emu.losses[2]], [good.losses[0], good.losses[2]], {
      atol: 1e-5,
      rtol: 1e-5,
    });
    compare("row 0 dlogits", emu.dlogits.subarray(0, V), good.dlogits.subarray(0, V), TOL_DLOGITS);
  }
});
