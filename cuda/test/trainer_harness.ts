// What the three trainer test files (train_gpt2_test.ts, train_rwkv6_test.ts, train_rwkv7_test.ts)
// share: running a trainer script, a tiny perturbed model on one backend, the whole-model checks
// (finite differences, emu vs cpu), resume and flag-error checks. The trainers themselves stay
// self-contained; each exports parseFlags, Rng, modelSpecs and Model with the same shapes.
import assert from "node:assert/strict";
import { Backend, type BackendName, type Tensor } from "../backend.ts";
import { Graph, type Param } from "../autograd.ts";
import { readSafetensors, writeSafetensors } from "../safetensors.ts";
import { readShardTokens } from "../../data/shard.ts";
import { HAS_GPU, SEED } from "./harness.ts";

export const ROOT = new URL("../../", import.meta.url).pathname;
export const BROWN = [
  "--input_bin",
  "data/brown/brown_train_*.bin",
  "--input_val_bin",
  "data/brown/brown_val_*.bin",
];

let brownReady = false;
/** Builds the Brown shards once per test process. Shards already there (carried to an offline GPU
 * machine) are used as they are: data/brown.ts imports npm packages, which need a network. */
export function ensureBrown() {
  if (brownReady) return;
  const names = (() => {
    try {
      return [...Deno.readDirSync(`${ROOT}data/brown`)].map((e) => e.name);
    } catch {
      return [];
    }
  })();
  if (
    names.some((n) => /^brown_train_\d+\.bin$/.test(n)) &&
    names.some((n) => /^brown_val_\d+\.bin$/.test(n))
  ) {
    brownReady = true;
    return;
  }
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "data/brown.ts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  brownReady = true;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A SCRIPT ARGS` in the repository root. */
export function runTrainer(script: string, args: string[], env: Record<string, string> = {}) {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  } as RunResult;
}

export const norm = (x: ArrayLike<number>) =>
  Math.sqrt(Array.from(x).reduce((s, v) => s + v * v, 0));

export function valLosses(stdout: string): number[] {
  return [...stdout.matchAll(/val_loss:([\d.]+)/g)].map((m) => Number(m[1]));
}
export function trainLosses(stdout: string): string[] {
  return [...stdout.matchAll(/^(step:\d+\/\d+ train_loss:[\d.]+)/gm)].map((m) => m[1]);
}

interface TrainerRng {
  next(): number;
  normal(): number;
}
interface TrainerSpec {
  name: string;
  shape: number[];
}
interface TrainerArgs {
  device_bsz: number;
  sequence_length: number;
  vocab_size: number;
}
/** The part of a train_*.ts module the whole-model tests use. */
export interface TrainerModule<A extends TrainerArgs, S> {
  parseFlags(argv: string[]): A;
  Rng: new (seed: number) => TrainerRng;
  modelSpecs(a: A, rng: TrainerRng): S;
  Model: new (be: Backend, a: A, specs: S) => {
    params: Param[];
    forward(g: Graph, idx: Tensor, targets: Tensor, lossScale: number): Tensor;
  };
}

/** Where the whole-model backend comparisons run: emu always; cuda with a GPU (otherwise the test
 * is registered as ignored, so the summary counts it as a skipped GPU check). */
export const KERNEL_BACKENDS: { other: BackendName; ignore: boolean }[] = [
  { other: "emu", ignore: false },
  { other: "cuda", ignore: !HAS_GPU },
];

/** A tiny model with every parameter perturbed away from its (partly zero) init, and a batch, all
 * drawn from `seed` (the tests': harness.ts SEED, fresh each run, replayed by MN_TEST_SEED). */
export function tinySetup<A extends TrainerArgs, S>(
  mod: TrainerModule<A, S>,
  flags: string[],
  backendName: BackendName,
  seed = SEED,
) {
  const a = mod.parseFlags(flags);
  const be = Backend.open({ name: backendName });
  const rng = new mod.Rng(seed);
  const model = new mod.Model(be, a, mod.modelSpecs(a, rng));
  for (const p of model.params) {
    const h = be.download(p.data) as Float32Array;
    for (let i = 0; i < h.length; i++) h[i] += 0.05 * rng.normal();
    be.write(p.data, h);
    p.markUpdated();
  }
  const n = a.device_bsz * a.sequence_length;
  const tokens = () =>
    be.upload(
      Int32Array.from({ length: n }, () => Math.floor(rng.next() * a.vocab_size)),
      [n],
      "i32",
    );
  const idx = tokens(), tgt = tokens();
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

/** A finite-difference check's tolerance on |FD - analytic| for a gradient of norm |grad|:
 * abs + rel * |grad|. */
export interface FdTol {
  abs: number;
  rel: number;
}

/**
 * Every parameter's gradient against finite differences of the loss on the cpu backend's
 * exact-fp32 path, along two unit directions per parameter: the analytic gradient (tests its
 * length) and a random one (tests its direction). The derivative is Richardson's extrapolation of
 * central differences at h and h/2, (4 D(h/2) - D(h)) / 3: the O(h^2) truncation cancels, leaving
 * O(h^4), so a strongly curved direction (the random init can make one) does not need its own h;
 * the fp32 loss noise (~1e-6) enters as ~(5/3) 1e-6 / h. Returns the worst |FD - analytic| /
 * tol(|grad|) and where; asserts it is <= 1 unless `measureOnly` (tools/tolerance_sweep.ts).
 */
export function checkGradientsByFiniteDifferences<A extends TrainerArgs, S>(
  mod: TrainerModule<A, S>,
  flags: string[],
  h: number,
  tol: FdTol,
  seed = SEED,
  measureOnly = false,
): { worst: number; where: string } {
  const { be, model, g, rng, lossOnly, lossAndGrads } = tinySetup(mod, flags, "cpu", seed);
  g.precision = "f32"; // bf16 rounding would make the loss piecewise constant at FD's scale
  const { grads } = lossAndGrads();
  let worst = 0, where = "";
  for (const p of model.params) {
    const grad = grads.get(p.name)!;
    const orig = (be.download(p.data) as Float32Array).slice();
    const gn = norm(grad);
    const z = Float32Array.from(orig, () => rng.normal());
    const zn = norm(z);
    const dirs = [gn > 0 ? grad.map((v) => v / gn) : z.map((v) => v / zn), z.map((v) => v / zn)];
    for (const d of dirs) {
      const analytic = grad.reduce((s, v, i) => s + v * d[i], 0);
      const central = (step: number) => {
        be.write(p.data, orig.map((v, i) => v + step * d[i]));
        p.markUpdated();
        const up = lossOnly();
        be.write(p.data, orig.map((v, i) => v - step * d[i]));
        p.markUpdated();
        return (up - lossOnly()) / (2 * step);
      };
      const numeric = (4 * central(h / 2) - central(h)) / 3;
      const err = Math.abs(numeric - analytic), bound = tol.abs + tol.rel * gn;
      if (err / bound > worst) [worst, where] = [err / bound, p.name];
      assert.ok(
        measureOnly || err <= bound,
        `${p.name}: directional derivative ${numeric} by FD, ${analytic} by backward (|grad| ${gn}; replay with MN_TEST_SEED=${seed})`,
      );
    }
    be.write(p.data, orig);
    p.markUpdated();
  }
  be.close();
  if (!measureOnly) {
    console.log(
      `  ${model.params.length} parameters x 2 directions; worst error ${
        (100 * worst).toFixed(0)
      }% of tolerance (${where}; seed ${seed})`,
    );
  }
  return { worst, where };
}

/** A whole-model backend comparison: its flags, bounds and precision (see compareBackends). */
export interface BackendCheck {
  /** the test name's suffix, e.g. "bf16, --fast_cuda" */
  label: string;
  flags: string[];
  /** normwise relative bound on every gradient tensor */
  tol: number;
  /** the bound for tensors of at most SMALL_TENSOR elements instead (default tol): a model's
   * scalars (GPT-2's lambdas, lamb) each sum a whole activation, with cancellation, so the same
   * operand flips move them relatively more */
  smallTol?: number;
  /** ... or, as an alternative, the bound on such a tensor's largest absolute difference: a
   * scalar gradient that nearly cancels for the drawn seed (a lambda's ~1e-4 where it is usually
   * ~5e-3) keeps its absolute error, so its relative one blows up; a zeroed or wrong-signed one
   * still fails (default 0: relative only) */
  smallAtol?: number;
  /** relative bound on the loss (default tol) */
  lossTol?: number;
  precision?: "bf16" | "f32";
}

/** Asserts a gradient tensor of at most SMALL_TENSOR elements within smallTol normwise relative
 * (rel) or within smallAtol absolute of want (see BackendCheck.smallAtol). */
export function assertSmallTensor(
  name: string,
  want: Float32Array,
  got: Float32Array,
  rel: number,
  smallTol: number,
  smallAtol: number,
  replay: string,
) {
  const abs = Math.max(...want.map((v, i) => Math.abs(v - got[i])));
  assert.ok(
    rel <= smallTol || abs <= smallAtol,
    `${name}: relative difference ${rel} > ${smallTol}, absolute ${abs} > ${smallAtol} (${replay})`,
  );
}

/** A gradient tensor this small gets BackendCheck.smallTol. */
export const SMALL_TENSOR = 2;

/** The tiny model's (tinySetup) loss and every gradient on one backend. */
export function tinyLossAndGrads<A extends TrainerArgs, S>(
  mod: TrainerModule<A, S>,
  flags: string[],
  name: BackendName,
  seed = SEED,
  precision?: "bf16" | "f32",
  instrument?: (name: BackendName, be: Backend) => () => void,
) {
  const s = tinySetup(mod, flags, name, seed);
  if (precision) s.g.precision = precision;
  const after = instrument?.(name, s.be);
  const r = s.lossAndGrads();
  after?.();
  s.be.close();
  return r;
}

export interface LossAndGrads {
  loss: number;
  grads: Map<string, Float32Array>;
}

/** The loss's relative difference and each gradient tensor's normwise relative difference. */
export function backendDifference(cpu: LossAndGrads, other: LossAndGrads) {
  let worst = 0, worstName = "";
  const perTensor = new Map<string, number>();
  for (const [name, gc] of cpu.grads) {
    const ge = other.grads.get(name)!;
    const rel = norm(gc.map((v, i) => v - ge[i])) / Math.max(norm(gc), 1e-12);
    perTensor.set(name, rel);
    if (rel > worst) [worst, worstName] = [rel, name];
  }
  return {
    loss: Math.abs(cpu.loss - other.loss) / Math.abs(cpu.loss),
    worst,
    worstName,
    perTensor,
  };
}

/**
 * The same tiny model and batch (drawn from `seed`) on cpu and on emu (or cuda): the loss within
 * lossTol relative and every gradient tensor within tol normwise relative. Returns both results for
 * trainer-specific checks.
 */
export function compareBackends<A extends TrainerArgs, S>(
  mod: TrainerModule<A, S>,
  flags: string[],
  tol: number,
  opts: {
    other?: BackendName;
    precision?: "bf16" | "f32";
    lossTol?: number;
    /** see BackendCheck.smallTol, smallAtol */
    smallTol?: number;
    smallAtol?: number;
    seed?: number;
    /** called on each backend before the forward; the function it returns, after the backward */
    instrument?: (name: BackendName, be: Backend) => () => void;
  } = {},
) {
  const seed = opts.seed ?? SEED, otherName = opts.other ?? "emu";
  const [cpu, other] = (["cpu", otherName] as const).map((name) =>
    tinyLossAndGrads(mod, flags, name, seed, opts.precision, opts.instrument)
  );
  const d = backendDifference(cpu, other);
  const lossTol = opts.lossTol ?? tol;
  const replay = `replay with MN_TEST_SEED=${seed}`;
  assert.ok(
    d.loss <= lossTol,
    `loss cpu ${cpu.loss} ${otherName} ${other.loss}: relative difference ${d.loss} > ${lossTol} (${replay})`,
  );
  for (const [name, rel] of d.perTensor) {
    const want = cpu.grads.get(name)!;
    if (want.length <= SMALL_TENSOR) {
      const [smallTol, smallAtol] = [opts.smallTol ?? tol, opts.smallAtol ?? 0];
      assertSmallTensor(name, want, other.grads.get(name)!, rel, smallTol, smallAtol, replay);
    } else {
      assert.ok(rel <= tol, `${name}: normwise relative difference ${rel} > ${tol} (${replay})`);
    }
  }
  console.log(
    `  loss cpu ${cpu.loss.toFixed(6)} ${otherName} ${
      other.loss.toFixed(6)
    }; worst gradient difference ${d.worst.toExponential(2)} (${d.worstName}; seed ${seed})`,
  );
  return { cpu, other };
}

/**
 * Trains `steps` steps saving every `saveEvery`, resumes a second run from the checkpoint at
 * `saveEvery` and asserts the remaining train losses, the final val loss and the final weights are
 * bit-identical.
 */
export function checkResume(script: string, base: string[], saveEvery: number, steps: number) {
  ensureBrown();
  const args = [...base, "--num_iterations", String(steps), "--save_every", String(saveEvery)];
  const dirA = Deno.makeTempDirSync(), dirB = Deno.makeTempDirSync();
  const a = runTrainer(script, [...args, "--log_dir", dirA]);
  assert.equal(a.code, 0, a.stderr);
  const runA = [...Deno.readDirSync(dirA)].find((e) => e.isDirectory)!.name;
  const ckpt = (dir: string, run: string, step: number) =>
    `${dir}/${run}/state_step${String(step).padStart(6, "0")}.safetensors`;
  const b = runTrainer(script, [
    ...args,
    "--log_dir",
    dirB,
    "--resume",
    ckpt(dirA, runA, saveEvery),
  ]);
  assert.equal(b.code, 0, b.stderr);
  const la = trainLosses(a.stdout), lb = trainLosses(b.stdout);
  assert.deepEqual(lb, la.slice(saveEvery), "train losses after the resume point");
  assert.deepEqual(valLosses(b.stdout), valLosses(a.stdout).slice(-1));
  const runB = [...Deno.readDirSync(dirB)].find((e) => e.isDirectory)!.name;
  const wa = readSafetensors(ckpt(dirA, runA, steps)).tensors;
  const wb = readSafetensors(ckpt(dirB, runB, steps)).tensors;
  for (const [name, t] of wa) {
    assert.deepEqual(wb.get(name)!.data, t.data, `${name} differs after resume`);
  }
  console.log(`  steps ${saveEvery + 1}-${steps} identical: ${lb.join("; ")}`);
}

/** The --precision flag's errors, the same in every trainer. */
export const PRECISION_FLAG_CASES: [string[], RegExp][] = [
  [["--precision", "fp16"], /--precision fp16: expected bf16 or f32/],
  [
    ["--precision", "f32"],
    /--precision f32 is for --dump_grads \(training runs in bf16, as the original\)/,
  ],
];

/** --help lists --dump_grads and both values of --precision, with bf16 the default. */
export function checkHelp(script: string) {
  const r = runTrainer(script, ["--help"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^ {2}--dump_grads +\S/m);
  const line = r.stdout.split("\n").find((l) => l.startsWith("  --precision")) ?? "";
  assert.match(line, /bf16 \(the training path.*f32 \(every op in fp32.*\(default bf16\)$/, line);
}

/** Each case must fail with exactly one stderr line matching its pattern. */
export function checkFlagErrors(
  script: string,
  cases: [string[], RegExp, Record<string, string>?][],
) {
  for (const [args, re, env] of cases) {
    const r = runTrainer(script, args, env);
    assert.notEqual(r.code, 0, `${args.join(" ")} should fail`);
    assert.match(r.stderr, re, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(
      r.stderr.trim().split("\n").length,
      1,
      `${args.join(" ")}: one line, got ${r.stderr}`,
    );
  }
}

/**
 * `--dump_grads` on the cpu backend (tiny model, seed 9), with the default precision and with
 * `--precision f32`: each file holds every parameter's gradient under its name and shape, in model
 * order, plus a scalar loss near ln(50304) at init; each is bit-identical to the same model, batch
 * (the first of the train shards) and graph precision computed here in-process, and the two
 * precisions' gradients differ. Returns the default (bf16) file's gradient tensors (by name, as
 * float32 arrays) and the specs for trainer-specific checks.
 */
export function checkDumpGrads<A extends TrainerArgs, S extends TrainerSpec[]>(
  mod: TrainerModule<A, S>,
  script: string,
  flags: string[],
) {
  ensureBrown();
  const specs = mod.modelSpecs(mod.parseFlags([...flags, "--random_seed", "9"]), new mod.Rng(9));
  const dumped = new Map<string, Map<string, Float32Array>>();
  for (const precision of ["bf16", "f32"] as const) {
    const out = `${Deno.makeTempDirSync()}/grads.safetensors`;
    const r = runTrainer(script, [
      ...BROWN,
      ...flags,
      ...["--backend", "cpu", "--random_seed", "9", "--dump_grads", out],
      ...(precision === "bf16" ? [] : ["--precision", precision]),
    ]);
    assert.equal(r.code, 0, r.stderr);
    const { tensors, metadata } = readSafetensors(out);
    assert.equal(metadata.precision, precision);
    assert.deepEqual([...tensors.keys()], [...specs.map((s) => s.name), "loss"]);
    for (const s of specs) assert.deepEqual(tensors.get(s.name)!.shape, s.shape, s.name);
    const loss = tensors.get("loss")!;
    assert.deepEqual(loss.shape, []);
    const l = (loss.data as Float32Array)[0];
    assert.ok(l > 9 && l < 12, `loss ${l} (about ln 50304 = 10.8 at init)`);
    const grads = new Map([...tensors].map(([k, t]) => [k, t.data as Float32Array]));
    // the same computation here: the trainer's init for seed 9 and its first batch
    const a = mod.parseFlags([...flags, "--random_seed", "9"]);
    const be = Backend.open({ name: "cpu" });
    const model = new mod.Model(be, a, mod.modelSpecs(a, new mod.Rng(9)));
    const first = [...Deno.readDirSync(`${ROOT}data/brown`)].map((e) => e.name)
      .filter((n) => /^brown_train_.*\.bin$/.test(n)).sort()[0];
    const n = a.device_bsz * a.sequence_length;
    const tokens = Int32Array.from(
      readShardTokens(`${ROOT}data/brown/${first}`).subarray(0, n + 1),
    );
    const g = new Graph(be);
    g.precision = precision;
    const losses = model.forward(
      g,
      be.upload(tokens.slice(0, n), [n], "i32"),
      be.upload(tokens.slice(1), [n], "i32"),
      1,
    );
    const mean = (be.download(losses) as Float32Array).reduce((s, v) => s + v, 0) / n;
    g.backward();
    assert.equal(Math.fround(mean), l, `${precision}: loss`);
    for (const p of model.params) {
      assert.deepEqual(grads.get(p.name), be.download(p.grad), `${precision}: ${p.name}`);
    }
    be.close();
    dumped.set(precision, grads);
  }
  const differ = specs.filter((s) => {
    const [x, y] = [dumped.get("bf16")!.get(s.name)!, dumped.get("f32")!.get(s.name)!];
    return x.some((v, i) => v !== y[i]);
  });
  assert.ok(differ.length > 0, "--precision f32 gives the same gradients as bf16");
  const grad = (name: string) => dumped.get("bf16")!.get(name)!;
  return { grad, specs };
}

/**
 * `--init_from` a file that lacks the first parameter, has an unknown tensor and holds
 * `misShaped` transposed: one stderr line naming all three (after the flag), exit code 2.
 */
export function checkInitFromMismatch<A extends TrainerArgs, S extends TrainerSpec[]>(
  mod: TrainerModule<A, S>,
  script: string,
  flags: string[],
  misShaped: string,
) {
  const dir = Deno.makeTempDirSync();
  const specs = mod.modelSpecs(mod.parseFlags(flags), new mod.Rng(1));
  const zeros = (shape: number[]) => ({
    dtype: "F32" as const,
    shape,
    data: new Float32Array(shape.reduce((x, y) => x * y, 1)),
  });
  const t = new Map(specs.slice(1).map((s) => [s.name, zeros(s.shape)]));
  t.set("bogus.weight", zeros([2]));
  const shape = specs.find((s) => s.name === misShaped)!.shape;
  t.set(misShaped, zeros([...shape].reverse()));
  writeSafetensors(`${dir}/w.safetensors`, t);
  ensureBrown();
  const r = runTrainer(script, [
    ...BROWN,
    ...flags,
    ...["--backend", "cpu", "--init_from", `${dir}/w.safetensors`],
    ...["--num_iterations", "1", "--warmdown_iters", "0"],
  ]);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  const re = (x: string) => x.replace(/[.[\]]/g, "\\$&");
  assert.match(r.stderr, new RegExp(`missing 1 \\(${re(specs[0].name)}\\)`));
  assert.match(r.stderr, /unexpected 1 \(bogus\.weight\)/);
  const [rows, cols] = shape;
  assert.match(
    r.stderr,
    new RegExp(
      `mis-shaped 1 \\(${
        re(misShaped)
      }: file \\[${cols},${rows}\\] vs model \\[${rows},${cols}\\]\\)`,
    ),
  );
  assert.equal(r.stderr.trim().split("\n").length, 1, "one line");
  assert.match(r.stderr, /^error: --init_from: /, "names the flag");
  Deno.removeSync(dir, { recursive: true });
}

/** `--init_from` and `--resume` of a file that does not exist: exit code 2 and one line naming the
 * flag and the path (Deno's NotFound names only the path). */
export function checkMissingWeightsFile(script: string, flags: string[]) {
  ensureBrown();
  const dir = Deno.makeTempDirSync(), missing = `${dir}/missing.safetensors`;
  for (const flag of ["--init_from", "--resume"]) {
    const r = runTrainer(script, [
      ...BROWN,
      ...flags,
      ...["--backend", "cpu", flag, missing],
      ...["--num_iterations", "1", "--warmdown_iters", "0"],
    ]);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /No such file/);
    assert.ok(r.stderr.startsWith(`error: ${flag}: `) && r.stderr.includes(missing), r.stderr);
    assert.equal(r.stderr.trim().split("\n").length, 1, `${flag}: one line, got ${r.stderr}`);
  }
  Deno.removeSync(dir);
}
