// RWKV-7 speedrun trainer: BlinkDL's modded-nanogpt-rwkv train_rwkv7.py (GPT-2-sized RWKV-7 on
// FineWeb, 3200 steps to ~3.27 val loss) in Deno, on our kernels (cuda/), flag for flag.
// One process per GPU (started by run_rwkv7.sh with RANK/WORLD_SIZE/LOCAL_RANK). Read top to bottom:
// flags, model, optimizers, data, training loop. A record attempt edits this file.
const code = Deno.readTextFileSync(new URL(import.meta.url)); // logged first, like the original
import { parseArgs } from "node:util";
import { dirname } from "node:path";
import { Backend, type Tensor } from "./cuda/backend.ts";
import { GradAccumulator, Graph, Param, type Var } from "./cuda/autograd.ts";
import { type Collective, openCollective } from "./cuda/collectives.ts";
import { lmHeadLossBf16, mlpRelu2 } from "./cuda/fused_ops.ts";
import {
  gradBuckets,
  type InputSlot,
  MuonScalars,
  type StepInputs,
  TrainStep,
} from "./cuda/step.ts";
import {
  loadStateByName,
  readSafetensors,
  type StTensor,
  writeSafetensors,
} from "./cuda/safetensors.ts";

// -----------------------------------------------------------------------------
// flags: the original's (same names and defaults) then ours for small runs and tests
const FLAGS = {
  headsz: ["64", "head size (16, 32, 64 or 128)"],
  muon_lr: ["0.02", "Muon lr for the 2-D block matrices"],
  adam_lr: ["0.0026", "Adam lr for misc weights (LoRA, time_*)"],
  ln_lr: ["0.0090", "Adam lr for LayerNorm/GroupNorm weights"],
  device_bsz: ["64", "sequences per device per micro-step"],
  bsz: ["512", "sequences per optimizer step, all devices"],
  random_seed: ["-1", "seed for the initialisation (-1: random, printed)"],
  backend: [
    "",
    "cuda | emu | cpu | dry (dry: record calls, run nothing; default: cuda when a GPU is visible, else cpu)",
  ],
  input_bin: ["data/fineweb10B/fineweb_train_*.bin", "training shards (glob)"],
  input_val_bin: ["data/fineweb10B/fineweb_val_*.bin", "validation shards (glob)"],
  num_iterations: ["3200", "optimizer steps"],
  warmdown_iters: ["914", "steps of linear lr warmdown at the end"],
  val_loss_every: ["125", "val loss every N steps (0: only at the end)"],
  val_tokens: ["10485760", "tokens per val-loss evaluation"],
  sequence_length: ["1024", "T (a multiple of 16)"],
  n_layer: ["12", "blocks"],
  n_embd: ["768", "model width"],
  vocab_size: ["50304", "vocabulary (GPT-2's 50257 padded to a multiple of 128)"],
  save_every: ["0", "checkpoint every N steps (0: only at the end)"],
  init_from: ["", "load weights from a .safetensors file (PyTorch names)"],
  resume: ["", "continue a run from its state_stepNNNNNN.safetensors checkpoint"],
  dump_grads: ["", "write one batch's gradients to this .safetensors file and exit"],
  precision: [
    "bf16",
    "with --dump_grads: bf16 (the training path: bf16 matmul operands, as the original's autocast) or f32 (every op in fp32, for checks against a float64 reference)",
  ],
  log_dir: ["logs", "where run logs and checkpoints go"],
  bucket_cap_mb: ["64", "gradient all-reduce bucket size in MiB (as DDP's; multi-process runs)"],
} as const;
const BOOL_FLAGS = {
  fast_cuda: "backstepping WKV-7 kernel (the original's --fast_cuda)",
  wind_cuda: "tensor-core WKV-7 kernel (the original's --wind_cuda)",
  unfused:
    "time mixing from the generic tape ops (the composition to edit) instead of the fused kernels",
  help: "print the flags",
  cuda_graph:
    "cuda: capture the training step once after warm-up into a CUDA graph and replay it (off " +
    "until a GPU run shows it correct and faster; other backends run eagerly)",
} as const;

function usage(): string {
  const lines = Object.entries(FLAGS).map(([k, [d, h]]) =>
    `  --${k.padEnd(16)} ${h} (default ${d || "none"})`
  );
  for (const [k, h] of Object.entries(BOOL_FLAGS)) lines.push(`  --${k.padEnd(16)} ${h}`);
  return "usage: deno run -A train_rwkv7.ts [flags]\n" + lines.join("\n");
}

export function parseFlags(argv: string[]) {
  const options: Record<string, { type: "string" | "boolean"; default?: string }> = {};
  for (const [k, [d]] of Object.entries(FLAGS)) options[k] = { type: "string", default: d };
  for (const k of Object.keys(BOOL_FLAGS)) options[k] = { type: "boolean" };
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options,
      strict: true,
      allowPositionals: false,
      allowNegative: true,
    }));
  } catch (e) {
    throw new ConfigError(`${(e as Error).message} (see --help)`);
  }
  const str = (k: keyof typeof FLAGS) => values[k] as string;
  const num = (k: keyof typeof FLAGS, integer = true) => {
    const s = str(k), x = Number(s);
    if (s.trim() === "" || !Number.isFinite(x) || (integer && !Number.isInteger(x))) {
      throw new ConfigError(`--${k}: expected ${integer ? "an integer" : "a number"}, got "${s}"`);
    }
    return x;
  };
  return {
    help: Boolean(values.help),
    cuda_graph: Boolean(values.cuda_graph),
    headsz: num("headsz"),
    muon_lr: num("muon_lr", false),
    adam_lr: num("adam_lr", false),
    ln_lr: num("ln_lr", false),
    device_bsz: num("device_bsz"),
    bsz: num("bsz"),
    fast_cuda: Boolean(values.fast_cuda),
    wind_cuda: Boolean(values.wind_cuda),
    unfused: Boolean(values.unfused),
    random_seed: num("random_seed"),
    backend: str("backend"),
    input_bin: str("input_bin"),
    input_val_bin: str("input_val_bin"),
    num_iterations: num("num_iterations"),
    warmdown_iters: num("warmdown_iters"),
    val_loss_every: num("val_loss_every"),
    val_tokens: num("val_tokens"),
    sequence_length: num("sequence_length"),
    n_layer: num("n_layer"),
    n_embd: num("n_embd"),
    vocab_size: num("vocab_size"),
    save_every: num("save_every"),
    init_from: str("init_from"),
    resume: str("resume"),
    dump_grads: str("dump_grads"),
    precision: str("precision") as "bf16" | "f32",
    log_dir: str("log_dir"),
    bucket_cap_mb: num("bucket_cap_mb", false),
  };
}
export type Args = ReturnType<typeof parseFlags>;

export class ConfigError extends Error {}

export function validate(a: Args, world: number) {
  const bad = (m: string) => {
    throw new ConfigError(m);
  };
  if (a.precision !== "bf16" && a.precision !== "f32") {
    bad(`--precision ${a.precision}: expected bf16 or f32`);
  }
  if (a.precision !== "bf16" && !a.dump_grads) {
    bad(`--precision ${a.precision} is for --dump_grads (training runs in bf16, as the original)`);
  }
  if (![16, 32, 64, 128].includes(a.headsz)) {
    bad(`--headsz ${a.headsz}: expected 16, 32, 64 or 128`);
  }
  if (a.n_embd <= 0 || a.n_embd % a.headsz) {
    bad(`--headsz ${a.headsz} does not divide --n_embd ${a.n_embd}`);
  }
  if (a.n_layer < 2) bad(`--n_layer ${a.n_layer}: RWKV-7's init needs at least 2 layers`);
  if (a.sequence_length <= 0 || a.sequence_length % 16) {
    bad(`--sequence_length ${a.sequence_length}: must be a positive multiple of 16 (WKV-7 chunks)`);
  }
  if (a.device_bsz <= 0) bad(`--device_bsz ${a.device_bsz}: must be positive`);
  if (a.bsz <= 0 || a.bsz % (a.device_bsz * world)) {
    bad(`--bsz ${a.bsz} is not divisible by --device_bsz ${a.device_bsz} x ${world} process(es)`);
  }
  const perStep = a.device_bsz * a.sequence_length * world;
  if (a.val_tokens <= 0 || a.val_tokens % perStep) {
    bad(
      `--val_tokens ${a.val_tokens} is not divisible by device_bsz x sequence_length x world = ${perStep}`,
    );
  }
  if (a.num_iterations < 0) bad(`--num_iterations ${a.num_iterations}: must be >= 0`);
  if (a.warmdown_iters < 0 || a.warmdown_iters > a.num_iterations) {
    bad(
      `--warmdown_iters ${a.warmdown_iters}: must be in [0, num_iterations = ${a.num_iterations}]`,
    );
  }
  if (a.vocab_size < 50257 && a.input_bin.includes("fineweb")) {
    bad(
      `--vocab_size ${a.vocab_size} is smaller than GPT-2's 50257 tokens of --input_bin ${a.input_bin}`,
    );
  }
  if (!(a.bucket_cap_mb > 0)) bad(`--bucket_cap_mb ${a.bucket_cap_mb}: must be positive`);
  if (a.resume && a.init_from) {
    bad("--resume and --init_from exclude each other (a checkpoint already has weights)");
  }
}

// -----------------------------------------------------------------------------
// random numbers for the initialisation (seeded; PyTorch's generator is not reproduced)
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number { // mulberry32
    let t = (this.s += 0x6d2b79f5);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  normal(): number {
    const u = Math.max(this.next(), 1e-300), v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

/** nn.init.orthogonal_(x, gain) for one [rows, cols] matrix: Q of a Gaussian's QR, sign-fixed. */
function orthogonal(rows: number, cols: number, gain: number, rng: Rng): Float32Array {
  const [m, n] = rows < cols ? [cols, rows] : [rows, cols]; // QR of the tall orientation
  const q: Float64Array[] = []; // n orthonormal columns of length m (modified Gram-Schmidt)
  for (let j = 0; j < n; j++) {
    const v = new Float64Array(m);
    for (let i = 0; i < m; i++) v[i] = rng.normal();
    const r = Math.hypot(...v); // sign of R's diagonal: positive by construction below
    for (const u of q) {
      let d = 0;
      for (let i = 0; i < m; i++) d += u[i] * v[i];
      for (let i = 0; i < m; i++) v[i] -= d * u[i];
    }
    const norm = Math.hypot(...v) || r;
    for (let i = 0; i < m; i++) v[i] /= norm;
    q.push(v);
  }
  const out = new Float32Array(rows * cols);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) out[i * cols + j] = gain * (rows < cols ? q[i][j] : q[j][i]);
  }
  return out;
}

// -----------------------------------------------------------------------------
// the model: parameters with the PyTorch state_dict names and shapes of the original GPT class

interface ParamSpec {
  name: string;
  shape: number[];
  init: () => Float32Array;
}

export function modelSpecs(a: Args, rng: Rng): ParamSpec[] {
  const C = a.n_embd, L = a.n_layer, N = a.headsz, H = C / N, V = a.vocab_size;
  const specs: ParamSpec[] = [];
  const add = (name: string, shape: number[], init: (n: number) => Float32Array) =>
    specs.push({ name, shape, init: () => init(shape.reduce((x, y) => x * y, 1)) });
  const zeros = (n: number) => new Float32Array(n);
  const fill = (v: number) => (n: number) => new Float32Array(n).fill(v);
  const uniform = (b: number) => (n: number) =>
    Float32Array.from({ length: n }, () => (2 * rng.next() - 1) * b);
  const perChannel = (f: (i: number) => number) => (n: number) =>
    Float32Array.from({ length: n }, (_, i) => f(i));
  const ortho = (shape: number[], scale: number) => () => {
    if (shape.length === 2) {
      const [r, c] = shape;
      return orthogonal(r, c, (r > c ? Math.sqrt(r / c) : 1) * scale, rng);
    }
    const [b, r, c] = shape;
    const out = new Float32Array(b * r * c);
    for (let i = 0; i < b; i++) {
      out.set(orthogonal(r, c, (r > c ? Math.sqrt(r / c) : 1) * scale, rng), i * r * c);
    }
    return out;
  };
  const addOrtho = (name: string, shape: number[], scale: number) =>
    specs.push({ name, shape, init: ortho(shape, scale) });

  add(
    "transformer.wte.weight",
    [V, C],
    (n) => Float32Array.from({ length: n }, () => rng.normal()),
  );
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}.attn.`;
    const r01 = l / (L - 1), r10 = 1 - l / L;
    const ddd = (i: number) => i / C;
    add(p + "time_maa_x", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.6 * r10 ** 0.9)));
    add(p + "time_maa_rg", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.2 * r10)));
    add(p + "time_maa_wa", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.9 * r10)));
    add(
      p + "time_maa_k",
      [1, 1, C],
      perChannel((i) => 1 - (Math.pow(ddd(i), 0.9 * r10) + 0.4 * r01)),
    );
    add(
      p + "time_maa_v",
      [1, 1, C],
      perChannel((i) => 1 - (Math.pow(ddd(i), 0.4 * r10) + 0.6 * r01)),
    );
    // decay_speed + 0.5 ("0.5 comes from F.softplus")
    add(
      p + "time_decay",
      [1, 1, C],
      perChannel((n) => -7 + 5 * (n / (C - 1)) ** (0.85 + 1.0 * r01 ** 0.5) + 0.5),
    );
    add(p + "time_faaaa", [1, 1, H, N], zeros);
    add(p + "time_aaaaa", [1, 1, C], zeros);
    add(p + "time_maa_w1", [C, 28 * 4], zeros);
    addOrtho(p + "time_maa_w2", [4, 28, C], 0.1);
    add(p + "time_decay_w1", [C, 64], zeros);
    addOrtho(p + "time_decay_w2", [64, C], 0.1);
    add(p + "time_aaa_w1", [C, 16], zeros);
    addOrtho(p + "time_aaa_w2", [16, C], 0.1);
    add(p + "time_kkk_w1", [C, 16], zeros);
    addOrtho(p + "time_kkk_w2", [16, C], 0.1);
    add(p + "gate_w1", [C, 120], zeros);
    addOrtho(p + "gate_w2", [120, C], 0.1);
    add(p + "ma_w1", [C, 16], zeros);
    addOrtho(p + "ma_w2", [16, C], 0.1);
    add(p + "time_misc_a", [1, 1, C], zeros);
    add(p + "mk_w1", [C, 16], zeros);
    addOrtho(p + "mk_w2", [16, C], 0.1);
    add(p + "time_misc_k", [1, 1, C], zeros);
    if (l !== 0) {
      add(p + "mv_w1", [C, 16], zeros);
      addOrtho(p + "mv_w2", [16, C], 0.1);
      add(p + "time_misc_v", [1, 1, C], fill(1));
    }
    add(p + "receptance.weight", [C, C], uniform(0.5 / Math.sqrt(C)));
    add(p + "key.weight", [C, C], uniform(0.05 / Math.sqrt(C)));
    add(p + "value.weight", [C, C], uniform(0.5 / Math.sqrt(C)));
    add(p + "output.weight", [C, C], zeros);
    add(p + "ln_x.weight", [C], fill(1));
    add(p + "ln_x.bias", [C], zeros);
    const m = `transformer.h.${l}.mlp.`;
    add(m + "c_fc.weight", [(7 * C) / 2, C], uniform(1 / Math.sqrt(C))); // nn.Linear's default
    add(m + "c_proj.weight", [C, (7 * C) / 2], zeros);
    const b = `transformer.h.${l}.`;
    add(b + "lambdas", [2], (n) => Float32Array.from({ length: n }, (_, i) => (i === 0 ? 1 : 0)));
    add(b + "ln1.weight", [C], fill(1));
    add(b + "ln1.bias", [C], zeros);
    add(b + "ln2.weight", [C], fill(1));
    add(b + "ln2.bias", [C], zeros);
  }
  add("lm_head.weight", [V, C], zeros);
  return specs;
}

const MAA = ["time_maa_rg", "time_maa_wa", "time_maa_k", "time_maa_v"];
/** the WKV-input chain's parameter vectors, in Graph.rwkv7WkvInputs's order */
const WKV_CHAIN_PARAMS = ["time_decay", "time_aaaaa", "time_misc_a", "time_misc_k"];
/** the chain's [B,T,C] inputs: the decay LoRA, key, and the kkk, aaa, ma, mk LoRAs */
type WkvChainInputs = { dec: Var; k0: Var; kkk: Var; aaa: Var; mam: Var; mkm: Var };

export class Model {
  readonly params: Param[] = [];
  readonly byName = new Map<string, Param>();
  /** Every gradient in one buffer, the parameters in reverse order (about the order backward
   * produces their gradients), each at a 256-byte aligned offset: a bucket of the all-reduce is a
   * slice of it, and zeroing every gradient is one memset. */
  readonly grads: Tensor;
  /** [offset, padded length] of parameter i's gradient in `grads`, in elements */
  readonly gradAt: [number, number][] = [];
  constructor(readonly be: Backend, readonly a: Args, specs: ParamSpec[]) {
    const numel = (s: ParamSpec) => s.shape.reduce((x, y) => x * y, 1);
    let total = 0;
    for (let i = specs.length - 1; i >= 0; i--) {
      const padded = Math.ceil(numel(specs[i]) / 64) * 64;
      this.gradAt[i] = [total, padded];
      total += padded;
    }
    this.grads = be.zeros([total], "f32", "grads");
    specs.forEach((s, i) => {
      const grad = this.grads.rows(this.gradAt[i][0], numel(s));
      const p = new Param(be, s.name, be.upload(s.init(), s.shape, "f32", s.name), grad);
      this.params.push(p);
      this.byName.set(s.name, p);
    });
  }
  zeroGrads() {
    this.be.k.mn_memset(this.grads.ptr, 0, BigInt(this.grads.nbytes), this.be.stream);
  }
  p(name: string): Param {
    const p = this.byName.get(name);
    if (!p) throw new Error(`no parameter ${name}`);
    return p;
  }

  /** Mean cross-entropy of the batch (idx, targets: [B*T] int32 on the device); losses [B*T]. */
  forward(g: Graph, idx: Tensor, targets: Tensor, lossScale: number): Tensor {
    const a = this.a, B = a.device_bsz, T = a.sequence_length;
    const P = (n: string) => g.param(this.p(n));
    let x = g.rmsnorm(g.embedding(idx, P("transformer.wte.weight"), [B, T]));
    const x0 = x;
    let v1: Var | null = null;
    // fused: the previous block's MLP output, added to x by the next block's mix + ln1 kernel
    let mlpOut: Var | null = null;
    for (let l = 0; l < a.n_layer; l++) {
      const b = `transformer.h.${l}.`;
      const lambdas = P(b + "lambdas");
      const [l0, l1] = [g.scalarOf(lambdas, 0), g.scalarOf(lambdas, 1)];
      const [ln1w, ln1b] = [P(b + "ln1.weight"), P(b + "ln1.bias")];
      let ln1: Var;
      if (this.a.unfused) {
        x = g.axpby(l0, x, l1, x0);
        ln1 = g.layernorm(x, ln1w, ln1b);
      } else [x, ln1] = g.mixLayernorm(x, mlpOut, l0, x0, l1, ln1w, ln1b);
      const [att, v] = this.timeMix(g, l, ln1, v1);
      v1 = v;
      const [ln2w, ln2b] = [P(b + "ln2.weight"), P(b + "ln2.bias")];
      const [fc, proj] = [P(b + "mlp.c_fc.weight"), P(b + "mlp.c_proj.weight")];
      let mlp: Var;
      if (this.a.unfused) {
        x = g.add(x, att);
        mlp = g.matmul(g.relu2(g.matmul(g.layernorm(x, ln2w, ln2b), fc, true)), proj, true);
      } else {
        // the residual add and ln2 in one kernel (att is bf16, ln2 written as the bf16 operand
        // only); bf16 pre-activation, relu^2 and their gradients (the generic ops on "f32")
        const [sum, h] = g.addLayernorm(x, att, ln2w, ln2b);
        x = sum;
        mlp = mlpRelu2(g, h, fc, proj);
      }
      if (this.a.unfused) x = g.add(x, mlp);
      else mlpOut = mlp;
    }
    if (mlpOut) x = g.add(x, mlpOut);
    x = g.rmsnorm(x);
    // the original's lm_head runs under autocast: bf16 logits, softcapped, then .float()
    // (g.lmHeadLoss is the fp32-logits composition)
    return lmHeadLossBf16(g, x, P("lm_head.weight"), targets, 30, lossScale);
  }

  /** The token shift and the five mixes: xrg, xwa, xk, xv (fused kernels; see mixesUnfused). */
  mixes(g: Graph, x: Var, P: (n: string) => Var): Var[] {
    const xxx = g.rwkv7MixX(x, P("time_maa_x"));
    // the LoRA's hidden layer and outputs bf16 (autocast's matmul and bmm outputs, tanh on the
    // hidden one in bf16), the outputs read and differentiated by the fused mixes
    const h = g.tanh(g.matmul(xxx, P("time_maa_w1"), false, true));
    const m = g.blockMatmul(h, P("time_maa_w2"), true);
    return g.rwkv7Mix4(x, m, MAA.map(P));
  }
  /** mixes from the generic tape ops, one kernel each (--unfused) */
  mixesUnfused(g: Graph, x: Var, P: (n: string) => Var): Var[] {
    const xx = g.axpby(1, g.timeShift(x), -1, x); // time_shift(x) - x
    const xxx = g.add(x, g.mulRow(xx, P("time_maa_x")));
    const m = g.blockMatmul(g.tanh(g.matmul(xxx, P("time_maa_w1"))), P("time_maa_w2"));
    return m.map((mi, i) => g.add(x, g.mul(xx, g.addRow(mi, P(MAA[i])))));
  }

  /** WKV's w, k, a, b from the projections by the generic tape ops, one kernel each (--unfused;
   * Graph.rwkv7WkvInputs computes the same fused) */
  wkvInputsUnfused(g: Graph, ins: WkvChainInputs, P: (n: string) => Var) {
    const w = g.unary(g.addRow(ins.dec, P("time_decay")), "RWKV7_DECAY"); // -softplus(-(..)) - 0.5
    const kk = g.l2norm(g.add(ins.k0, ins.kkk), this.a.headsz);
    const aa = g.sigmoid(g.addRow(ins.aaa, P("time_aaaaa")));
    const ma = g.sigmoid(g.addRow(ins.mam, P("time_misc_a")));
    let k = g.lerp(g.mul(ins.k0, aa), ins.k0, ma); // k*ma + k*a*(1-ma)
    const mk = g.sigmoid(g.addRow(ins.mkm, P("time_misc_k")));
    k = g.mul(k, g.unary(g.mul(w, mk), "EXP_MIN0")); // k * clamp(w*mk, max=0).exp()
    return { w, k, a: g.unary(kk, "NEG"), b: g.mul(kk, aa) };
  }

  /** RWKV7.forward of the original: returns (output, v1) */
  timeMix(g: Graph, layer: number, x: Var, v1: Var | null): [Var, Var] {
    const H = this.a.n_embd / this.a.headsz;
    const P = (n: string) => g.param(this.p(`transformer.h.${layer}.attn.${n}`));
    // bf: the projections feeding the fused WKV-input chain write bf16 (autocast's outputs),
    // which it reads, and it writes their gradients in bf16; the generic ops read fp32
    const bf = !this.a.unfused;
    // the LoRAs' first layers: fused, those that read one input are one GEMM each way
    // (Graph.matmulShared, below); else, and under --unfused, one matmul each
    const first = new Map<string, Var>();
    // (bf16 hidden layers on the fused path: autocast's matmul outputs, tanh/sigmoid in bf16)
    const w1 = (inp: Var, name: string) => first.get(name) ?? g.matmul(inp, P(name), false, bf);
    const lora = (inp: Var, w1name: string, w2: string, outBf16 = false) =>
      g.matmul(w1(inp, w1name), P(w2), false, outBf16);
    const [xrg, xwa, xk, xv] = this.a.unfused ? this.mixesUnfused(g, x, P) : this.mixes(g, x, P);

    const r = g.matmul(xrg, P("receptance.weight"), true);
    const k0 = g.matmul(xk, P("key.weight"), true, bf);
    let v = g.matmul(xv, P("value.weight"), true);
    if (layer === 0) v1 = v;
    else if (this.a.unfused) {
      v = g.lerp(v, v1!, g.sigmoid(g.addRow(lora(xv, "mv_w1", "mv_w2"), P("time_misc_v"))));
    } else v = g.rwkv7ValueMix(v, v1!, lora(xv, "mv_w1", "mv_w2", bf), P("time_misc_v"));
    // bf16 as well: the fused GroupNorm + bonus + gate reads it and writes its gradient in bf16
    const gate = g.matmul(g.sigmoid(w1(xrg, "gate_w1")), P("gate_w2"), false, bf);
    if (!this.a.unfused) {
      // the hidden values bf16: autocast's outputs (tanh reads them in bf16), the operands of
      // their second layers
      const shared = (inp: Var, names: string[]) =>
        g.matmulShared(inp, names.map(P), names.map(() => true))
          .forEach((h, i) => first.set(names[i], h));
      shared(xwa, ["time_decay_w1", "time_aaa_w1", "ma_w1"]);
      shared(xk, ["time_kkk_w1", "mk_w1"]);
    }
    const tanhLora = (inp: Var, w1name: string, w2: string) =>
      g.matmul(g.tanh(w1(inp, w1name)), P(w2), false, bf);
    const ins: WkvChainInputs = {
      dec: tanhLora(xwa, "time_decay_w1", "time_decay_w2"),
      k0,
      kkk: tanhLora(xk, "time_kkk_w1", "time_kkk_w2"),
      aaa: lora(xwa, "time_aaa_w1", "time_aaa_w2", bf),
      mam: lora(xwa, "ma_w1", "ma_w2", bf),
      mkm: lora(xk, "mk_w1", "mk_w2", bf),
    };
    const { w, k, a, b } = this.a.unfused
      ? this.wkvInputsUnfused(g, ins, P)
      : g.rwkv7WkvInputs(ins, WKV_CHAIN_PARAMS.map(P), H);

    // --wind_cuda wins over --fast_cuda, as in the original
    const kernel = this.a.wind_cuda ? "wind" : this.a.fast_cuda ? "fast" : "ref";
    let y = g.wkv7(r, w, k, v, a, b, H, kernel);
    const [lnw, lnb, u] = [P("ln_x.weight"), P("ln_x.bias"), P("time_faaaa")];
    if (this.a.unfused) {
      y = g.groupnorm(y, lnw, lnb, H, 64e-5);
      y = g.mul(g.add(y, g.rwkv7Bonus(r, k, v, u, H)), gate);
    } else y = g.rwkv7GnBonusGate(y, lnw, lnb, r, k, v, u, gate, H, 64e-5);
    // fused: bf16 as autocast's projection (read by the residual add + ln2 kernel)
    return [g.matmul(y, P("output.weight"), true, bf), v1!];
  }
}

// -----------------------------------------------------------------------------
// optimizers: torch.optim.Adam (fused) and Muon, grouped as the original

class Adam {
  step_ = 0;
  readonly m: Tensor[];
  readonly v: Tensor[];
  /** the group's tensors for mn_adam_multi_step, in device memory: one launch steps them all */
  private readonly list: Tensor;
  private readonly total: bigint;
  constructor(
    readonly name: string,
    readonly params: Param[],
    readonly lr: number,
    readonly be: Backend,
  ) {
    this.m = params.map((p) => be.zeros(p.shape, "f32", p.name + ".exp_avg"));
    this.v = params.map((p) => be.zeros(p.shape, "f32", p.name + ".exp_avg_sq"));
    const list = new BigInt64Array(6 * params.length); // {param, grad, m, v, n, offset} each
    const addr = (t: Tensor) => BigInt(Deno.UnsafePointer.value(t.ptr));
    let total = 0n;
    params.forEach((p, i) => {
      list.set(
        [addr(p.data), addr(p.grad), addr(this.m[i]), addr(this.v[i]), p.data.n, total],
        6 * i,
      );
      total += p.data.n;
    });
    this.list = be.upload(new Int32Array(list.buffer), [12 * params.length], "i32", name + ".list");
    this.total = total;
  }
  /** the group's per-step scalars in StepInputs: {lr, step} */
  get inputSlot(): InputSlot {
    return { name: `adam:${this.name}`, dtype: "f32", numel: 2 };
  }
  /** the coming step's lr and (bias-correction) step count, into the host side of `inputs` */
  stage(inputs: StepInputs, lrFactor: number) {
    this.step_++;
    inputs.f32(this.inputSlot.name).set([this.lr * lrFactor, this.step_]);
  }
  /** the step's launch: lr and step are read from device memory (a replayed graph follows them) */
  step(inputs: StepInputs) {
    this.be.k.mn_adam_multi_step_dev(
      this.list.ptr,
      this.params.length,
      this.total,
      inputs.tensor(this.inputSlot.name).ptr,
      0.9,
      0.95,
      1e-8,
      0,
      this.be.stream,
    );
    for (const p of this.params) p.markUpdated();
  }
}

/**
 * Muon: SGD-momentum (Nesterov) whose update is orthogonalised by 5 quintic Newton-Schulz steps
 * (bf16 matmuls, fp32 accumulation), scaled by max(1, rows/cols)^0.5. Parameter i is processed by
 * rank i % world (the original's split; with one process that is every parameter), which writes
 * its bf16 update into a flat buffer that one all-reduce sums over the ranks (as the original).
 */
class Muon {
  momentum = 0.95;
  readonly buf: Tensor[];
  private ws = new Map<string, Tensor>();
  /** Newton-Schulz a, b in device memory (mn_axpby_forward reads them there), uploaded once */
  private readonly ab: Tensor;
  /** momentum and learning rates, from device memory (cuda/step.ts) */
  private readonly scalars: MuonScalars;
  /** every update in bf16, in parameter order (the original's updates_flat): each rank writes its
   * parameters' slots, zeros elsewhere, and one all-reduce gives every rank all of them */
  private readonly flat: Tensor;
  private readonly flat32: Tensor;
  /** element offset of parameter i's slot in `flat` (256-byte aligned) */
  private readonly at: number[] = [];
  constructor(
    readonly name: string,
    readonly params: Param[],
    readonly lr: number,
    readonly be: Backend,
  ) {
    this.buf = params.map((p) => be.zeros(p.shape, "f32", p.name + ".momentum_buffer"));
    this.ab = be.upload(new Float32Array([3.4445, -4.775]), [2], "f32", "muon.ns_ab");
    this.scalars = new MuonScalars(name, params.length);
    let total = 0;
    for (const p of params) {
      this.at.push(total);
      total += Math.ceil(p.numel / 128) * 128;
    }
    this.flat = be.zeros([total], "bf16", "muon.updates_flat");
    this.flat32 = be.alloc([total], "f32", "muon.updates_f32");
  }
  private slot(t: Tensor, i: number): Tensor {
    return t.rows(this.at[i], this.params[i].numel);
  }
  private scratch(key: string, shape: number[], dtype: "f32" | "bf16" = "f32"): Tensor {
    const k = `${key}:${shape.join("x")}:${dtype}`;
    let t = this.ws.get(k);
    if (!t) this.ws.set(k, t = this.be.alloc(shape, dtype, "muon." + key));
    return t;
  }
  private stepLr(_p: Param, lrFactor: number): number {
    return this.lr * lrFactor;
  }
  get inputSlot(): InputSlot {
    return this.scalars.inputSlot;
  }
  stage(inputs: StepInputs, lrFactor: number) {
    this.scalars.stage(inputs, this.momentum, (i) => this.stepLr(this.params[i], lrFactor));
  }
  step(inputs: StepInputs, coll: Collective) {
    const k = this.be.k, s = this.be.stream, sc = this.scalars.at(inputs);
    // the other ranks' slots must hold zeros for the sum
    if (coll.world > 1) k.mn_memset(this.flat.ptr, 0, BigInt(this.flat.nbytes), s);
    this.params.forEach((p, i) => {
      if (i % coll.world !== coll.rank) return; // rank i % world orthogonalises parameter i
      const [rows, cols] = p.shape;
      const n = p.data.n;
      // momentum and 1 from device memory: buf = momentum*buf + g; nesterov: g + momentum*buf
      k.mn_axpby_forward(this.buf[i].ptr, this.buf[i].ptr, p.grad.ptr, sc.mom, sc.one, n, s);
      const g = this.scratch("g", [rows, cols]);
      k.mn_axpby_forward(g.ptr, p.grad.ptr, this.buf[i].ptr, sc.one, sc.mom, n, s);
      const X = this.newtonSchulz5(g, rows, cols);
      // the original writes the scaled update into its bf16 flat buffer before applying it
      k.mn_scale(X.ptr, X.ptr, Math.sqrt(Math.max(1, rows / cols)), n, s);
      k.mn_cast_f32_to_bf16(this.slot(this.flat, i).ptr, X.ptr, n, s);
    });
    if (coll.world > 1) coll.allReduceSum(this.flat); // the original's all_reduce(updates_flat)
    k.mn_cast_bf16_to_f32(this.flat32.ptr, this.flat.ptr, this.flat.n, s);
    this.params.forEach((p, i) => {
      const upd = this.slot(this.flat32, i).ptr; // p += -lr * update, lr from device memory
      k.mn_axpby_forward(p.data.ptr, p.data.ptr, upd, sc.one, sc.lr(i), p.data.n, s);
      p.markUpdated();
    });
  }
  /** every rank gets every momentum buffer (each lives on its owner), e.g. before a checkpoint */
  gatherState(coll: Collective) {
    if (coll.world > 1) this.buf.forEach((b, i) => coll.broadcast(b, i % coll.world));
  }
  /** zeropower_via_newtonschulz5 on G [rows, cols]; returns X in G's orientation */
  private newtonSchulz5(G: Tensor, rows: number, cols: number): Tensor {
    const k = this.be.k, s = this.be.stream;
    const c = 2.0315; // (a, b: this.ab)
    const tall = rows > cols;
    const [m, n] = tall ? [cols, rows] : [rows, cols]; // iterate on the wide orientation
    const X = this.scratch("X", [m, n]);
    if (tall) k.mn_transpose(X.ptr, G.ptr, rows, cols, s);
    else k.mn_memcpy_d2d(X.ptr, G.ptr, BigInt(X.nbytes), s);
    const nrm = this.scratch("norm", [1]);
    k.mn_sum_squares(nrm.ptr, X.ptr, X.n, s);
    k.mn_scale_by_inv_norm(X.ptr, X.ptr, nrm.ptr, 1e-7, X.n, s); // X / (||X|| + 1e-7), on the device
    const Xb = this.scratch("Xb", [m, n], "bf16"), A = this.scratch("A", [m, m], "bf16");
    const Bb = this.scratch("B", [m, n], "bf16"), Bf = this.scratch("Bf", [m, n]);
    for (let it = 0; it < 5; it++) {
      k.mn_cast_f32_to_bf16(Xb.ptr, X.ptr, X.n, s);
      k.mn_gemm_bf16(0, 1, m, m, n, 1, Xb.ptr, n, 0n, Xb.ptr, n, 0n, 0, A.ptr, m, 0n, 1, 1, s); // A = X X^T
      k.mn_gemm_bf16(0, 0, m, n, m, 1, A.ptr, m, 0n, Xb.ptr, n, 0n, 0, Bb.ptr, n, 0n, 1, 1, s); // B = A X
      k.mn_cast_bf16_to_f32(Bf.ptr, Bb.ptr, Bf.n, s);
      k.mn_axpby_forward(X.ptr, X.ptr, Bf.ptr, this.ab.ptr, this.ab.rows(1, 1).ptr, X.n, s); // aX + bB
      k.mn_gemm_bf16(0, 0, m, n, m, c, A.ptr, m, 0n, Bb.ptr, n, 0n, 1, X.ptr, n, 0n, 0, 1, s); // + c A B
    }
    if (!tall) return X;
    const Y = this.scratch("Y", [rows, cols]);
    k.mn_transpose(Y.ptr, X.ptr, m, n, s);
    return Y;
  }
}

/** lr multiplier: no warmup, constant, then linear warmdown over the last warmdown_iters steps */
function getLr(it: number, a: Args): number {
  if (it < a.num_iterations - a.warmdown_iters) return 1.0;
  return (a.num_iterations - it) / a.warmdown_iters;
}

// -----------------------------------------------------------------------------
// data: modded-nanogpt .bin shards (256 int32 header: magic 20240520, version 1, count; uint16)

function globFiles(pattern: string, flag: string): string[] {
  const dir = dirname(pattern), base = pattern.slice(dir.length + 1);
  const re = new RegExp(
    "^" + base.split("*").map((s) => s.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*") + "$",
  );
  let names: string[] = [];
  try {
    names = [...Deno.readDirSync(dir)].filter((e) => e.isFile && re.test(e.name)).map((e) =>
      e.name
    );
  } catch { /* reported below */ }
  if (names.length === 0) {
    throw new ConfigError(
      `--${flag} ${pattern}: no files match (FineWeb: deno run -A data/cached_fineweb10B.ts 18; small local corpus: deno task data:brown)`,
    );
  }
  return names.sort().map((n) => `${dir}/${n}`);
}

function readShard(path: string): Uint16Array {
  const bytes = Deno.readFileSync(path);
  if (bytes.length < 1024) {
    throw new ConfigError(
      `${path}: ${bytes.length} bytes, shorter than the 1024-byte shard header`,
    );
  }
  const h = new Int32Array(bytes.buffer, 0, 256);
  if (h[0] !== 20240520) {
    throw new ConfigError(`${path}: magic ${h[0]}, expected 20240520 (not a token shard?)`);
  }
  if (h[1] !== 1) throw new ConfigError(`${path}: version ${h[1]}, expected 1`);
  if (bytes.length !== 1024 + 2 * h[2]) {
    throw new ConfigError(
      `${path}: header says ${h[2]} tokens (${
        1024 + 2 * h[2]
      } bytes) but the file has ${bytes.length} bytes`,
    );
  }
  return new Uint16Array(bytes.buffer, 1024, h[2]);
}

class DataLoader {
  readonly files: string[];
  shard = 0;
  pos = 0;
  private tokens!: Uint16Array;
  ntokTotal = 0;
  constructor(
    pattern: string,
    flag: string,
    readonly B: number,
    readonly T: number,
    readonly rank: number,
    readonly world: number,
    readonly vocab: number,
  ) {
    this.files = globFiles(pattern, flag);
    for (const f of this.files) {
      const n = readShardHeaderCount(f);
      if (n < world * B * T + 1) {
        throw new ConfigError(
          `${f}: ${n} tokens, fewer than one batch of ${world}x${B}x${T}+1; lower --device_bsz or --sequence_length`,
        );
      }
      this.ntokTotal += n;
    }
    this.reset();
  }
  reset() {
    this.seek(0, this.rank * this.B * this.T);
  }
  seek(shard: number, pos: number) {
    this.shard = shard;
    this.pos = pos;
    this.tokens = readShard(this.files[shard]);
  }
  /** inputs and targets for the next batch, [B*T] int32 each */
  next(): [Int32Array, Int32Array] {
    const n = this.B * this.T;
    const buf = this.tokens.subarray(this.pos, this.pos + n + 1);
    for (let i = 0; i < buf.length; i++) {
      if (buf[i] >= this.vocab) {
        throw new ConfigError(
          `${this.files[this.shard]}: token ${buf[i]} at ${
            this.pos + i
          } is >= --vocab_size ${this.vocab}`,
        );
      }
    }
    const x = Int32Array.from(buf.subarray(0, n)), y = Int32Array.from(buf.subarray(1, n + 1));
    this.pos += n * this.world;
    if (this.pos + n * this.world + 1 > this.tokens.length) {
      this.seek((this.shard + 1) % this.files.length, this.rank * n);
    }
    return [x, y];
  }
}

function readShardHeaderCount(path: string): number {
  const f = Deno.openSync(path);
  try {
    const h = new Int32Array(256);
    const got = f.readSync(new Uint8Array(h.buffer)) ?? 0;
    if (got < 1024) {
      throw new ConfigError(`${path}: ${got} bytes, shorter than the 1024-byte shard header`);
    }
    if (h[0] !== 20240520) {
      throw new ConfigError(`${path}: magic ${h[0]}, expected 20240520 (not a token shard?)`);
    }
    if (h[1] !== 1) throw new ConfigError(`${path}: version ${h[1]}, expected 1`);
    return h[2];
  } finally {
    f.close();
  }
}

// -----------------------------------------------------------------------------
// checkpoints: weights under the PyTorch names (+ optimizer state and position in a second file)

function hostParam(be: Backend, p: Param, which: "data" | "grad" = "data"): StTensor {
  return {
    dtype: "F32",
    shape: [...p.shape],
    data: be.download(which === "data" ? p.data : p.grad) as Float32Array,
  };
}

function saveCheckpoint(
  path: string,
  model: Model,
  adams: Adam[],
  muon: Muon,
  step: number,
  loader: DataLoader,
  a: Args,
) {
  const be = model.be;
  const weights = new Map<string, StTensor>();
  for (const p of model.params) weights.set(p.name, hostParam(be, p));
  const opt = new Map<string, StTensor>();
  const adamSteps: Record<string, number> = {};
  for (const o of adams) {
    adamSteps[o.name] = o.step_;
    o.params.forEach((p, i) => {
      opt.set(p.name + ".exp_avg", {
        dtype: "F32",
        shape: [...p.shape],
        data: be.download(o.m[i]) as Float32Array,
      });
      opt.set(p.name + ".exp_avg_sq", {
        dtype: "F32",
        shape: [...p.shape],
        data: be.download(o.v[i]) as Float32Array,
      });
    });
  }
  muon.params.forEach((p, i) =>
    opt.set(p.name + ".momentum_buffer", {
      dtype: "F32",
      shape: [...p.shape],
      data: be.download(muon.buf[i]) as Float32Array,
    })
  );
  const meta = {
    step: String(step),
    adam_steps: JSON.stringify(adamSteps),
    train_shard: String(loader.shard),
    train_pos: String(loader.pos),
    world: String(loader.world),
    config: JSON.stringify(a),
  };
  // optimizer file first: a checkpoint whose weights exist always has its optimizer state
  writeSafetensors(path.replace(/\.safetensors$/, ".opt.safetensors"), opt, meta);
  writeSafetensors(path, weights, { format: "pt", step: String(step) });
}

/** --init_from or --resume: a file's error starts with the flag (Deno's own, like NotFound, do
 * not name it) */
function loadWeights(flag: "init_from" | "resume", path: string, model: Model) {
  let file;
  try {
    file = readSafetensors(path);
  } catch (e) {
    throw new ConfigError(`--${flag}: ${(e as Error).message}`);
  }
  const expected = model.params.map((p) => ({ name: p.name, shape: [...p.shape] }));
  let tensors;
  try {
    tensors = loadStateByName(expected, file.tensors, path);
  } catch (e) {
    throw new ConfigError(`--${flag}: ${(e as Error).message}`);
  }
  for (const p of model.params) {
    const t = tensors.get(p.name)!;
    const data = t.dtype === "F32" ? t.data as Float32Array : null;
    if (!data) throw new ConfigError(`--${flag}: ${path}: ${p.name} is ${t.dtype}, expected F32`);
    model.be.write(p.data, data);
    p.markUpdated();
  }
}

// -----------------------------------------------------------------------------
// main

function main() {
  const a = parseFlags(Deno.args);
  if (a.help) {
    console.log(usage());
    return;
  }
  const rank = Number(Deno.env.get("RANK") ?? 0), world = Number(Deno.env.get("WORLD_SIZE") ?? 1);
  validate(a, world);
  if (world > 1 && a.dump_grads) {
    throw new ConfigError("--dump_grads runs in one process (WORLD_SIZE=1)");
  }
  const master = rank === 0;
  let be: Backend, coll: Collective;
  try {
    be = Backend.open({ name: a.backend || undefined });
    coll = openCollective(be); // NCCL on cuda, TCP on cpu/emu, nothing with one process
    coll.agree(JSON.stringify(a), "flags"); // ranks started with different flags refuse to run
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  // -1: a random seed, rank 0's for everyone (identical initial weights on every rank)
  const seedWanted = a.random_seed !== -1 ? a.random_seed : Math.floor(Math.random() * 2 ** 31);
  const seed = Number(coll.agree(String(seedWanted), "seed", false));
  const B = a.device_bsz, T = a.sequence_length;
  const valSteps = a.val_tokens / (B * T * world);
  const accum = a.bsz / (B * world);

  const trainLoader = new DataLoader(a.input_bin, "input_bin", B, T, rank, world, a.vocab_size);
  const model = new Model(be, a, modelSpecs(a, new Rng(seed)));
  if (a.init_from) loadWeights("init_from", a.init_from, model);
  const g = new Graph(be);
  const xT = be.alloc([B * T], "i32", "x"), yT = be.alloc([B * T], "i32", "y");
  const upload = ([x, y]: [Int32Array, Int32Array]) => {
    be.write(xT, x);
    be.write(yT, y);
  };
  const meanLoss = (losses: Tensor) =>
    (be.download(losses) as Float32Array).reduce((s, v) => s + v, 0) / losses.numel;

  if (a.dump_grads) {
    g.precision = a.precision;
    upload(trainLoader.next());
    const loss = meanLoss(model.forward(g, xT, yT, 1));
    g.backward();
    const out = new Map<string, StTensor>();
    for (const p of model.params) out.set(p.name, hostParam(be, p, "grad"));
    out.set("loss", { dtype: "F32", shape: [], data: new Float32Array([loss]) });
    writeSafetensors(a.dump_grads, out, {
      loss: String(loss),
      backend: be.name,
      precision: a.precision,
    });
    console.log(
      `loss ${
        loss.toFixed(6)
      }; gradients of ${model.params.length} parameters written to ${a.dump_grads}`,
    );
    coll.destroy();
    be.close();
    return;
  }
  const valLoader = new DataLoader(
    a.input_val_bin,
    "input_val_bin",
    B,
    T,
    rank,
    world,
    a.vocab_size,
  );

  // the original's six optimizer groups
  const blocks = model.params.filter((p) => p.name.startsWith("transformer.h."));
  const local = (p: Param) => p.name.replace(/^transformer\.h\.\d+\./, "");
  const isMuon = (p: Param) =>
    p.shape.length === 2 && !p.name.includes("_w1") && !p.name.includes("_w2");
  const adams = [
    new Adam("Adam-wte", [model.p("transformer.wte.weight")], 0.3, be),
    new Adam("Adam-head", [model.p("lm_head.weight")], 0.002, be),
    new Adam(
      "Adam",
      blocks.filter((p) => !isMuon(p) && !local(p).includes("lambdas") && !local(p).includes("ln")),
      a.adam_lr,
      be,
    ),
    new Adam("Adam-s", blocks.filter((p) => local(p).includes("lambdas")), 0.02, be),
    new Adam("Adam-LN", blocks.filter((p) => local(p).includes("ln")), a.ln_lr, be),
  ];
  const muon = new Muon("Muon !!!", blocks.filter(isMuon), a.muon_lr, be);

  let startStep = 0;
  if (a.resume) {
    loadWeights("resume", a.resume, model);
    const optPath = a.resume.replace(/\.safetensors$/, ".opt.safetensors");
    let st;
    try {
      st = readSafetensors(optPath);
    } catch (e) {
      throw new ConfigError(`--resume: ${(e as Error).message}`);
    }
    const steps = JSON.parse(st.metadata.adam_steps ?? "{}");
    for (const o of adams) {
      o.step_ = steps[o.name] ?? 0;
      o.params.forEach((p, i) => {
        be.write(o.m[i], st.tensors.get(p.name + ".exp_avg")!.data as Float32Array);
        be.write(o.v[i], st.tensors.get(p.name + ".exp_avg_sq")!.data as Float32Array);
      });
    }
    muon.params.forEach((p, i) =>
      be.write(muon.buf[i], st.tensors.get(p.name + ".momentum_buffer")!.data as Float32Array)
    );
    startStep = Number(st.metadata.step);
    if (Number(st.metadata.world ?? 1) !== world) {
      throw new ConfigError(
        `--resume ${a.resume}: saved with WORLD_SIZE=${st.metadata.world}, now ${world} (the data order would differ)`,
      );
    }
    // saved: rank 0's position; rank r reads B*T tokens further on, as the loader interleaves
    trainLoader.seek(Number(st.metadata.train_shard), Number(st.metadata.train_pos) + rank * B * T);
  }

  // logging: the log file starts with the flags, this script's source and the hardware
  const runId = new Date().toISOString().replace(/T/, "-").replace(/:/g, "-").slice(0, 19);
  const logfile = `${a.log_dir}/${runId}.txt`;
  // On a terminal, a progress bar sits below the log lines (on stderr, never in the log file).
  const tty = master && Deno.stderr.isTerminal();
  const enc = new TextEncoder();
  const log = (s: string, console_ = true) => {
    if (!master) return;
    if (tty) Deno.stderr.writeSync(enc.encode("\r\x1b[K"));
    if (console_) console.log(s);
    Deno.writeTextFileSync(logfile, s + "\n", { append: true });
  };
  const wall0 = performance.now();
  const progress = (done: number, loss: number) => {
    if (!tty) return;
    const total = a.num_iterations - startStep, k = done - startStep, w = 30;
    const secs = (performance.now() - wall0) / 1000, eta = k > 0 ? (secs / k) * (total - k) : NaN;
    const bar = "=".repeat(Math.round((w * k) / Math.max(total, 1))).padEnd(w, " ");
    const fmt = (
      x: number,
    ) => (Number.isFinite(x)
      ? `${Math.floor(x / 60)}m${String(Math.round(x % 60)).padStart(2, "0")}s`
      : "?");
    Deno.stderr.writeSync(
      enc.encode(
        `\r[${bar}] step ${done}/${a.num_iterations} loss ${loss.toFixed(3)} elapsed ${
          fmt(secs)
        } eta ${fmt(eta)}`,
      ),
    );
  };
  const vals: [number, number][] = []; // (step, val loss) for the final summary
  // each rank names its own device (LOCAL_RANK's): rank 0 in the log header, the others here
  const device = `${be.deviceName(be.currentDevice)} (LOCAL_RANK ${be.currentDevice})`;
  if (!master) console.log(`rank ${rank}: device ${device}`);
  if (master) {
    Deno.mkdirSync(`${a.log_dir}/${runId}`, { recursive: true });
    const hw = [
      `Running Deno ${Deno.version.deno} (V8 ${Deno.version.v8}), backend ${be.name} (${be.libPath}), GEMM ${be.gemmProvider()}`,
      `device: ${device}; WORLD_SIZE=${world}`,
    ];
    Deno.writeTextFileSync(
      logfile,
      JSON.stringify(a) + "\n" + "=".repeat(100) + "\n" + code + "=".repeat(100) + "\n" +
        hw.join("\n") + "\n" + "=".repeat(100) + "\n",
    );
    console.log(JSON.stringify(a));
    console.log(
      `Training DataLoader: total number of tokens: ${trainLoader.ntokTotal} across ${trainLoader.files.length} files`,
    );
    console.log(
      `Validation DataLoader: total number of tokens: ${valLoader.ntokTotal} across ${valLoader.files.length} files`,
    );
    // Each step reads bsz x T tokens; past the end the loader wraps around and trains on the same
    // tokens again, which the records never do (they download enough FineWeb shards).
    const tokensNeeded = a.num_iterations * a.bsz * T;
    if (trainLoader.ntokTotal < tokensNeeded) {
      log(
        `warning: --input_bin has ${trainLoader.ntokTotal} tokens but ${a.num_iterations} steps read ${tokensNeeded}: the data repeats (FineWeb: deno run -A data/cached_fineweb10B.ts ${
          Math.ceil(tokensNeeded / 1e8)
        })`,
      );
    }
    for (const o of [...adams, muon]) {
      for (const p of o.params) {
        console.log(o.name.padEnd(10), JSON.stringify(p.shape).padEnd(20), p.name);
      }
    }
    console.log("model params", model.params.reduce((s, p) => s + p.numel, 0));
    console.log(
      `seed ${seed}; ${accum} micro-step(s) of ${B}x${T} per step; backend ${be.name}; log ${logfile}`,
    );
  }

  // micro-step gradients summed in a fixed order: N micro-steps here train bit-identically to N
  // processes (see GradAccumulator)
  const gradAcc = new GradAccumulator(be, model.params, model.grads);
  const valT = be.alloc([1], "f32", "val_loss"), lossT = be.alloc([1], "f32", "train_loss");
  const buckets = world > 1 ? gradBuckets(model, a.bucket_cap_mb * 2 ** 20) : [];
  if (buckets.length) {
    log(
      `gradient all-reduce: ${buckets.length} bucket(s) of <= ${a.bucket_cap_mb} MiB, in this order: ` +
        buckets.map((b, i) =>
          `#${i} ${(b.grads.nbytes / 2 ** 20).toFixed(2)} MiB ${b.names[0]}${
            b.names.length > 1
              ? ` .. ${b.names[b.names.length - 1]} (${b.names.length} tensors)`
              : ""
          }`
        ).join("; "),
    );
  }
  const train = new TrainStep(be, g, model, {
    accum,
    world,
    rows: B * T,
    coll,
    buckets,
    optimizers: [...adams, muon],
    acc: gradAcc,
    loss: lossT,
    cudaGraph: a.cuda_graph,
    log,
  });
  let trainingTimeMs = 0;
  be.sync();
  let t0 = performance.now();
  for (let step = startStep; step <= a.num_iterations; step++) {
    be.mark(`step ${step}`); // a point for call traces (bench/step_cost.ts); nothing otherwise
    const last = step === a.num_iterations;
    if (step === 10) { // the original ignores the first 10 steps' time
      trainingTimeMs = 0;
      t0 = performance.now();
    }
    const timedSteps = step <= 11 ? NaN : step - 10 + 1;

    if (last || (a.val_loss_every > 0 && step % a.val_loss_every === 0)) {
      be.sync();
      trainingTimeMs += performance.now() - t0;
      valLoader.reset();
      g.gradEnabled = false;
      for (let i = 0; i < valSteps; i++) {
        upload(valLoader.next());
        const losses = model.forward(g, xT, yT, 1);
        // the mean over all val batches, summed on the device (beta 0 starts it afresh)
        const w = 1 / (losses.numel * valSteps);
        be.k.mn_sum_into(valT.ptr, losses.ptr, losses.n, w, i === 0 ? 0 : 1, be.stream);
        g.release();
      }
      g.gradEnabled = true;
      coll.allReduceMean(valT); // (nothing with one process)
      const valLoss = (be.download(valT) as Float32Array)[0];
      vals.push([step, valLoss]);
      log(
        `step:${step}/${a.num_iterations} val_loss:${valLoss.toFixed(4)} train_time:${
          trainingTimeMs.toFixed(0)
        }ms step_avg:${fmtAvg(trainingTimeMs / (timedSteps - 1))}ms`,
      );
      be.sync();
      t0 = performance.now();
    }

    // as the original: also at step 0 when --save_every is set (not again right after --resume)
    const saveDue = last || (a.save_every > 0 && step % a.save_every === 0);
    if (saveDue && (step > startStep || step === 0)) {
      be.sync();
      trainingTimeMs += performance.now() - t0;
      muon.gatherState(coll);
      if (master) {
        saveCheckpoint(
          `${a.log_dir}/${runId}/state_step${String(step).padStart(6, "0")}.safetensors`,
          model,
          adams,
          muon,
          step,
          trainLoader,
          a,
        );
      }
      be.sync();
      t0 = performance.now();
    }
    if (last) break;

    // --------------- training section ---------------
    const frac = Math.min(step / 500, 1);
    muon.momentum = (1 - frac) * 0.85 + frac * 0.95;
    // the host prepares the step (it may run a step ahead of the device), then enqueues it
    train.prepare(() => trainLoader.next(), getLr(step, a));
    train.run(() => {
      for (const o of adams) o.step(train.inputs);
      muon.step(train.inputs, coll);
    });
    // ----------------------------------------------

    if (master) {
      const trainLoss = (be.download(lossT) as Float32Array)[0]; // the step's one wait
      const approx = trainingTimeMs + performance.now() - t0;
      log(
        `step:${step + 1}/${a.num_iterations} train_loss:${trainLoss.toFixed(4)} train_time:${
          approx.toFixed(0)
        }ms step_avg:${fmtAvg(approx / timedSteps)}ms`,
      );
      progress(step + 1, trainLoss);
    }
  }
  log(`peak memory consumption: ${Math.floor(be.peakBytes / 1024 / 1024)} MiB`);
  if (master && vals.length) {
    const secs = (performance.now() - wall0) / 1000, steps = a.num_iterations - startStep;
    const [s0, v0] = vals[0], [s1, v1] = vals[vals.length - 1];
    console.log(
      `summary: ${steps} steps in ${secs.toFixed(0)} s (${
        (a.bsz * T * steps / secs).toFixed(0)
      } tokens/s over ${world} process(es)); ` +
        `val loss ${v0.toFixed(4)} at step ${s0} -> ${v1.toFixed(4)} at step ${s1}; log ${logfile}`,
    );
  }
  if (be.profile.size && master) {
    console.log("kernel time by function (MN_PROFILE=1):\n" + be.profileReport());
  }
  train.close();
  coll.destroy();
  be.close();
}

function fmtAvg(x: number): string {
  return Number.isFinite(x) ? x.toFixed(2) : "nan";
}

if (import.meta.main) {
  try {
    main();
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(`error: ${e.message}`);
      Deno.exit(2);
    }
    throw e;
  }
}
