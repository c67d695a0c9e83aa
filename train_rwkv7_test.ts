// train_rwkv7.ts: whole-model gradients, emu = cpu, a Brown training run, resume, errors.
import assert from "node:assert/strict";
import { Backend } from "./cuda/backend.ts";
import { Graph } from "./cuda/autograd.ts";
import { readSafetensors, writeSafetensors } from "./cuda/safetensors.ts";
import { type Args, Model, modelSpecs, parseFlags, Rng } from "./train_rwkv7.ts";

const ROOT = new URL(".", import.meta.url).pathname;
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
const BROWN = [
  "--input_bin",
  "data/brown/brown_train_*.bin",
  "--input_val_bin",
  "data/brown/brown_val_*.bin",
];

function ensureBrown() {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "data/brown.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  })
    .outputSync();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

function train(args: string[], env: Record<string, string> = {}) {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "train_rwkv7.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** A tiny model with every parameter perturbed away from its (partly zero) init, and a batch. */
function tinySetup(backendName: "cpu" | "emu", extra: string[] = []) {
  const a: Args = parseFlags([...TINY, ...extra]);
  const be = Backend.open({ name: backendName });
  const rng = new Rng(3);
  const model = new Model(be, a, modelSpecs(a, rng));
  for (const p of model.params) {
    const h = be.download(p.data) as Float32Array;
    for (let i = 0; i < h.length; i++) h[i] += 0.05 * rng.normal();
    be.write(p.data, h);
    p.markUpdated();
  }
  const n = a.device_bsz * a.sequence_length;
  const idx = be.upload(
    Int32Array.from({ length: n }, () => Math.floor(rng.next() * a.vocab_size)),
    [n],
    "i32",
  );
  const tgt = be.upload(
    Int32Array.from({ length: n }, () => Math.floor(rng.next() * a.vocab_size)),
    [n],
    "i32",
  );
  const g = new Graph(be);
  const mean = (t: Float32Array) => t.reduce((s, v) => s + v, 0) / t.length;
  const lossOnly = () => {
    g.gradEnabled = false;
    const l = mean(be.download(model.forward(g, idx, tgt, 1)) as Float32Array);
    g.release();
    g.gradEnabled = true;
    return l;
  };
  const lossAndGrads = () => {
    for (const p of model.params) p.zeroGrad();
    const l = mean(be.download(model.forward(g, idx, tgt, 1)) as Float32Array);
    g.backward();
    g.release();
    return {
      loss: l,
      grads: new Map(model.params.map((p) => [p.name, be.download(p.grad) as Float32Array])),
    };
  };
  return { a, be, model, g, rng, lossOnly, lossAndGrads };
}

const norm = (x: ArrayLike<number>) => Math.sqrt(Array.from(x).reduce((s, v) => s + v * v, 0));

Deno.test("train_rwkv7: every parameter's gradient matches central finite differences (cpu, fp32 path)", () => {
  const { be, model, g, rng, lossOnly, lossAndGrads } = tinySetup("cpu");
  g.precision = "f32"; // bf16 rounding would make the loss piecewise constant at FD's scale
  const { grads } = lossAndGrads();
  const h = 1e-2;
  let worst = 0;
  for (const p of model.params) {
    const grad = grads.get(p.name)!;
    const orig = (be.download(p.data) as Float32Array).slice();
    const gn = norm(grad);
    // Two directions: along the analytic gradient (tests its length) and a random one (tests
    // its direction); each is a unit vector, so the derivative is a dot product with grad.
    const z = Float32Array.from(orig, () => rng.normal());
    const zn = norm(z);
    const dirs = [gn > 0 ? grad.map((v) => v / gn) : z.map((v) => v / zn), z.map((v) => v / zn)];
    for (const d of dirs) {
      const analytic = grad.reduce((s, v, i) => s + v * d[i], 0);
      be.write(p.data, orig.map((v, i) => v + h * d[i]));
      p.markUpdated();
      const up = lossOnly();
      be.write(p.data, orig.map((v, i) => v - h * d[i]));
      p.markUpdated();
      const down = lossOnly();
      const numeric = (up - down) / (2 * h);
      // fp32 forward: loss noise ~1e-6 / 2h = 5e-5; O(h^2) truncation ~1e-3 relative
      const err = Math.abs(numeric - analytic), tol = 1e-4 + 3e-3 * gn;
      worst = Math.max(worst, err / tol);
      assert.ok(
        err <= tol,
        `${p.name}: directional derivative ${numeric} by FD, ${analytic} by backward (|grad| ${gn})`,
      );
    }
    be.write(p.data, orig);
    p.markUpdated();
  }
  console.log(
    `  ${model.params.length} parameters x 2 directions; worst error ${
      (100 * worst).toFixed(0)
    }% of tolerance`,
  );
});

for (
  const [precision, kernelFlags, tol, wkvKernel] of [
    ["f32", [], 1e-4, "mn_wkv7g_backward_f32"],
    ["bf16", ["--fast_cuda"], 3e-2, "mn_wkv7_backward"],
    // --wind_cuda: emu's tensor-core kernel rounds every mma operand (the state included) to bf16,
    // ~5e-3 normwise per WKV-7 call against the cpu's double-precision reference; through the
    // model the gradients differ by 1.0e-2 (measured), so 5e-2.
    ["bf16", ["--wind_cuda"], 5e-2, "mn_wkv7_wind_backward"],
  ] as const
) {
  Deno.test(`train_rwkv7: emu and cpu give the same loss and gradients (${[precision, ...kernelFlags].join(", ")})`, () => {
    // f32: only summation order differs (1e-4 normwise). bf16: a different fp32 sum can round a
    // bf16 operand the other way, and those flips spread; 3e-2 normwise, measured below.
    const res = (["cpu", "emu"] as const).map((name) => {
      const s = tinySetup(name, [...kernelFlags]);
      s.g.precision = precision;
      // the flag must select its kernel: count the calls of its backward entry point
      let calls = 0;
      const inner = s.be.k[wkvKernel];
      s.be.k[wkvKernel] = (...args) => (calls++, inner(...args));
      const out = s.lossAndGrads();
      assert.equal(calls, 2, `${name}: ${wkvKernel} calls (one per layer)`);
      return out;
    });
    const [cpu, emu] = res;
    assert.ok(
      Math.abs(cpu.loss - emu.loss) <= tol * Math.abs(cpu.loss),
      `loss cpu ${cpu.loss} emu ${emu.loss}`,
    );
    let worst = 0;
    for (const [name, gc] of cpu.grads) {
      const ge = emu.grads.get(name)!;
      const rel = norm(gc.map((v, i) => v - ge[i])) / Math.max(norm(gc), 1e-12);
      worst = Math.max(worst, rel);
      assert.ok(rel <= tol, `${name}: normwise relative difference ${rel} > ${tol}`);
    }
    console.log(
      `  loss cpu ${cpu.loss.toFixed(6)} emu ${emu.loss.toFixed(6)}; worst gradient difference ${
        worst.toExponential(2)
      }`,
    );
  });
}

function valLosses(stdout: string): number[] {
  return [...stdout.matchAll(/val_loss:([\d.]+)/g)].map((m) => Number(m[1]));
}
function trainLosses(stdout: string): string[] {
  return [...stdout.matchAll(/^(step:\d+\/\d+ train_loss:[\d.]+)/gm)].map((m) => m[1]);
}

Deno.test("train_rwkv7: a short cpu run on the Brown corpus lowers the val loss", () => {
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
    "64",
    "--device_bsz",
    "4",
    "--bsz",
    "8",
    "--num_iterations",
    "30",
    "--warmdown_iters",
    "10",
    "--val_loss_every",
    "15",
    "--val_tokens",
    "4096",
    "--random_seed",
    "1",
    "--fast_cuda",
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

Deno.test("train_rwkv7: --resume continues bit-for-bit (cpu)", () => {
  ensureBrown();
  const base = [
    ...BROWN,
    ...TINY.slice(0, -2),
    "--backend",
    "cpu",
    "--bsz",
    "4",
    "--num_iterations",
    "6",
    "--warmdown_iters",
    "2",
    "--val_loss_every",
    "0",
    "--val_tokens",
    "2048",
    "--random_seed",
    "5",
    "--save_every",
    "3",
  ];
  const dirA = Deno.makeTempDirSync(), dirB = Deno.makeTempDirSync();
  const a = train([...base, "--log_dir", dirA]);
  assert.equal(a.code, 0, a.stderr);
  const runA = [...Deno.readDirSync(dirA)].find((e) => e.isDirectory)!.name;
  const ck3 = `${dirA}/${runA}/state_step000003.safetensors`;
  const b = train([...base, "--log_dir", dirB, "--resume", ck3]);
  assert.equal(b.code, 0, b.stderr);
  const la = trainLosses(a.stdout), lb = trainLosses(b.stdout);
  assert.deepEqual(lb, la.slice(3), "train losses after the resume point");
  assert.deepEqual(valLosses(b.stdout), valLosses(a.stdout).slice(-1));
  const runB = [...Deno.readDirSync(dirB)].find((e) => e.isDirectory)!.name;
  const wa = readSafetensors(`${dirA}/${runA}/state_step000006.safetensors`).tensors;
  const wb = readSafetensors(`${dirB}/${runB}/state_step000006.safetensors`).tensors;
  for (const [name, t] of wa) {
    assert.deepEqual(wb.get(name)!.data, t.data, `${name} differs after resume`);
  }
  console.log(`  steps 4-6 identical: ${lb.join("; ")}`);
});

Deno.test("train_rwkv7: --dump_grads writes every gradient under its PyTorch name plus a scalar loss", () => {
  ensureBrown();
  const out = `${Deno.makeTempDirSync()}/grads.safetensors`;
  const r = train([
    ...BROWN,
    ...TINY.slice(0, -2),
    "--backend",
    "cpu",
    "--random_seed",
    "9",
    "--dump_grads",
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const { tensors } = readSafetensors(out);
  const a = parseFlags([...TINY.slice(0, -2), "--random_seed", "9"]);
  const specs = modelSpecs(a, new Rng(9));
  assert.deepEqual([...tensors.keys()], [...specs.map((s) => s.name), "loss"]);
  for (const s of specs) assert.deepEqual(tensors.get(s.name)!.shape, s.shape, s.name);
  const loss = tensors.get("loss")!;
  assert.deepEqual(loss.shape, []);
  const l = (loss.data as Float32Array)[0];
  assert.ok(l > 9 && l < 12, `loss ${l} (about ln 50304 = 10.8 at init)`);
  assert.ok(
    norm(tensors.get("lm_head.weight")!.data as Float32Array) > 0,
    "lm_head has a gradient",
  );
  assert.ok(
    norm(tensors.get("transformer.h.0.attn.time_maa_w2")!.data as Float32Array) === 0,
    "zero-init w1 gives w2 no gradient (as in PyTorch)",
  );
});

Deno.test("train_rwkv7: --init_from lists missing, unexpected and mis-shaped tensors", () => {
  const dir = Deno.makeTempDirSync();
  const a = parseFlags([...TINY]);
  const specs = modelSpecs(a, new Rng(1));
  const t = new Map(
    specs.slice(1).map((
      s,
    ) => [s.name, {
      dtype: "F32" as const,
      shape: s.shape,
      data: new Float32Array(s.shape.reduce((x, y) => x * y, 1)),
    }]),
  );
  t.set("bogus.weight", { dtype: "F32", shape: [2], data: new Float32Array(2) });
  t.set("lm_head.weight", { dtype: "F32", shape: [64, 512], data: new Float32Array(64 * 512) });
  writeSafetensors(`${dir}/w.safetensors`, t);
  ensureBrown();
  const r = train([
    ...BROWN,
    ...TINY,
    "--backend",
    "cpu",
    "--init_from",
    `${dir}/w.safetensors`,
    "--num_iterations",
    "1",
    "--warmdown_iters",
    "0",
  ]);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /missing 1 \(transformer\.wte\.weight\)/);
  assert.match(r.stderr, /unexpected 1 \(bogus\.weight\)/);
  assert.match(r.stderr, /mis-shaped 1 \(lm_head\.weight: file \[64,512\] vs model \[512,64\]\)/);
  assert.equal(r.stderr.trim().split("\n").length, 1, "one line");
});

Deno.test("train_rwkv7: invalid flags and combinations are one-line errors", () => {
  const cases: [string[], RegExp, Record<string, string>?][] = [
    [
      ["--bsz", "10", "--device_bsz", "4"],
      /--bsz 10 is not divisible by --device_bsz 4 x 1 process/,
    ],
    [
      ["--val_tokens", "1000"],
      /--val_tokens 1000 is not divisible by device_bsz x sequence_length x world = 65536/,
    ],
    [["--sequence_length", "40"], /--sequence_length 40: must be a positive multiple of 16/],
    [["--headsz", "48"], /--headsz 48: expected 16, 32, 64 or 128/],
    [["--headsz", "32", "--n_embd", "48"], /--headsz 32 does not divide --n_embd 48/],
    [["--bogus"], /Unknown option '--bogus'/],
    [["--headsz", "abc"], /--headsz: expected an integer, got "abc"/],
    [["--muon_lr", "x"], /--muon_lr: expected a number, got "x"/],
    [
      ["--input_bin", "/nonexistent/x_*.bin"],
      /--input_bin \/nonexistent\/x_\*\.bin: no files match/,
    ],
    [
      ["--resume", "a.safetensors", "--init_from", "b.safetensors"],
      /--resume and --init_from exclude each other/,
    ],
    [["--n_layer", "1"], /--n_layer 1: RWKV-7's init needs at least 2 layers/],
    [["--backend", "rocm"], /--backend rocm: expected one of cuda, emu, cpu/],
    [
      [],
      // a rank that never arrives: rank 0 gives up after the rendezvous timeout, naming it
      /collective \(rank 0\/2\): timed out after 1500 ms waiting for rank\(s\) 1 of WORLD_SIZE=2/,
      {
        WORLD_SIZE: "2",
        RANK: "0",
        MASTER_PORT: String(20000 + Math.floor(Math.random() * 30000)),
        MN_COLLECTIVE_TIMEOUT_MS: "1500",
      },
    ],
  ];
  for (const [args, re, env] of cases) {
    const r = train(args, env);
    assert.notEqual(r.code, 0, `${args.join(" ")} should fail`);
    assert.match(r.stderr, re, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(
      r.stderr.trim().split("\n").length,
      1,
      `${args.join(" ")}: one line, got ${r.stderr}`,
    );
  }
});
