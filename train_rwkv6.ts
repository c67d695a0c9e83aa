// RWKV-6 speedrun trainer: BlinkDL's modded-nanogpt-rwkv train_rwkv6.py (GPT-2-sized RWKV-6 on
// FineWeb, 5100 steps) in Deno, on our kernels (cuda/), flag for flag.
// One process per GPU (started by run_rwkv6.sh with RANK/WORLD_SIZE/LOCAL_RANK). Read top to bottom:
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
  muon_lr: ["0.00036", "Muon lr for the 2-D block matrices (receptance/key/value/output, MLP)"],
  adam_lr: ["0.0020", "Adam lr for everything else (embedding, LoRAs, time_*, norms)"],
  emb_scale: ["1.5", "embedding output multiplier (boosts the tied embedding's Adam lr)"],
  device_bsz: ["64", "sequences per device per micro-step"],
  bsz: ["512", "sequences per optimizer step, all devices"],
  random_seed: ["-1", "seed for the initialisation (-1: random, printed)"],
  backend: [
    "",
    "cuda | emu | cpu | dry (dry: record calls, run nothing; default: cuda when a GPU is visible, else cpu)",
  ],
  input_bin: ["data/fineweb10B/fineweb_train_*.bin", "training shards (glob)"],
  input_val_bin: ["data/fineweb10B/fineweb_val_*.bin", "validation shards (glob)"],
  num_iterations: ["5100", "optimizer steps"],
  warmdown_iters: ["1450", "steps of linear lr warmdown at the end"],
  val_loss_every: ["125", "val loss every N steps (0: only at the end)"],
  val_tokens: ["10485760", "tokens per val-loss evaluation"],
  sequence_length: ["1024", "T"],
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
  fla_cuda:
    "our chunked WKV-6 kernel (cuda/wkv6_chunked.cu) in place of flash-linear-attention's chunk_rwkv6, which the original's --fla_cuda calls: the same function, evaluated in 16-step chunks",
  unfused:
    "time mixing from the generic tape ops (timeMixUnfused: the composition to edit) instead of the fused kernels",
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
  return "usage: deno run -A train_rwkv6.ts [flags]\n" + lines.join("\n");
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
    emb_scale: num("emb_scale", false),
    device_bsz: num("device_bsz"),
    bsz: num("bsz"),
    fla_cuda: Boolean(values.fla_cuda),
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
  if (a.n_embd % 2) bad(`--n_embd ${a.n_embd}: must be even (the MLP is 7*n_embd/2 wide)`);
  if (a.n_layer < 2) bad(`--n_layer ${a.n_layer}: RWKV-6's init needs at least 2 layers`);
  if (a.sequence_length <= 0) bad(`--sequence_length ${a.sequence_length}: must be positive`);
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

// -----------------------------------------------------------------------------
// the model: parameters with the PyTorch names (named_parameters order) and shapes of the
// original GPT class. The embedding is tied to lm_head (`wte.weight = lm_head.weight`): one
// parameter, named transformer.wte.weight as named_parameters() lists it, initialised as
// nn.Linear's weight (uniform +-1/sqrt(n_embd)) since the tie replaces the embedding's init.

interface ParamSpec {
  name: string;
  shape: number[];
  init: () => Float32Array;
}

export const D_MIX_LORA = 32, D_DECAY_LORA = 64, D_GATE_LORA = 160;

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

  add("transformer.wte.weight", [V, C], uniform(1 / Math.sqrt(C))); // = lm_head.weight
  for (let l = 0; l < L; l++) {
    const p = `transformer.h.${l}.attn.`;
    const r01 = l / (L - 1), r10 = 1 - l / L;
    const ddd = (i: number) => i / C;
    // "initialization comes from fitting my RWKV-6 7B runs"
    add(p + "time_maa_x", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.6 * r10 ** 0.9)));
    add(p + "time_maa_w", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.9 * r10)));
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
    add(p + "time_maa_r", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.2 * r10)));
    add(p + "time_maa_g", [1, 1, C], perChannel((i) => 1 - Math.pow(ddd(i), 0.2 * r10)));
    add(
      p + "time_decay",
      [1, 1, C],
      perChannel((n) => -6 + 5.5 * (n / (C - 1)) ** (0.85 + 1.0 * r01 ** 0.5)),
    );
    add(
      p + "time_faaaa",
      [H, N],
      perChannel((n) => r01 * (2.5 - n / (C - 1)) + (((n + 1) % 3) - 1) * 0.1),
    );
    add(p + "time_maa_w1", [C, D_MIX_LORA * 5], zeros);
    add(p + "time_maa_w2", [5, D_MIX_LORA, C], uniform(0.01));
    add(p + "time_decay_w1", [C, D_DECAY_LORA], zeros);
    add(p + "time_decay_w2", [D_DECAY_LORA, C], uniform(0.01));
    add(p + "receptance.weight", [C, C], uniform(0.5 / Math.sqrt(C)));
    add(p + "key.weight", [C, C], uniform(0.05 / Math.sqrt(C)));
    add(p + "value.weight", [C, C], uniform(0.5 / Math.sqrt(C)));
    add(p + "output.weight", [C, C], zeros);
    add(p + "gate_w1", [C, D_GATE_LORA], uniform(0.01));
    add(p + "gate_w2", [D_GATE_LORA, C], uniform(0.01));
    add(p + "ln_x.weight", [C], fill(1));
    add(p + "ln_x.bias", [C], zeros);
    const m = `transformer.h.${l}.mlp.`;
    add(m + "c_fc.weight", [(7 * C) / 2, C], uniform(1 / Math.sqrt(C))); // nn.Linear's default
    add(m + "c_proj.weight", [C, (7 * C) / 2], zeros);
    const b = `transformer.h.${l}.`;
    add(b + "ln1.weight", [C], fill(1));
    add(b + "ln1.bias", [C], zeros);
    add(b + "ln2.weight", [C], fill(1));
    add(b + "ln2.bias", [C], zeros);
  }
  add("ln_out.weight", [C], fill(1));
  add("ln_out.bias", [C], zeros);
  return specs;
}

/** The five gradient outputs of the WKV-6 backward and their accumulate mask: the kernel writes
 * every one, so an input that needs none gets a throwaway buffer, overwritten (bit clear). */
function wkv6Grads(g: Graph, xs: Var[]): [Deno.PointerValue[], number] {
  const [ptrs, acc] = g.grads(...xs);
  return [ptrs.map((p, i) => p ?? g.out(xs[i].shape, "wkv6.unused").ptr), acc];
}

/**
 * WKV-6 as a graph op (the original's WKV_6 autograd.Function): r, k, v, w [B,T,C] cast to bf16
 * (its .bfloat16() calls; a value its producer wrote in bf16, as the fused path's are, is its own
 * operand), u [H,N] rounded to bf16 too (gradient straight through) but passed as
 * fp32. Output y [B,T,C] fp32; backward writes all five gradients (grads' mask). In the graph's "f32"
 * precision (gradient checks) nothing is rounded: the kernel's fp32-input entry points.
 * chunked (--fla_cuda): mn_wkv6_chunked_* instead, the same function evaluated in 16-step chunks
 * as flash-linear-attention's chunk_rwkv6 does (the original calls it with scale 1, u [H,N] and
 * log-decay -exp(w)); its per-chunk states live from forward to backward. bf16 path only.
 */
export function wkv6(
  g: Graph,
  r: Var,
  k: Var,
  v: Var,
  w: Var,
  u: Var,
  H: number,
  chunked = false,
): Var {
  const [B, T, C] = r.shape;
  const N = C / H;
  for (const x of [k, v, w]) {
    if (x.shape.join() !== r.shape.join()) throw new Error("wkv6: r, k, v, w shapes differ");
  }
  const f32 = g.precision === "f32";
  if (f32 && chunked) {
    throw new Error("wkv6: the chunked kernel (--fla_cuda) has no fp32-input path");
  }
  let uf = u.t;
  if (!f32) {
    uf = g.out(u.shape, "wkv6.u");
    g.k.mn_cast_bf16_to_f32(uf.ptr, g.bf16Of(u).ptr, uf.n, g.s);
  }
  const [rp, kp, vp, wp] = [r, k, v, w].map((x) => (f32 ? x.t : g.bf16Of(x)).ptr);
  const y = g.out([B, T, C], "wkv6");
  if (chunked) {
    const n = new BigInt64Array(2); // [s_ckpt elements, backward ws elements]
    g.k.mn_wkv6_chunked_sizes(n.subarray(0, 1), n.subarray(1, 2), B, T, H, N);
    const sCkpt = g.out([Number(n[0])], "wkv6.s_ckpt"); // [B,H,ceil(T/16),N,N]
    g.k.mn_wkv6_chunked_forward(y.ptr, sCkpt.ptr, rp, kp, vp, wp, uf.ptr, B, T, H, N, g.s);
    return g.node(y, [r, k, v, w, u], (out) => {
      const [grads, acc] = wkv6Grads(g, [r, k, v, w, u]);
      const ws = g.out([Number(n[1])], "wkv6.ws");
      g.k.mn_wkv6_chunked_backward(
        ...grads,
        out.g.ptr,
        rp,
        kp,
        vp,
        wp,
        uf.ptr,
        sCkpt.ptr,
        ws.ptr,
        B,
        T,
        H,
        N,
        acc,
        g.s,
      );
    });
  }
  if (f32) g.k.mn_wkv6_forward_f32(y.ptr, rp, kp, vp, wp, uf.ptr, B, T, H, N, g.s);
  else g.k.mn_wkv6_forward(y.ptr, rp, kp, vp, wp, uf.ptr, B, T, H, N, g.s);
  return g.node(y, [r, k, v, w, u], (out) => {
    const [grads, acc] = wkv6Grads(g, [r, k, v, w, u]);
    const ws = g.out([B * H * N * (T + 1)], "wkv6.ws");
    if (f32) {
      g.k.mn_wkv6_backward_f32(
        ...grads,
        out.g.ptr,
        rp,
        kp,
        vp,
        wp,
        uf.ptr,
        ws.ptr,
        B,
        T,
        H,
        N,
        acc,
        g.s,
      );
    } else {
      const args = [...grads, out.g.ptr, rp, kp, vp, wp, uf.ptr, ws.ptr, B, T, H, N, acc] as const;
      g.k.mn_wkv6_backward(...args, g.s);
    }
  });
}

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
    const wte = P("transformer.wte.weight"); // tied: also the lm_head below
    const emb = g.embedding(idx, wte, [B, T]);
    let x = g.axpby(a.emb_scale, emb, 0, emb); // x * emb_scale
    for (let l = 0; l < a.n_layer; l++) {
      const b = `transformer.h.${l}.`;
      const att = this.timeMix(g, l, g.layernorm(x, P(b + "ln1.weight"), P(b + "ln1.bias")));
      const [ln2w, ln2b] = [P(b + "ln2.weight"), P(b + "ln2.bias")];
      const [fc, proj] = [P(b + "mlp.c_fc.weight"), P(b + "mlp.c_proj.weight")];
      let mlp: Var;
      if (a.unfused) {
        x = g.add(x, att);
        mlp = g.matmul(g.relu2(g.matmul(g.layernorm(x, ln2w, ln2b), fc, true)), proj, true);
      } else {
        // the residual add and ln2 in one kernel (att is bf16, ln2 written as the bf16 operand
        // only); bf16 pre-activation, relu^2 and their gradients (the generic ops on "f32")
        const [sum, h] = g.addLayernorm(x, att, ln2w, ln2b);
        x = sum;
        mlp = mlpRelu2(g, h, fc, proj);
      }
      x = g.add(x, mlp);
    }
    x = g.layernorm(x, P("ln_out.weight"), P("ln_out.bias"));
    // no softcap. The original's lm_head runs under autocast: bf16 logits, then .float() for the
    // cross-entropy; --unfused keeps the generic op's fp32 logits
    if (a.unfused) return g.lmHeadLoss(x, wte, targets, 0, lossScale);
    return lmHeadLossBf16(g, x, wte, targets, 0, lossScale);
  }

  /** RWKV6.forward of the original, from the fused kernels (timeMixUnfused: the same math from
   * the generic tape ops, --unfused) */
  timeMix(g: Graph, layer: number, x: Var): Var {
    if (this.a.unfused) return this.timeMixUnfused(g, layer, x);
    const H = this.a.n_embd / this.a.headsz;
    const P = (n: string) => g.param(this.p(`transformer.h.${layer}.attn.${n}`));
    // token shift + the first mix, then the five mixes: bf16 matmul operands on the bf16 path
    const xxx = g.rwkv7MixX(x, P("time_maa_x")); // RWKV-7's first mix is the same math
    const m = g.blockMatmul(g.tanh(g.matmul(xxx, P("time_maa_w1"))), P("time_maa_w2"));
    const maa = ["time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g"].map(P);
    const [xw, xk, xv, xr, xg] = g.rwkv6Mix5(x, m, maa);

    // r and v feed only WKV-6: written as its bf16 operands (what autocast's nn.Linear returns)
    const r = g.matmul(xr, P("receptance.weight"), true, true);
    const k = g.matmul(xk, P("key.weight"), true);
    const v = g.matmul(xv, P("value.weight"), true, true);
    // bf16 as well: the fused GroupNorm * gate reads it and writes its gradient in bf16
    const gate = g.matmul(g.tanh(g.matmul(xg, P("gate_w1"))), P("gate_w2"), false, true);
    const ww = g.matmul(g.tanh(g.matmul(xw, P("time_decay_w1"))), P("time_decay_w2"));
    // w = time_decay + ww; kw = k * clamp(w, max=0).exp(): WKV-6's bf16 operands
    const { w, kw } = g.rwkv6DecayK(ww, k, P("time_decay"));
    const y = wkv6(g, r, kw, v, w, P("time_faaaa"), H, this.a.fla_cuda);
    const yg = g.rwkv6GnGate(y, P("ln_x.weight"), P("ln_x.bias"), gate, H, 64e-5);
    // bf16 as autocast's projection (read by the residual add + ln2 kernel)
    return g.matmul(yg, P("output.weight"), true, true);
  }

  /** timeMix from the generic tape ops, one kernel each (--unfused): the composition to edit */
  timeMixUnfused(g: Graph, layer: number, x: Var): Var {
    const H = this.a.n_embd / this.a.headsz;
    const P = (n: string) => g.param(this.p(`transformer.h.${layer}.attn.${n}`));
    const xx = g.axpby(1, g.timeShift(x), -1, x); // time_shift(x) - x
    const xxx = g.add(x, g.mulRow(xx, P("time_maa_x")));
    const [mw, mk, mv, mr, mg] = g.blockMatmul(
      g.tanh(g.matmul(xxx, P("time_maa_w1"))),
      P("time_maa_w2"),
    );
    const mix = (m: Var, base: string) => g.add(x, g.mul(xx, g.addRow(m, P(base))));
    const xw = mix(mw, "time_maa_w"), xk = mix(mk, "time_maa_k"), xv = mix(mv, "time_maa_v");
    const xr = mix(mr, "time_maa_r"), xg = mix(mg, "time_maa_g");

    const r = g.matmul(xr, P("receptance.weight"), true);
    const k = g.matmul(xk, P("key.weight"), true);
    const v = g.matmul(xv, P("value.weight"), true);
    const gate = g.matmul(g.tanh(g.matmul(xg, P("gate_w1"))), P("gate_w2"));
    const ww = g.matmul(g.tanh(g.matmul(xw, P("time_decay_w1"))), P("time_decay_w2"));
    const w = g.addRow(ww, P("time_decay"));

    const kw = g.mul(k, g.unary(w, "EXP_MIN0")); // k * clamp(w, max=0).exp()
    let y = wkv6(g, r, kw, v, w, P("time_faaaa"), H, this.a.fla_cuda);
    y = g.groupnorm(y, P("ln_x.weight"), P("ln_x.bias"), H, 64e-5);
    return g.matmul(g.mul(y, gate), P("output.weight"), true);
  }
}

// -----------------------------------------------------------------------------
// optimizers: torch.optim.AdamW (fused, weight_decay 0, i.e. Adam) and Muon, grouped as the
// original: Muon for receptance/key/value/output and the MLP, Adam for every other parameter

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
 * Muon: SGD-momentum 0.95 (Nesterov) whose update is orthogonalised by 5 quintic Newton-Schulz
 * steps (bf16 matmuls, fp32 accumulation), scaled by max(rows, cols)^0.5 (this original's scale,
 * "update.square().mean() == 1"). Parameter i is processed by rank i % world and the updates are
 * exchanged in one all-reduce of a flat bf16 buffer (the original computes every update on every
 * rank: same result, less work).
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
  /** parameter p's learning rate this step: the original's lr * max(rows, cols)^0.5 (its split
   * of [3C, C] fused-QKV matrices never applies: none is 3:1 here) */
  private stepLr(p: Param, lrFactor: number): number {
    const [rows, cols] = p.shape;
    return this.lr * lrFactor * Math.sqrt(Math.max(rows, cols));
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
      // the original applies the bf16 output of its Newton-Schulz iteration
      k.mn_cast_f32_to_bf16(this.slot(this.flat, i).ptr, X.ptr, n, s);
    });
    if (coll.world > 1) coll.allReduceSum(this.flat); // one collective for every update
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
  // PyTorch's state_dict() of the original lists the tied weight under both names, lm_head.weight
  // last, and a strict load_state_dict wants both: the file holds it twice (README, "Checkpoints")
  weights.set("lm_head.weight", weights.get("transformer.wte.weight")!);
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
    // a PyTorch state_dict of this model (and our checkpoints) hold the tied weight twice
    const inFile = new Map(file.tensors);
    const head = inFile.get("lm_head.weight"), wte = inFile.get("transformer.wte.weight");
    if (head && (!wte || head.shape.join() === wte.shape.join())) {
      if (!wte) inFile.set("transformer.wte.weight", head);
      else if (head.data.some((v, i) => !Object.is(v, wte.data[i]))) {
        throw new Error(
          `${path}: lm_head.weight and transformer.wte.weight differ, but this model ties them (one tensor)`,
        );
      }
      inFile.delete("lm_head.weight");
    }
    tensors = loadStateByName(expected, inFile, path);
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

  // the original's two optimizer groups: Muon for the attention's receptance/key/value/output
  // and the MLP (its name test also lists 'attn.gate.', which no parameter matches), AdamW with
  // weight_decay 0 for everything else (the tied embedding, time_*, LoRAs, norms)
  const isMuon = (p: Param) =>
    [".attn.receptance.", "attn.key.", "attn.value.", "attn.gate.", "attn.output.", ".mlp."]
      .some((s) => p.name.includes(s));
  const adams = [new Adam("Adam", model.params.filter((p) => !isMuon(p)), a.adam_lr, be)];
  const muon = new Muon("Muon", model.params.filter(isMuon), a.muon_lr, be);

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
  const log = (s: string, console_ = true) => {
    if (!master) return;
    if (console_) console.log(s);
    Deno.writeTextFileSync(logfile, s + "\n", { append: true });
  };
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
    }
  }
  log(`peak memory consumption: ${Math.floor(be.peakBytes / 1024 / 1024)} MiB`);
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
