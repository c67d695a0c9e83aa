// cuda/step.ts: per-step inputs in pinned memory, the all-reduce buckets started inside backward,
// and the --cuda_graph step (its plumbing on the dry backend, which records instead of running).
import assert from "node:assert/strict";
import { GradAccumulator, Graph, Param } from "./autograd.ts";
import type { Tensor } from "./backend.ts";
import type { Collective } from "./collectives.ts";
import type { TraceEvent, TraceFile } from "./dry.ts";
import { BucketedAllReduce, gradBuckets, StepGraph, StepInputs } from "./step.ts";
import { backend } from "./test/harness.ts";
import { syntheticShards } from "../bench/step_cost.ts";

const N = 4;

/** Three parameters a, b, c in one flat gradient buffer (reverse order, as the trainers'), and a
 * forward that uses `a` first and again last: y = (((x a) b) c) a. */
function tinyModel(be: ReturnType<typeof backend>) {
  const names = ["a", "b", "c"];
  const gradAt: [number, number][] = [];
  let total = 0;
  for (let i = names.length - 1; i >= 0; i--) {
    gradAt[i] = [total, 64];
    total += 64;
  }
  const grads = be.zeros([total], "f32", "grads");
  const params = names.map((n, i) =>
    new Param(
      be,
      n,
      be.upload(new Float32Array(N).map((_, j) => 1 + 0.25 * i + 0.125 * j), [N]),
      grads.rows(gradAt[i][0], N),
    )
  );
  const x = be.upload(new Float32Array(N).map((_, j) => 0.5 + j), [N]);
  const forward = (g: Graph) => {
    const [a, b, c] = params.map((p) => g.param(p));
    const y = g.mul(g.mul(g.mul(g.mul(g.input(x), a), b), c), a);
    be.k.mn_fill(g.grad(y), 1, BigInt(N), be.stream); // d(sum y)/dy
  };
  return { params, gradAt, grads, forward };
}

/** A collective that sums nothing and records the whole gradient buffer at each bucket's start. */
function recordingCollective(flat: Tensor, be: ReturnType<typeof backend>) {
  const seen: { bucket: Tensor; flat: Float32Array }[] = [];
  const coll = {
    rank: 0,
    world: 2,
    kind: "tcp",
    allReduceSum: (t: Tensor) => seen.push({ bucket: t, flat: be.download(flat) as Float32Array }),
  } as unknown as Collective;
  return { coll, seen };
}

Deno.test("BucketedAllReduce: each bucket starts inside backward once final; a parameter used twice waits for its first use", () => {
  const be = backend("cpu");
  const m = tinyModel(be);
  const g = new Graph(be);
  const buckets = gradBuckets(m, 1); // every parameter a bucket of its own: c, b, a
  assert.deepEqual(buckets.map((b) => b.names), [["c"], ["b"], ["a"]]);
  const { coll, seen } = recordingCollective(m.grads, be);
  const ar = new BucketedAllReduce(be, coll, buckets);
  m.forward(g);
  ar.backward(g, null);
  const final = be.download(m.grads) as Float32Array;
  assert.equal(seen.length, 3);
  const slice = (f: Float32Array, p: number) => [...f.subarray(m.gradAt[p][0], m.gradAt[p][0] + N)];
  seen.forEach((s, i) => {
    assert.equal(s.bucket.ptr, buckets[i].grads.ptr, `bucket ${i} out of order`);
    const p = 2 - i; // c, b, a
    assert.deepEqual(slice(s.flat, p), slice(final, p), `bucket ${buckets[i].names} started early`);
  });
  // c's bucket really started mid-backward: a's first-use term was still missing then
  assert.notDeepEqual(slice(seen[0].flat, 0), slice(final, 0));
  g.release();
});

Deno.test("BucketedAllReduce: a parameter reached only through scalarOf views holds its bucket until their backward", () => {
  const be = backend("cpu");
  const grads = be.zeros([128], "f32", "grads");
  // the trainers' layout: the later parameter (w) first in the buffer
  const lam = new Param(be, "lam", be.upload(new Float32Array([0.5, -2]), [2]), grads.rows(64, 2));
  const w = new Param(be, "w", be.upload(new Float32Array([1, 2, 3, 4]), [N]), grads.rows(0, N));
  const model = { params: [lam, w], gradAt: [[64, 64], [0, 64]] as [number, number][], grads };
  const g = new Graph(be);
  const x = g.input(be.upload(new Float32Array([1, -1, 2, 0.5]), [N]));
  const x2 = g.input(be.upload(new Float32Array([3, 1, -2, 1]), [N]));
  const L = g.param(lam);
  const y = g.mul(g.axpby(g.scalarOf(L, 0), x, g.scalarOf(L, 1), x2), g.param(w));
  be.k.mn_fill(g.grad(y), 1, BigInt(N), be.stream);
  const buckets = gradBuckets(model, 1);
  assert.deepEqual(buckets.map((b) => b.names), [["w"], ["lam"]]);
  const { coll, seen } = recordingCollective(grads, be);
  new BucketedAllReduce(be, coll, buckets).backward(g, null);
  const final = be.download(lam.grad) as Float32Array;
  assert.ok(final.every((v) => v !== 0));
  assert.deepEqual([...seen[1].flat.subarray(64, 66)], [...final], "lam's bucket started early");
  g.release();
});

Deno.test("BucketedAllReduce: with accumulation the per-bucket adds give the bits of one add after backward", () => {
  const be = backend("cpu");
  const runOnce = (bucketed: boolean) => {
    const m = tinyModel(be);
    const g = new Graph(be);
    const acc = new GradAccumulator(be, m.params, m.grads);
    const { coll, seen } = recordingCollective(m.grads, be);
    const ar = new BucketedAllReduce(be, coll, bucketed ? gradBuckets(m, 1) : []);
    acc.run(3, (i) => {
      m.forward(g);
      if (i === 2) ar.backward(g, i > 0 ? acc : null);
      else g.backward();
      g.release();
    }, bucketed);
    return { grads: be.download(m.grads) as Float32Array, calls: seen.length };
  };
  const plain = runOnce(false), bucketed = runOnce(true);
  assert.equal(plain.calls, 0);
  assert.equal(bucketed.calls, 3);
  assert.deepEqual([...bucketed.grads], [...plain.grads]);
  assert.ok(plain.grads.some((v) => v !== 0));
});

Deno.test("StepInputs: one upload per step, the host alternates between two pinned buffers", () => {
  const be = backend("cpu");
  const inp = new StepInputs(be, [
    { name: "x", dtype: "i32", numel: 5 },
    { name: "lr", dtype: "f32", numel: 2 },
  ]);
  try {
    const views: Int32Array[] = [];
    for (let s = 0; s < 3; s++) {
      inp.begin();
      const x = inp.i32("x");
      x.set([s, s + 1, s + 2, s + 3, s + 4]);
      inp.f32("lr").set([0.5 * s, s]);
      views.push(x);
      inp.upload();
      assert.deepEqual([...(be.download(inp.tensor("x")) as Int32Array)], [...x]);
      assert.deepEqual([...(be.download(inp.tensor("lr")) as Float32Array)], [0.5 * s, s]);
    }
    // step 1 wrote the other buffer (step 0's copy may still be queued); step 2 reuses step 0's
    assert.equal(views[0][0], 2); // overwritten by step 2: the same memory
    assert.equal(views[1][0], 1); // untouched since step 1
    assert.throws(() => inp.f32("x"), /x is i32/);
    assert.throws(() => inp.tensor("nope"), /no slot nope/);
  } finally {
    inp.close();
  }
});

Deno.test("--cuda_graph on dry: steps 0-1 eager, step 2 captured and launched, later steps one graph launch", () => {
  const tmp = Deno.makeTempDirSync({ prefix: "graph_dry_" });
  try {
    const shards = syntheticShards(`${tmp}/shards`, 40_000, 4_000, 512);
    const args = [
      "run",
      "-A",
      "train_gpt2.ts",
      "--backend",
      "dry",
      "--cuda_graph",
      ...["--n_layer", "2", "--n_embd", "64", "--n_head", "2", "--vocab_size", "512"],
      ...["--sequence_length", "32", "--device_bsz", "2", "--bsz", "4", "--num_iterations", "5"],
      ...["--warmdown_iters", "1", "--val_loss_every", "0", "--val_tokens", "128"],
      ...["--input_bin", shards.train, "--input_val_bin", shards.val, "--log_dir", `${tmp}/logs`],
    ];
    const out = new Deno.Command(Deno.execPath(), {
      args,
      cwd: new URL("..", import.meta.url).pathname,
      env: { WORLD_SIZE: "1", RANK: "0", LOCAL_RANK: "0", MN_TRACE: `${tmp}/t.json` },
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, text.slice(-2000));
    assert.match(text, /cuda_graph: step captured after 2 warm-up steps; replaying it/);
    const t = JSON.parse(Deno.readTextFileSync(`${tmp}/t.json`)) as TraceFile;
    const steps = new Map<string, string[]>();
    let cur = "";
    for (const e of t.events as TraceEvent[]) {
      if ("mark" in e) steps.set(cur = e.mark, []);
      else if ("c" in e && cur) steps.get(cur)!.push(t.functions[e.c]);
    }
    const kernels = (fns: string[]) =>
      fns.filter((f) => !/^mn_(memcpy_[dh]2[hd]|event_|graph_)/.test(f));
    assert.ok(kernels(steps.get("step 1")!).length > 50, "an eager step launches kernels");
    const s2 = steps.get("step 2")!;
    assert.ok(s2.includes("mn_graph_begin_capture") && s2.includes("mn_graph_end_capture"));
    assert.ok(kernels(s2).length > 50, "the captured step records its launches");
    for (const s of ["step 3", "step 4"]) {
      const fns = steps.get(s)!;
      assert.deepEqual(kernels(fns), [], `${s}: ${kernels(fns).join(" ")}`);
      assert.equal(fns.filter((f) => f === "mn_graph_launch").length, 1, s);
      assert.equal(fns.filter((f) => f === "mn_memcpy_h2d").length, 1, `${s}: one upload`);
    }
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
});

Deno.test("StepGraph: on emu one line says the steps run eagerly, and every step runs its body", () => {
  const be = backend("emu");
  const lines: string[] = [];
  const sg = new StepGraph(be, true, (l) => lines.push(l));
  let bodies = 0;
  for (let i = 0; i < 5; i++) sg.run(() => bodies++, () => assert.fail("no capture to abort"));
  assert.equal(bodies, 5);
  assert.deepEqual(lines, ["cuda_graph: the emu backend has no CUDA graphs; steps run eagerly"]);
  assert.equal(sg.replaying, false);
  sg.close();
});

Deno.test("StepGraph: a capture that fails is aborted, logged once, and the step and later ones run eagerly", () => {
  const be = backend("dry");
  const lines: string[] = [];
  const sg = new StepGraph(be, true, (l) => lines.push(l), 1);
  let bodies = 0, aborts = 0;
  const body = () => {
    bodies++;
    if (bodies === 2) throw new Error("cudaMalloc during capture\nmore detail");
  };
  for (let i = 0; i < 4; i++) sg.run(body, () => aborts++);
  assert.equal(aborts, 1);
  assert.equal(bodies, 5); // 1 warm-up, the failed capture, its eager rerun, 2 eager steps
  assert.deepEqual(lines, [
    "cuda_graph: capture failed, running eagerly: cudaMalloc during capture",
  ]);
  assert.equal(sg.replaying, false);
});

Deno.test("StepGraph: after the capture a step is one replay, no body, and the host state reset", () => {
  const be = backend("dry");
  const lines: string[] = [];
  const sg = new StepGraph(be, true, (l) => lines.push(l), 2);
  let bodies = 0, resets = 0;
  for (let i = 0; i < 6; i++) sg.run(() => bodies++, () => resets++);
  assert.equal(bodies, 3); // 2 warm-up steps and the captured one
  assert.equal(resets, 3); // each of the 3 replays
  assert.ok(sg.replaying);
  assert.deepEqual(lines, ["cuda_graph: step captured after 2 warm-up steps; replaying it"]);
  sg.close();
});
