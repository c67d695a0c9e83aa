// A small tape autograd over the kernel ABI, so a record attempt can change a model's forward
// without hand-writing its backward: every op below launches its forward kernel and, when grad is
// on, records a closure that launches the paired backward kernel(s). Each backward call tells its
// kernel, per gradient output, whether to add into it or overwrite it (the `accumulate` mask of
// kernels.h; see Graph.grads): the first writer of an activation gradient overwrites an
// uninitialised buffer, later writers (a value used twice) add; parameter gradients always add.
// Micro-steps are summed by GradAccumulator.
//
//   const g = new Graph(be);
//   const h = g.linear(g.rmsnorm(x), W);  ...  const loss = g.lmHeadLoss(h, head, targets, 30);
//   g.backward();          // runs the tape in reverse; parameter grads are now in p.grad
//   g.release();           // returns this step's activations to the pool (reused next step)
//
// Memory: activations come from a pool of exact-size buffers that are reused step after step, so
// after the first step there are no allocations. An activation's gradient is taken from the pool
// (not zeroed: its first writer overwrites it) when first needed in backward, or is the incoming
// gradient itself where the op passes it through (add, views), and goes back to the pool as soon
// as its producer's backward ran.
import { type Backend, type Dtype, DTYPE_BYTES, PEAK_SITES, Tensor } from "./backend.ts";
import { kernelsHeaderConstants } from "./abi.ts";

/** A trainable tensor: fp32 master weights, fp32 gradient, bf16 shadow copy for matmuls. */
export class Param {
  readonly grad: Tensor;
  /** Where backward adds this parameter's gradient: `grad`, except during a micro-step after the
   * first one of GradAccumulator.run (then a zeroed buffer of its own, added to `grad` after). */
  sink: Tensor;
  private shadow: Tensor | null = null;
  private shadowFresh = false;
  /** `grad`: where the gradient lives, zeroed by the caller (e.g. a view of one flat buffer that
   * holds every gradient, for bucketed all-reduces); by default a zeroed allocation of its own. */
  constructor(
    readonly be: Backend,
    readonly name: string,
    readonly data: Tensor,
    grad?: Tensor,
  ) {
    if (grad && (grad.dtype !== "f32" || grad.numel !== data.numel)) {
      throw new Error(`Param ${name}: gradient ${grad} does not fit ${data}`);
    }
    this.grad = grad
      ? grad.view(data.shape, name + ".grad")
      : be.zeros(data.shape, "f32", name + ".grad");
    this.sink = this.grad;
  }
  get shape(): readonly number[] {
    return this.data.shape;
  }
  get numel(): number {
    return this.data.numel;
  }
  /** bf16 copy of the weights, refreshed once per optimizer step (see markUpdated). */
  bf16(): Tensor {
    if (!this.shadow) this.shadow = this.be.alloc(this.data.shape, "bf16", this.name + ".bf16");
    if (!this.shadowFresh) {
      this.be.k.mn_cast_f32_to_bf16(this.shadow.ptr, this.data.ptr, this.data.n, this.be.stream);
      this.shadowFresh = true;
    }
    return this.shadow;
  }
  markUpdated() {
    this.shadowFresh = false;
  }
  zeroGrad() {
    this.be.k.mn_memset(this.grad.ptr, 0, BigInt(this.grad.nbytes), this.be.stream);
  }
}

/**
 * Gradient accumulation over micro-steps in PyTorch's order (AccumulateGrad): the first micro-step's
 * backward writes p.grad (zero beforehand); each later one computes its gradient alone, in zeroed
 * buffers, which are then added to p.grad: one rounding per element, in micro-step order. Letting
 * backward add into p.grad directly would fold micro-step 2's terms into micro-step 1's sums inside
 * the kernels' own reductions, so 1 process x N micro-steps would round differently from N
 * processes x 1 micro-step, whose all-reduce adds whole gradients in rank order (cuda/collectives.ts).
 * With this order the two are bit-identical (launcher_test.ts). Costs one more gradient buffer,
 * allocated only when there is a second micro-step. With `flat`, the buffer every p.grad is a view
 * of (a trainer's Model.grads), the extra buffer has the same layout: one memset and one add per
 * later micro-step.
 */
export class GradAccumulator {
  private extra: Tensor | null = null;
  private sinks: Tensor[] = [];
  constructor(
    readonly be: Backend,
    readonly params: readonly Param[],
    readonly flat?: Tensor,
  ) {}
  private allocate() {
    if (!this.flat) {
      this.sinks = this.params.map((p) => this.be.alloc(p.shape, "f32", p.name + ".micro_grad"));
      return;
    }
    const flat = this.flat, extra = this.be.alloc([flat.numel], "f32", "micro_grads");
    const base = BigInt(Deno.UnsafePointer.value(flat.ptr));
    this.sinks = this.params.map((p) => {
      const bytes = BigInt(Deno.UnsafePointer.value(p.grad.ptr)) - base;
      const at = Number(bytes / 4n);
      if (bytes % 4n || at < 0 || at + p.numel > flat.numel) {
        throw new Error(`GradAccumulator: ${p.name}'s gradient is not inside ${flat}`);
      }
      return extra.rows(at, p.numel).view(p.shape, p.name + ".micro_grad");
    });
    this.extra = extra;
  }
  /** microStep(i) runs micro-step i's forward, backward and release; i = 0 .. accum-1.
   * deferLastAdd: the last micro-step's add into `flat` is left to the caller, slice by slice
   * (addSlice over slices that tile `flat`), e.g. each all-reduce bucket as soon as it is final. */
  run(accum: number, microStep: (i: number) => void, deferLastAdd = false) {
    const k = this.be.k, s = this.be.stream;
    for (let i = 0; i < accum; i++) {
      if (i === 0) {
        microStep(i);
        continue;
      }
      if (!this.sinks.length) this.allocate();
      const zero = (t: Tensor) => k.mn_memset(t.ptr, 0, BigInt(t.nbytes), s);
      if (this.extra) zero(this.extra);
      else this.sinks.forEach(zero);
      this.params.forEach((p, j) => p.sink = this.sinks[j]);
      try {
        microStep(i);
      } finally {
        for (const p of this.params) p.sink = p.grad;
      }
      if (deferLastAdd && i === accum - 1) {
        if (!this.extra) throw new Error("GradAccumulator: deferLastAdd needs the flat buffer");
        continue;
      }
      if (this.extra) k.mn_axpy(this.flat!.ptr, 1, this.extra.ptr, this.flat!.n, s);
      else this.params.forEach((p, j) => k.mn_axpy(p.grad.ptr, 1, this.sinks[j].ptr, p.grad.n, s));
    }
  }
  /** The add of one slice of `flat` (its elements' micro-step gradient into the running sum):
   * the same elementwise sums as the whole-buffer add, for run(..., deferLastAdd). */
  addSlice(slice: Tensor) {
    const flat = this.flat!, extra = this.extra!;
    const bytes = BigInt(Deno.UnsafePointer.value(slice.ptr)) -
      BigInt(Deno.UnsafePointer.value(flat.ptr));
    const at = Number(bytes / 4n);
    if (bytes % 4n || at < 0 || at + slice.numel > flat.numel) {
      throw new Error(`GradAccumulator: ${slice} is not inside ${flat}`);
    }
    this.be.k.mn_axpy(slice.ptr, 1, extra.rows(at, slice.numel).ptr, slice.n, this.be.stream);
  }
}

/** A value in the graph: a tensor, and its gradient once backward asks for it. */
export class Var {
  g: Tensor | null = null;
  /** the parameter whose gradient `g` is part of, for a view of one (scalarOf); else `param` */
  gradOf: Param | null = null;
  /** A bf16 copy of t its producer wrote alongside (the matmul/WKV operand), or null. */
  bf16: Tensor | null = null;
  /** backward closures recorded with this value as an input: the writers of its gradient */
  uses = 0;
  /** Its producer's backward reads the gradient only as a bf16 GEMM operand (a matmul output):
   * a sole consumer that can may write the gradient in bf16 (Graph.gradSinksBf16), as autocast's
   * gradient of a bf16 output is, and no cast runs. */
  bf16Grad = false;
  /** Its producer's backward can read up to this many bf16 gradient parts in place of an fp32
   * gradient (rwkv7Mix4: a mixed input feeding two matmuls). */
  maxGradParts = 0;
  /** recorded uses that can write a bf16 part (matmul dX GEMMs) */
  partUses = 0;
  /** the bf16 parts written so far (Graph.gradPart): the gradient is their sum in fp32 */
  gradParts: Tensor[] = [];
  /** recorded uses that can write or add into a bf16 gradient (Graph.gradSinkBf16Acc) */
  bf16Writers = 0;
  constructor(
    readonly t: Tensor,
    readonly requiresGrad: boolean,
    readonly param: Param | null = null,
  ) {
    if (param) {
      this.g = param.sink;
      this.gradOf = param;
    }
  }
  get shape(): readonly number[] {
    return this.t.shape;
  }
}

/** The first stack frame in the model's code (a trainer, not the tape), as "file:line". */
function modelSite(): string {
  for (const line of (new Error().stack ?? "").split("\n").slice(1)) {
    const m = line.match(/([\w.-]+\.ts):(\d+):\d+\)?$/);
    if (m && !/^(autograd|fused_ops|backend|step)\.ts$/.test(m[1])) return `${m[1]}:${m[2]}`;
  }
  return "(the tape's backward)";
}

/** The tape pools' buffers by site (their live buffers, then their idle ones), largest first:
 * taken each time a pool grows, so the last one is the pools' part of the peak (the backend adds
 * the rest: Backend.peakSitesWithRest). */
function peakBreakdown(pools: Set<Pool>): [string, number][] {
  const by = new Map<string, number>();
  let idle = 0;
  for (const p of pools) idle += p.addSites(by)[1];
  by.set("(the tape pool's idle buffers)", idle);
  return [...by].sort((a, b) => b[1] - a[1]);
}

/** MN_PEAK_SITES: the pools of each backend, whose live buffers make up its peak */
const peakPools = new Map<Backend, Set<Pool>>();

/** Exact-size buffer pool: a step's buffers are handed back and reused by the next step. */
class Pool {
  private free = new Map<string, Tensor[]>();
  /** MN_PEAK_SITES: address -> where the live buffer was taken ("site label (dtype)"), bytes */
  private sites = new Map<bigint, [string, number]>();
  /** the site of the buffer being taken */
  private pending: [string, number] | null = null;
  constructor(private be: Backend) {
    if (!PEAK_SITES) return;
    let pools = peakPools.get(be);
    if (!pools) peakPools.set(be, pools = new Set());
    pools.add(this);
  }
  take(shape: readonly number[], dtype: Dtype, label: string): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const key = `${n * DTYPE_BYTES[dtype]}`;
    const list = this.free.get(key);
    if (PEAK_SITES) this.pending = [`${modelSite()} ${label} (${dtype})`, n * DTYPE_BYTES[dtype]];
    const fresh = !list?.length;
    const t = fresh ? this.be.alloc([n], dtype, label) : list!.pop()!;
    if (this.pending) {
      this.sites.set(BigInt(Deno.UnsafePointer.value(t.ptr)), this.pending);
      this.pending = null;
      // the pools grew: what they hold now is their part of the peak
      if (fresh) this.be.peakSites = peakBreakdown(peakPools.get(this.be)!);
    }
    return new Tensor(t.ptr, shape, dtype, label);
  }
  /** adds this pool's live buffers by site into `by`; returns [live, idle] bytes */
  addSites(by: Map<string, number>): [number, number] {
    let live = 0, idle = 0;
    for (const [s, b] of this.sites.values()) {
      by.set(s, (by.get(s) ?? 0) + b);
      live += b;
    }
    for (const l of this.free.values()) for (const f of l) idle += f.nbytes;
    return [live, idle];
  }
  give(t: Tensor) {
    if (PEAK_SITES) this.sites.delete(BigInt(Deno.UnsafePointer.value(t.ptr)));
    const key = `${t.nbytes}`;
    let list = this.free.get(key);
    if (!list) this.free.set(key, list = []);
    list.push(t);
  }
}

const OP = kernelsHeaderConstants();
/** The trace mark before each memset of an activation gradient (bench/step_cost.ts counts them) */
export const GRAD_MEMSET_MARK = "activation-gradient memset";
/** WKV-7 structure: "ref" = wkv7g, "fast" = backstepping, "wind" = tensor-core chunk-16. */
export type Wkv7Kernel = "ref" | "fast" | "wind";
export type UnaryOp = "TANH" | "SIGMOID" | "RWKV7_DECAY" | "EXP_MIN0" | "NEG";

function sameShape(what: string, a: readonly number[], b: readonly number[]) {
  if (a.length !== b.length || a.some((d, i) => d !== b[i])) {
    throw new Error(`${what}: shapes [${a.join(",")}] and [${b.join(",")}] differ`);
  }
}
/** The mixes' arguments: `count` values m_j shaped as x and as many parameter vectors of C */
function checkMixes(op: string, x: Var, m: Var[], maa: Var[], count: number) {
  if (m.length !== count || maa.length !== count) {
    throw new Error(`${op}: ${count} m and ${count} maa, got ${m.length} and ${maa.length}`);
  }
  m.forEach((mj) => sameShape(op, x.shape, mj.shape));
  const C = x.shape[x.shape.length - 1];
  for (const p of maa) {
    if (p.t.numel !== C) throw new Error(`${op}: maa has ${p.t.numel} elements, not ${C}`);
  }
}
/** A gradient an fp32 kernel may add into: a bf16 one (gradSinksBf16) had a single writer. */
function fp32Grad(g: Tensor): Tensor {
  if (g.dtype !== "f32") {
    throw new Error(`gradient ${g} is bf16: it has one writer (gradSinksBf16)`);
  }
  return g;
}
/** kernels.h mn_mix_layernorm_backward's widest rows (entry_checks.h kMixLayernormMaxC) */
const MIX_LAYERNORM_MAX_C = 1024;
function rowsCols(v: Var): [number, number] {
  const C = v.shape[v.shape.length - 1];
  return [v.t.numel / C, C];
}

export class Graph {
  gradEnabled = true;
  /**
   * "bf16" (training): matmul operands and WKV-7 inputs rounded to bf16, fp32 accumulation, as
   * autocast does. "f32": everything fp32 (and the wkv7g structure), for gradient checks whose
   * finite differences would otherwise measure bf16 rounding.
   */
  precision: "bf16" | "f32" = "bf16";
  private tape: (() => void)[] = [];
  /** each parameter's first recorded use in this forward: the tape index of that entry */
  private firstUses = new Map<Param, number>();
  private live: Tensor[] = []; // this step's activations, returned to the pool by release()
  /** while backward runs: what the running closure took with out() (its scratch: a bf16 copy of
   * an upstream gradient, a kernel's workspace), back to the pool as soon as the closure returns
   * (later launches on the same stream reuse it only after this closure's kernels) */
  private temps: Tensor[] | null = null;
  private pool: Pool;
  private consts = new Map<number, Tensor>();
  /** gradient buffers this graph took from its pool (only those may be handed on by passGrad) */
  private pooledGrads = new WeakSet<Tensor>();
  /** A gradient buffer handed to several values at once (add's backward: the identity to both
   * inputs) is shared until all but one holder have dropped it or copied it before writing:
   * each holder's view of it maps to one record, `holders` counting the views still held. */
  private sharedGrads = new WeakMap<Tensor, { holders: number }>();
  /** memsets of activation gradients so far (the fallbacks of grad() and grads(); 0 in the models) */
  gradMemsets = 0;
  readonly k: Backend["k"];
  readonly s: Deno.PointerValue;

  constructor(readonly be: Backend) {
    this.pool = new Pool(be);
    this.k = be.k;
    this.s = be.stream;
  }

  // ---- bookkeeping (public so that a script can define its own ops: allocate with out(), wrap
  // the result with node(out, inputs, backward), take input gradients with grad()) ----
  out(shape: readonly number[], label: string, dtype: Dtype = "f32"): Tensor {
    const t = this.pool.take(shape, dtype, label);
    (this.temps ?? this.live).push(t);
    return t;
  }
  needs(...vs: (Var | null | undefined)[]): boolean {
    return this.gradEnabled && vs.some((v) => v && v.requiresGrad);
  }
  /** Records a backward closure; `inputs`: the values whose gradients it adds to (for firstUse). */
  record(fn: () => void, inputs: readonly (Var | null)[]) {
    for (const v of inputs) {
      if (v) v.uses++;
      const p = v?.gradOf;
      if (p && !this.firstUses.has(p)) this.firstUses.set(p, this.tape.length);
    }
    this.tape.push(fn);
  }
  /** The gradient buffer of v, zero-filled on first use (null when v needs no gradient): for a
   * writer that adds into only part of it. Costs a memset (counted in gradMemsets); ops that write
   * the whole gradient use grads() instead. */
  grad(v: Var): Deno.PointerValue {
    if (!v.requiresGrad) return null;
    if (v.g) this.ownGrad(v);
    else {
      this.takeGrad(v);
      this.be.mark(GRAD_MEMSET_MARK);
      this.k.mn_memset(v.g!.ptr, 0, BigInt(v.g!.nbytes), this.s);
      this.gradMemsets++;
    }
    return v.g!.ptr;
  }
  private takeGrad(v: Var): Tensor {
    const t = this.pool.take(v.shape, "f32", "grad");
    this.pooledGrads.add(t);
    return v.g = t;
  }
  /**
   * The gradient outputs of one backward call, in its signature order, and its `accumulate` mask
   * (kernels.h): bit i set when the i-th gradient already holds a sum to add to (a parameter's, or
   * an activation's written by an earlier consumer), clear when this call is its first writer (the
   * buffer comes from the pool uninitialised and the kernel writes all of it). The caller must
   * write every element of each gradient it gets with a clear bit. null / no-grad entries: a NULL
   * pointer. A gradient that is new and appears twice in one call is zeroed and added into by
   * both (kernels do not promise to write aliased outputs in signature order), unless `inOrder`
   * (the kernel documents that it does, e.g. axpby's dx == dy): then its first occurrence
   * overwrites and the later ones add.
   */
  grads(...vs: (Var | null)[]): [Deno.PointerValue[], number] {
    return this.gradsOf(vs, false);
  }
  /** grads() for a kernel that writes aliased gradient outputs in signature order */
  gradsInOrder(...vs: (Var | null)[]): [Deno.PointerValue[], number] {
    return this.gradsOf(vs, true);
  }
  private gradsOf(vs: (Var | null)[], inOrder: boolean): [Deno.PointerValue[], number] {
    for (const v of vs) {
      if (!v?.g) continue;
      fp32Grad(v.g);
      if (v.requiresGrad) this.ownGrad(v); // an add: v's own buffer
    }
    let acc = 0;
    const ptrs = vs.map((v, i) => {
      if (!v || !v.requiresGrad) return null;
      if (!v.g) {
        if (!inOrder && vs.indexOf(v, i + 1) >= 0) return this.grad(v), acc |= 1 << i, v.g!.ptr;
        return this.takeGrad(v).ptr;
      }
      acc |= 1 << i; // an earlier occurrence in this call took it: add
      return v.g.ptr;
    });
    return [ptrs, acc];
  }
  /**
   * Gives x the gradient y.g, whose elements are x's one for one (an identity backward: add,
   * views): when x has none yet it takes y.g over (no copy; y's dropGrad then has nothing to
   * return), else y.g is added into it. A y.g this graph did not take from its pool (set by a
   * caller) is copied rather than handed on, so the pool never takes in a foreign buffer.
   * adopt = false: copy even then (y.g still has other uses).
   */
  passGrad(x: Var, y: Var & { g: Tensor }, adopt = true) {
    if (!x.requiresGrad) return;
    if (y.g.numel !== x.t.numel) {
      throw new Error(`passGrad: ${y.g} does not fit the gradient of ${x.t}`);
    }
    if (y.g.dtype === "bf16") return this.passGradBf16(x, y as Var & { g: Tensor });
    if (x.g) {
      this.k.mn_axpy(this.ownGrad(x).ptr, 1, y.g.ptr, x.t.n, this.s);
    } else if (adopt && this.pooledGrads.has(y.g)) {
      const t = y.g.view(x.shape, "grad");
      this.pooledGrads.add(t);
      x.g = t;
      y.g = null as unknown as Tensor; // handed on: y's dropGrad must not pool it
    } else {
      this.k.mn_memcpy_d2d(this.takeGrad(x).ptr, y.g.ptr, BigInt(y.g.nbytes), this.s);
    }
  }
  /**
   * v's gradient for a kernel that follows the accumulate convention (kernels.h): [pointer, add].
   * On first use the buffer comes from the pool unzeroed and the kernel overwrites it (add false:
   * no memset, no read); later, add true. An input that needs no gradient gets a throw-away
   * buffer (for kernels whose gradient outputs are all required).
   */
  gradSink(v: Var): [Deno.PointerValue, boolean] {
    if (!v.requiresGrad) return [this.out(v.shape, "unused.grad").ptr, false];
    if (v.g) return [fp32Grad(this.ownGrad(v)).ptr, true];
    return [this.takeGrad(v).ptr, false];
  }
  /**
   * bf16 gradient buffers for vs, to be overwritten by one backward call, when every v may take
   * one: its producer reads the gradient only as a bf16 GEMM operand (bf16Grad), this call is its
   * only writer (one recorded use, no gradient yet) and the graph runs bf16. Else null: the
   * caller writes fp32 gradients (gradSink) and the producer casts.
   */
  gradSinksBf16(vs: readonly Var[]): [Deno.PointerValue, boolean][] | null {
    if (this.precision !== "bf16") return null;
    if (!vs.every((v) => v.requiresGrad && v.bf16Grad && v.uses === 1 && !v.g)) return null;
    return vs.map((v) => {
      const t = this.pool.take(v.shape, "bf16", "grad.bf16");
      this.pooledGrads.add(t);
      v.g = t;
      return [t.ptr, false];
    });
  }
  /**
   * A bf16 buffer for one more part of v's gradient, to be overwritten by a matmul's dX GEMM, when
   * v's producer reads its gradient as bf16 parts (maxGradParts) and every recorded use of v is
   * such a writer, no more of them than the producer reads: autocast's bf16 dX of each consumer,
   * summed in fp32 by the producer instead of by a GEMM accumulating into an fp32 buffer. Else
   * null (the writer adds into v's fp32 gradient as usual). Every writer decides alike, so a
   * value's gradient is all parts or all fp32.
   */
  gradPart(v: Var): Tensor | null {
    if (this.precision !== "bf16" || !v.requiresGrad || v.g) return null;
    if (v.uses > v.maxGradParts || v.partUses !== v.uses) return null;
    const t = this.pool.take(v.shape, "bf16", "grad.part");
    v.gradParts.push(t);
    return t;
  }
  /** v's bf16 gradient parts summed into an fp32 gradient (widened, added in part order: the
   * float sum a kernel reading the parts computes), for a producer that cannot read parts here. */
  foldParts(v: Var): Deno.PointerValue {
    const [first, ...rest] = v.gradParts;
    const g = this.takeGrad(v);
    this.k.mn_cast_bf16_to_f32(g.ptr, first.ptr, first.n, this.s);
    for (const p of rest) {
      const t = this.out(v.shape, "grad.part.f32");
      this.k.mn_cast_bf16_to_f32(t.ptr, p.ptr, p.n, this.s);
      this.k.mn_axpy(g.ptr, 1, t.ptr, g.n, this.s);
    }
    for (const p of v.gradParts) this.pool.give(p);
    v.gradParts = [];
    return g.ptr;
  }
  /**
   * Whether v's gradient may be one bf16 buffer that each of its writers overwrites or adds into
   * (the sum rounded to bf16 at every add, as autograd accumulates a bf16 tensor's gradient): its
   * producer reads it in bf16 (bf16Grad) and every recorded use can write so (bf16Writers).
   */
  bf16AccOk(v: Var): boolean {
    return this.precision === "bf16" && v.requiresGrad && v.bf16Grad &&
      v.bf16Writers === v.uses && (!v.g || v.g.dtype === "bf16");
  }
  /** v's gradient sink when bf16AccOk(v): [pointer, add], a bf16 buffer from the pool first. */
  gradSinkBf16Acc(v: Var): [Deno.PointerValue, boolean] {
    if (v.g) return [v.g.ptr, true];
    const t = this.pool.take(v.shape, "bf16", "grad.bf16");
    this.pooledGrads.add(t);
    v.g = t;
    return [t.ptr, false];
  }
  /** An fp32 copy of v's bf16 gradient (this closure's scratch), for a kernel that reads fp32. */
  fp32Copy(v: Var): Deno.PointerValue {
    const t = this.out(v.shape, "grad.f32");
    this.k.mn_cast_bf16_to_f32(t.ptr, v.g!.ptr, v.g!.n, this.s);
    return t.ptr;
  }
  /** The accumulate mask of gradient sinks, bit i for sinks[i]; `always` bits are set too. */
  static accumulateBits(sinks: [Deno.PointerValue, boolean][], always = 0): number {
    return sinks.reduce((m, [, add], i) => (add ? m | (1 << i) : m), always);
  }
  /** passGrad of a bf16 gradient (a view of a value whose gradient may be bf16): x takes it over
   * when it may have a bf16 gradient itself (gradSinksBf16's conditions), else x's fp32 gradient
   * gets its values. */
  private passGradBf16(x: Var, y: Var & { g: Tensor }) {
    if (!x.g && x.bf16Grad && x.uses === 1 && this.pooledGrads.has(y.g)) {
      const t = y.g.view(x.shape, "grad.bf16");
      this.pooledGrads.add(t);
      x.g = t;
      y.g = null as unknown as Tensor; // handed on
      return;
    }
    const t = x.g ? this.out(x.shape, "grad.f32") : this.takeGrad(x);
    this.k.mn_cast_bf16_to_f32(t.ptr, y.g.ptr, y.g.n, this.s);
    if (t !== x.g) this.k.mn_axpy(this.ownGrad(x).ptr, 1, t.ptr, x.t.n, this.s);
  }
  /**
   * Hands y.g to every x in xs (an identity backward with several inputs, none holding a gradient
   * yet) without a copy: they share the buffer until a writer adds into one of them (ownGrad
   * copies first while another holder remains). In a residual block x + f(x) the branch's
   * producer reads its gradient before anything adds into x's (x's other consumers were recorded
   * before the branch existed), so the copy add() used to make is not needed at all. false (nothing
   * done) when y.g is not this graph's to hand on.
   */
  shareGrad(xs: Var[], y: Var & { g: Tensor }): boolean {
    if (!this.pooledGrads.has(y.g) || y.g.dtype !== "f32") return false;
    if (xs.some((x) => !x.requiresGrad || x.g || x.t.numel !== y.g.numel)) return false;
    const rec = this.sharedGrads.get(y.g) ?? { holders: 1 };
    rec.holders += xs.length - 1; // y's hold passes to the first
    for (const x of xs) {
      const t = y.g.view(x.shape, "grad");
      this.pooledGrads.add(t);
      this.sharedGrads.set(t, rec);
      x.g = t;
    }
    y.g = null as unknown as Tensor;
    return true;
  }
  /** v's gradient buffer for a writer that adds into it: if shared with another holder, v gets
   * its own copy first (the others keep theirs). */
  private ownGrad(v: Var): Tensor {
    const g = v.g!;
    const rec = this.sharedGrads.get(g);
    if (!rec) return g;
    this.sharedGrads.delete(g);
    if (rec.holders === 1) return g;
    rec.holders--;
    const own = this.takeGrad(v);
    this.k.mn_memcpy_d2d(own.ptr, g.ptr, BigInt(g.nbytes), this.s);
    return own;
  }
  /** v's gradient buffer taken from v (v.g = null) for a writer that overwrites it in place and
   * hands it on: when this graph pooled it and no other value shares it; else null (v keeps it) */
  private takeOver(v: Var): Tensor | null {
    const g = v.g;
    if (!g || v.param || g.dtype !== "f32" || !this.pooledGrads.has(g)) return null;
    const rec = this.sharedGrads.get(g);
    if (rec && rec.holders > 1) return null;
    if (rec) this.sharedGrads.delete(g);
    v.g = null;
    return g;
  }
  /** Done with v's gradient (its producer's backward has run): the buffer goes back to the pool,
   * once no other value shares it. */
  dropGrad(v: Var) {
    for (const t of v.gradParts) this.pool.give(t);
    v.gradParts = [];
    if (v.g && !v.param) {
      const rec = this.sharedGrads.get(v.g);
      if (rec) this.sharedGrads.delete(v.g);
      if (!rec || --rec.holders === 0) this.pool.give(v.g);
      v.g = null;
    }
  }
  /** A device scalar constant (for kernels that read coefficients from device memory). */
  constant(x: number): Tensor {
    let t = this.consts.get(x);
    if (!t) {
      t = this.be.upload(new Float32Array([x]), [1], "f32", `const ${x}`);
      this.consts.set(x, t);
    }
    return t;
  }

  input(t: Tensor): Var {
    return new Var(t, false);
  }
  param(p: Param): Var {
    return new Var(p.data, true, p);
  }
  /** The tape position from which p's gradient is final in backward: every recorded closure that
   * adds to it is at or after this index, so once backward has run the entries >= this one, p's
   * gradient is complete. undefined: no recorded closure adds to it (unused, or its gradient was
   * written in the forward, as lmHeadLoss does): final before backward starts. */
  firstUse(p: Param): number | undefined {
    return this.firstUses.get(p);
  }

  /** Runs the recorded backward closures in reverse order and clears the tape. progress(i), if
   * given, is called before the first closure with the tape length and after closure i with i:
   * "every entry >= i has run". */
  backward(progress?: (done: number) => void) {
    progress?.(this.tape.length);
    this.temps = [];
    try {
      for (let i = this.tape.length - 1; i >= 0; i--) {
        this.tape[i]();
        for (const t of this.temps) this.pool.give(t);
        this.temps.length = 0;
        progress?.(i);
      }
    } finally {
      this.temps = null;
    }
    this.tape = [];
    this.firstUses.clear();
  }
  /** Returns every activation of this step to the pool (call after backward, or after eval). */
  release() {
    for (const t of this.live) this.pool.give(t);
    this.live = [];
    this.tape = [];
    this.firstUses.clear();
  }

  // ---- ops: each forward kernel paired with its backward ----
  /** Wraps an op's output: records `bwd` (run only if the output got a gradient), then frees it. */
  node(out: Tensor, inputs: (Var | null)[], bwd: (y: Var & { g: Tensor }) => void): Var {
    const y = new Var(out, this.needs(...inputs));
    if (y.requiresGrad) {
      this.record(() => {
        // y.g null with bf16 parts: a producer that set maxGradParts reads y.gradParts
        if (y.g || y.gradParts.length) bwd(y as Var & { g: Tensor });
        this.dropGrad(y);
      }, inputs);
    }
    return y;
  }

  unaryLike(
    x: Var,
    label: string,
    fwd: (out: Tensor) => void,
    bwd: (y: Var & { g: Tensor }) => void,
  ): Var {
    const out = this.out(x.shape, label);
    fwd(out);
    return this.node(out, [x], bwd);
  }

  /** An elementwise activation; a bf16 x (a matmul's autocast output) gives a bf16 output, read
   * only by ops that take bf16 (a matmul), whose bf16 gradient it reads, writing x's in bf16
   * where gradSinksBf16 allows. */
  unary(x: Var, op: UnaryOp): Var {
    const code = OP[`MN_OP_${op}`];
    if (x.t.dtype === "bf16") {
      const out = this.out(x.shape, op.toLowerCase(), "bf16");
      this.k.mn_unary_forward_bf16(out.ptr, x.t.ptr, code, x.t.n, this.s);
      const y = this.node(out, [x], (y) => {
        const dxBf16 = this.gradSinksBf16([x]);
        const [[dx], acc] = dxBf16 ? [[dxBf16[0][0]], 0] : this.grads(x);
        const doutBf16 = y.g.dtype === "bf16" ? 1 : 0;
        const args = [x.t.ptr, y.t.ptr, code, x.t.n, doutBf16, dxBf16 ? 1 : 0, acc] as const;
        this.k.mn_unary_backward_bf16(dx, y.g.ptr, ...args, this.s);
      });
      y.bf16Grad = true;
      return y;
    }
    return this.unaryLike(
      x,
      op.toLowerCase(),
      (out) => this.k.mn_unary_forward(out.ptr, x.t.ptr, code, x.t.n, this.s),
      (y) => {
        const [[dx], acc] = this.grads(x);
        this.k.mn_unary_backward(dx, y.g.ptr, x.t.ptr, y.t.ptr, code, x.t.n, acc, this.s);
      },
    );
  }
  tanh(x: Var) {
    return this.unary(x, "TANH");
  }
  sigmoid(x: Var) {
    return this.unary(x, "SIGMOID");
  }

  /** a + b */
  add(a: Var, b: Var): Var {
    sameShape("add", a.shape, b.shape);
    const out = this.out(a.shape, "add");
    this.k.mn_add(out.ptr, a.t.ptr, b.t.ptr, a.t.n, this.s);
    return this.node(out, [a, b], (y) => this.addBackward(a, b, y));
  }
  private addBackward(a: Var, b: Var, y: Var & { g: Tensor }) {
    if (a === b) {
      const [[da], acc] = this.grads(a);
      if (acc) this.k.mn_axpy(da, 2, y.g.ptr, a.t.n, this.s);
      else this.k.mn_scale(da, y.g.ptr, 2, a.t.n, this.s);
      return;
    }
    if (this.shareGrad([a, b], y)) return;
    // the identity to both: a new gradient takes y.g over, so the one to hand it is the last
    const first = !a.g && b.g ? b : a, second = first === a ? b : a;
    this.passGrad(first, y, !second.requiresGrad);
    this.passGrad(second, y);
  }

  /** alpha*x + beta*y with scalars that are either numbers (constants) or 1-element Vars. */
  axpby(alpha: number | Var, x: Var, beta: number | Var, y: Var): Var {
    sameShape("axpby", x.shape, y.shape);
    const sa = typeof alpha === "number" ? this.input(this.constant(alpha)) : alpha;
    const sb = typeof beta === "number" ? this.input(this.constant(beta)) : beta;
    const out = this.out(x.shape, "axpby");
    this.k.mn_axpby_forward(out.ptr, x.t.ptr, y.t.ptr, sa.t.ptr, sb.t.ptr, x.t.n, this.s);
    return this.axpbyNode(out, x, sa, y, sb);
  }
  /** alpha*x + beta*y's output out as a tape value (its backward reads x, y and the scalars) */
  private axpbyNode(out: Tensor, x: Var, sa: Var, y: Var, sb: Var): Var {
    return this.node(out, [x, y, sa, sb], (z) => {
      const [[dx, dy, da, db], acc] = this.gradsInOrder(x, y, sa, sb);
      this.k.mn_axpby_backward(
        dx,
        dy,
        da,
        db,
        z.g.ptr,
        x.t.ptr,
        y.t.ptr,
        sa.t.ptr,
        sb.t.ptr,
        x.t.n,
        acc,
        this.s,
      );
    });
  }

  /** element i of a 1-D parameter, as a 1-element Var whose gradient aliases the parameter's */
  scalarOf(p: Var, i: number): Var {
    if (!p.param) throw new Error("scalarOf: expects a parameter");
    const v = new Var(p.t.rows(i, 1), true);
    v.g = p.param.sink.rows(i, 1);
    v.gradOf = p.param; // closures that add to v's gradient add to the parameter's (firstUse)
    return v;
  }

  mul(a: Var, b: Var): Var {
    sameShape("mul", a.shape, b.shape);
    const out = this.out(a.shape, "mul");
    this.k.mn_mul_forward(out.ptr, a.t.ptr, b.t.ptr, a.t.n, this.s);
    return this.node(out, [a, b], (y) => {
      const [[da, db], acc] = this.gradsInOrder(a, b);
      this.k.mn_mul_backward(da, db, y.g.ptr, a.t.ptr, b.t.ptr, a.t.n, acc, this.s);
    });
  }

  /** x + (y - x) * g */
  lerp(x: Var, y: Var, g: Var): Var {
    sameShape("lerp", x.shape, y.shape);
    sameShape("lerp", x.shape, g.shape);
    const out = this.out(x.shape, "lerp");
    this.k.mn_lerp_forward(out.ptr, x.t.ptr, y.t.ptr, g.t.ptr, x.t.n, this.s);
    return this.node(out, [x, y, g], (z) => {
      const [[dx, dy, dg], acc] = this.grads(x, y, g);
      this.k.mn_lerp_backward(dx, dy, dg, z.g.ptr, x.t.ptr, y.t.ptr, g.t.ptr, x.t.n, acc, this.s);
    });
  }

  /** x + v, with v [C] broadcast over the rows of x [..., C] */
  addRow(x: Var, v: Var): Var {
    const [N, C] = rowsCols(x);
    if (v.t.numel !== C) {
      throw new Error(`addRow: vector has ${v.t.numel} elements, rows have ${C}`);
    }
    const out = this.out(x.shape, "addRow");
    this.k.mn_add_row_vector_forward(out.ptr, x.t.ptr, v.t.ptr, N, C, this.s);
    return this.node(out, [x, v], (y) => {
      const [[dx, dv], acc] = this.grads(x, v);
      this.k.mn_add_row_vector_backward(dx, dv, y.g.ptr, N, C, acc, this.s);
    });
  }

  /** x * v, with v [C] broadcast over the rows of x [..., C] */
  mulRow(x: Var, v: Var): Var {
    const [N, C] = rowsCols(x);
    if (v.t.numel !== C) {
      throw new Error(`mulRow: vector has ${v.t.numel} elements, rows have ${C}`);
    }
    const out = this.out(x.shape, "mulRow");
    this.k.mn_mul_row_vector_forward(out.ptr, x.t.ptr, v.t.ptr, N, C, this.s);
    return this.node(out, [x, v], (y) => {
      const [[dx, dv], acc] = this.grads(x, v);
      this.k.mn_mul_row_vector_backward(dx, dv, y.g.ptr, x.t.ptr, v.t.ptr, N, C, acc, this.s);
    });
  }

  /** out[b,t] = x[b,t-1], zeros at t = 0; x [B,T,C] */
  timeShift(x: Var): Var {
    const [B, T, C] = x.shape;
    return this.unaryLike(
      x,
      "timeShift",
      (out) => this.k.mn_time_shift_forward(out.ptr, x.t.ptr, B, T, C, this.s),
      (y) => {
        const [[dx], acc] = this.grads(x);
        this.k.mn_time_shift_backward(dx, y.g.ptr, B, T, C, acc, this.s);
      },
    );
  }

  relu2(x: Var): Var {
    return this.unaryLike(
      x,
      "relu2",
      (out) => this.k.mn_relu2_forward(out.ptr, x.t.ptr, x.t.n, this.s),
      (y) => {
        const [[dx], acc] = this.grads(x);
        this.k.mn_relu2_backward(dx, y.g.ptr, x.t.ptr, x.t.n, acc, this.s);
      },
    );
  }

  /** F.rms_norm over the last dimension (no weight) */
  rmsnorm(x: Var, eps = 1.1920928955078125e-7): Var {
    const [N, C] = rowsCols(x);
    const rstd = this.out([N], "rms.rstd");
    return this.unaryLike(
      x,
      "rmsnorm",
      (out) => this.k.mn_rmsnorm_forward(out.ptr, rstd.ptr, x.t.ptr, N, C, eps, this.s),
      (y) => {
        const [[dx], acc] = this.grads(x);
        this.k.mn_rmsnorm_backward(dx, y.g.ptr, x.t.ptr, rstd.ptr, N, C, acc, this.s);
      },
    );
  }

  /** nn.LayerNorm over the last dimension; with outBf16 (on the bf16 path) written only as the
   * next matmul's bf16 operand (mn_layernorm_forward_bf16: the backward reads x, mean and rstd,
   * not the output), bit for bit the fp32 output's cast */
  layernorm(x: Var, w: Var, b: Var, eps = 1e-5, outBf16 = false): Var {
    const [N, C] = rowsCols(x);
    const mean = this.out([N], "ln.mean"), rstd = this.out([N], "ln.rstd"); // [N] fp32
    const bf16 = outBf16 && this.precision === "bf16";
    const out = this.out(x.shape, "layernorm", bf16 ? "bf16" : "f32");
    const fwd = bf16 ? this.k.mn_layernorm_forward_bf16 : this.k.mn_layernorm_forward;
    fwd(out.ptr, mean.ptr, rstd.ptr, x.t.ptr, w.t.ptr, b.t.ptr, N, C, eps, this.s);
    return this.layernormNode(out, mean, rstd, x, w, b);
  }
  /**
   * x + y, then LayerNorm of the sum written as the next matmul's operand (RWKV's x = x + att;
   * ln2(x)) in one kernel: returns [sum fp32, LayerNorm(sum)]. y may be a bf16 matmul output
   * (autocast's projection). On the bf16 path mn_add_layernorm_forward reads x and y once (the
   * separate add and LayerNorm read the sum again); the backward is add's and LayerNorm's. The
   * "f32" path: add and layernorm(..., outBf16), the same values in fp32.
   */
  addLayernorm(x: Var, y: Var, w: Var, b: Var, eps = 1e-5): [Var, Var] {
    if (this.precision === "f32") {
      const sum = this.add(x, y);
      return [sum, this.layernorm(sum, w, b, eps, true)];
    }
    sameShape("addLayernorm", x.shape, y.shape);
    if (x.t.dtype !== "f32") throw new Error(`addLayernorm: x ${x.t} must be fp32`);
    const [N, C] = rowsCols(x);
    const sumT = this.out(x.shape, "add"); // [N, C] fp32: the residual stream
    const mean = this.out([N], "ln.mean"), rstd = this.out([N], "ln.rstd"); // [N] fp32
    const out = this.out(x.shape, "layernorm", "bf16"); // [N, C] bf16: the next matmul's operand
    const branchBf16 = y.t.dtype === "bf16" ? 1 : 0;
    this.k.mn_add_layernorm_forward(
      sumT.ptr,
      out.ptr,
      mean.ptr,
      rstd.ptr,
      x.t.ptr,
      y.t.ptr,
      branchBf16,
      w.t.ptr,
      b.t.ptr,
      N,
      C,
      eps,
      this.s,
    );
    const sum = this.node(sumT, [x, y], (z) => this.addBackward(x, y, z));
    return [sum, this.layernormNode(out, mean, rstd, sum, w, b)];
  }
  /**
   * RWKV-7's residual between blocks, x = alpha*(x + r) + beta*y (r: the previous block's MLP
   * output, null in the first block; y: x0), and ln1 of it, in one kernel: returns [x fp32,
   * LayerNorm(x) fp32 (the mixes read fp32)]. The same bits as add, axpby and layernorm; the
   * separate kernels would read x + r and the mixed x back from DRAM.
   * Backward, bf16 path: ONE closure for the pair (mn_mix_layernorm_backward: one row pass; it
   * recomputes x + r, so the forward does not write it), recorded here, so it runs after every
   * other consumer of both outputs has added to their gradients. Its s-gradient is written over
   * the mixed x's gradient when that buffer is this op's alone, and r's goes straight to bf16
   * when r is a matmul output with this as its one writer (no cast). The "f32" path keeps the
   * tape of add, axpby and layernorm (their nodes in their order, x + r saved for axpby's scalar
   * gradient), whose results the fused backward matches up to the order of its sums.
   */
  mixLayernorm(
    x: Var,
    r: Var | null,
    alpha: Var,
    y: Var,
    beta: Var,
    w: Var,
    b: Var,
    eps = 1e-5,
  ): [Var, Var] {
    sameShape("mixLayernorm", x.shape, y.shape);
    if (r) sameShape("mixLayernorm", x.shape, r.shape);
    for (const v of [x, r, y]) {
      if (v && v.t.dtype !== "f32") throw new Error(`mixLayernorm: ${v.t} must be fp32`);
    }
    const [N, C] = rowsCols(x);
    // the fused backward (bf16 path; its kernel takes C <= 1024) recomputes x + r
    const fusedBwd = this.precision === "bf16" && C <= MIX_LAYERNORM_MAX_C;
    const sumT = r && !fusedBwd && this.needs(x, r, alpha, y, beta)
      ? this.out(x.shape, "add") // [N, C] fp32
      : null;
    const xo = this.out(x.shape, "axpby"); // [N, C] fp32: the residual stream
    const mean = this.out([N], "ln.mean"), rstd = this.out([N], "ln.rstd"); // [N] fp32
    const out = this.out(x.shape, "layernorm"); // [N, C] fp32: read by the token shift and mixes
    this.k.mn_mix_layernorm_forward(
      sumT?.ptr ?? null,
      xo.ptr,
      out.ptr,
      mean.ptr,
      rstd.ptr,
      x.t.ptr,
      r?.t.ptr ?? null,
      y.t.ptr,
      alpha.t.ptr,
      beta.t.ptr,
      w.t.ptr,
      b.t.ptr,
      N,
      C,
      eps,
      this.s,
    );
    if (fusedBwd) return this.mixLayernormNode(xo, out, mean, rstd, x, r, alpha, y, beta, w, b);
    // no sum: r is null (the axpby reads x), or nothing needs a gradient (no backward runs)
    const sum = sumT ? this.node(sumT, [x, r], (z) => this.addBackward(x, r!, z)) : x;
    const mixed = this.axpbyNode(xo, sum, alpha, y, beta);
    return [mixed, this.layernormNode(out, mean, rstd, mixed, w, b)];
  }
  /** mixLayernorm's two outputs with one backward closure (mn_mix_layernorm_backward) */
  private mixLayernormNode(
    xo: Tensor,
    out: Tensor,
    mean: Tensor,
    rstd: Tensor,
    x: Var,
    r: Var | null,
    alpha: Var,
    y: Var,
    beta: Var,
    w: Var,
    b: Var,
  ): [Var, Var] {
    const [N, C] = rowsCols(x);
    const needs = this.needs(x, r, alpha, y, beta, w, b);
    const mixed = new Var(xo, needs), normed = new Var(out, needs);
    if (!needs) return [mixed, normed];
    this.record(() => {
      if (mixed.g || normed.g) {
        const gIn = mixed.g ? fp32Grad(mixed.g) : null;
        const dout = normed.g ? fp32Grad(normed.g) : null;
        // r's gradient in bf16 when r may take one (its producer's GEMM operand): no cast
        const rBf16 = r !== null && r.requiresGrad && this.gradSinksBf16([r]) !== null;
        const rF32 = r !== null && r.requiresGrad && !rBf16;
        // ds: the first block (x is x0, no fp32 r) writes a*g into x0's gradient and dx0 adds
        // b*g to it (in order); else s = x + r's gradient is a value of its own, handed to x (and
        // an fp32 r) after the call, written over x_out's gradient when that buffer is this op's
        // alone (each element is read before it is written)
        const first = x === y && !rF32;
        const s = new Var(x.t, true);
        let ds: Deno.PointerValue = null, dsAdd = false;
        if (first) {
          if (x.requiresGrad) [ds, dsAdd] = this.gradSink(x);
        } else if (x.requiresGrad || rF32) {
          const own = gIn ? this.takeOver(mixed) : null;
          ds = (own ? (s.g = own) : this.takeGrad(s)).ptr;
        }
        const [dx0, dx0Add] = first
          ? [ds, true]
          : y.requiresGrad
          ? this.gradSink(y)
          : [null, false];
        // parameter gradients (a lambda's is its parameter's element) add; a constant's is
        // thrown away
        const [dw, dwAdd] = this.gradSink(w), [db, dbAdd] = this.gradSink(b);
        const [da, daAdd] = this.gradSink(alpha), [dbeta, dbetaAdd] = this.gradSink(beta);
        const acc = (dsAdd ? 1 : 0) | (dx0Add ? 4 : 0) | (dwAdd ? 8 : 0) | (dbAdd ? 16 : 0) |
          (daAdd ? 32 : 0) | (dbetaAdd ? 64 : 0);
        this.k.mn_mix_layernorm_backward(
          ds,
          rBf16 ? r!.g!.ptr : null,
          dx0,
          dw,
          db,
          da,
          dbeta,
          dout?.ptr ?? null,
          gIn?.ptr ?? null,
          xo.ptr,
          x.t.ptr,
          r?.t.ptr ?? null,
          y.t.ptr,
          alpha.t.ptr,
          beta.t.ptr,
          w.t.ptr,
          mean.ptr,
          rstd.ptr,
          N,
          C,
          acc,
          this.s,
        );
        if (s.g) {
          const sg = s as Var & { g: Tensor };
          if (rF32) this.addBackward(x, r!, sg);
          else this.passGrad(x, sg);
          this.dropGrad(s); // back to the pool unless handed on
        }
      }
      this.dropGrad(mixed);
      this.dropGrad(normed);
    }, [x, r, y, alpha, beta, w, b]);
    return [mixed, normed];
  }
  /** LayerNorm's output out of x, with its saved statistics, as a tape value (its backward) */
  private layernormNode(out: Tensor, mean: Tensor, rstd: Tensor, x: Var, w: Var, b: Var): Var {
    const [N, C] = rowsCols(x);
    const y = this.node(out, [x, w, b], (y) => {
      const [[dx, dw, db], acc] = this.grads(x, w, b);
      const bwd = y.g.dtype === "bf16"
        ? this.k.mn_layernorm_backward_bf16
        : this.k.mn_layernorm_backward;
      bwd(
        dx,
        dw,
        db,
        y.g.ptr,
        x.t.ptr,
        w.t.ptr,
        mean.ptr,
        rstd.ptr,
        N,
        C,
        acc,
        this.s,
      );
    });
    // a bf16 output (a matmul operand) may get its gradient in bf16 (mn_layernorm_backward_bf16)
    y.bf16Grad = out.dtype === "bf16";
    return y;
  }

  /** nn.GroupNorm(G, G*D) on rows of x [..., G*D] */
  groupnorm(x: Var, w: Var, b: Var, G: number, eps: number): Var {
    const [N, C] = rowsCols(x);
    if (C % G) throw new Error(`groupnorm: ${C} channels do not split into ${G} groups`);
    const D = C / G;
    const mean = this.out([N, G], "gn.mean"), rstd = this.out([N, G], "gn.rstd");
    const out = this.out(x.shape, "groupnorm");
    this.k.mn_groupnorm_forward(
      out.ptr,
      mean.ptr,
      rstd.ptr,
      x.t.ptr,
      w.t.ptr,
      b.t.ptr,
      N,
      G,
      D,
      eps,
      this.s,
    );
    return this.node(out, [x, w, b], (y) => {
      const [[dx, dw, db], acc] = this.grads(x, w, b);
      this.k.mn_groupnorm_backward(
        dx,
        dw,
        db,
        y.g.ptr,
        x.t.ptr,
        w.t.ptr,
        mean.ptr,
        rstd.ptr,
        N,
        G,
        D,
        acc,
        this.s,
      );
    });
  }

  /** F.normalize(x, dim=-1) over groups of D (the last dimension viewed as [..., C/D, D]) */
  l2norm(x: Var, D: number, eps = 1e-12): Var {
    const rows = x.t.numel / D;
    return this.unaryLike(
      x,
      "l2norm",
      (out) => this.k.mn_l2norm_forward(out.ptr, x.t.ptr, rows, D, eps, this.s),
      (y) => {
        const [[dx], acc] = this.grads(x);
        this.k.mn_l2norm_backward(dx, y.g.ptr, x.t.ptr, rows, D, eps, acc, this.s);
      },
    );
  }

  /** embedding lookup: idx [N] int32 (device), W [V, C] -> [N, C] */
  embedding(idx: Tensor, W: Var, shape: readonly number[]): Var {
    const [V, C] = W.shape;
    const N = idx.numel;
    const out = this.out([...shape, C], "embedding");
    this.k.mn_embedding_forward(out.ptr, idx.ptr, W.t.ptr, N, C, V, this.s);
    return this.node(out, [W], (y) => {
      const [[dW], acc] = this.grads(W);
      this.k.mn_embedding_backward(dW, idx.ptr, y.g.ptr, N, C, V, acc, this.s);
    });
  }

  /** a matmul operand in this graph's precision (a parameter uses its cached bf16 shadow) */
  operand(v: Var): Tensor {
    return this.precision === "f32" ? v.t : this.bf16Of(v);
  }
  /** an upstream gradient as a matmul operand */
  gradOperand(g: Tensor): Tensor {
    if (this.precision === "f32" || g.dtype === "bf16") return g;
    const t = this.out(g.shape, "dy.bf16", "bf16");
    this.k.mn_cast_f32_to_bf16(t.ptr, g.ptr, g.n, this.s);
    return t;
  }
  /** C = alpha op(A) op(B) + beta C with A, B in this graph's precision (see mn_gemm_bf16); C
   * fp32, or bf16 with cBf16 on the bf16 path */
  gemm(
    ta: number,
    tb: number,
    M: number,
    N: number,
    K: number,
    alpha: number,
    A: Deno.PointerValue,
    lda: number,
    sA: bigint,
    B: Deno.PointerValue,
    ldb: number,
    sB: bigint,
    beta: number,
    C: Deno.PointerValue,
    ldc: number,
    sC: bigint,
    batch = 1,
    cBf16 = false,
  ) {
    const args = [ta, tb, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC] as const;
    if (this.precision === "f32") this.k.mn_gemm_f32(...args, batch, this.s);
    else this.k.mn_gemm_bf16(...args, cBf16 ? 1 : 0, batch, this.s);
  }

  /** bf16 copy of an activation for a matmul operand (a parameter uses its cached shadow; a value
   * a fused op produced in bf16 is its own operand) */
  bf16Of(v: Var): Tensor {
    if (v.param) return v.param.bf16();
    if (v.t.dtype === "bf16") return v.t;
    if (v.bf16) return v.bf16;
    const t = this.out(v.shape, "bf16", "bf16");
    this.k.mn_cast_f32_to_bf16(t.ptr, v.t.ptr, v.t.n, this.s);
    return t;
  }

  /**
   * y = a @ b (transB: a @ b^T, i.e. nn.Linear with b [out, in]). a [..., K]; b [K, M] or [M, K].
   * bf16 operands, fp32 accumulation and fp32 output (autocast's matmul, kept in fp32 after), or
   * with outBf16 (on the bf16 path) a bf16 output as autocast's: then only ops that read bf16 may
   * take it (matmul, the fused RWKV-7 ops that say so).
   */
  matmul(a: Var, b: Var, transB = false, outBf16 = false): Var {
    const [N, K] = rowsCols(a);
    if (b.shape.length !== 2) {
      throw new Error(`matmul: weight must be 2-D, got [${b.shape.join(",")}]`);
    }
    const [bK, M] = transB ? [b.shape[1], b.shape[0]] : [b.shape[0], b.shape[1]];
    if (bK !== K) {
      throw new Error(
        `matmul: [${a.shape.join(",")}] @ ${transB ? "T" : ""}[${
          b.shape.join(",")
        }]: inner sizes ${K} and ${bK} differ`,
      );
    }
    const ab = this.operand(a), bb = this.operand(b);
    const cBf16 = outBf16 && this.precision === "bf16";
    const out = this.out([...a.shape.slice(0, -1), M], "matmul", cBf16 ? "bf16" : "f32");
    const ldb = transB ? K : M;
    const [aP, bP, oP] = [ab.ptr, bb.ptr, out.ptr];
    this.gemm(0, transB ? 1 : 0, N, M, K, 1, aP, K, 0n, bP, ldb, 0n, 0, oP, M, 0n, 1, cBf16);
    const y = this.node(out, [a, b], (y) => {
      const dy = this.gradOperand(y.g);
      // a's gradient straight in bf16 when a's producer reads it only as a bf16 operand and this
      // is its one writer (a matmul output feeding only this matmul: a LoRA's hidden layer):
      // the GEMM rounds its fp32 result once, as the cast it replaces did
      // or as one bf16 part of a's gradient (gradPart: a feeds several matmuls)
      const aPart = a.requiresGrad ? this.gradPart(a) : null;
      const aBf16 = !aPart && a.requiresGrad && this.gradSinksBf16([a]) !== null;
      const [[da, db], acc] = this.grads(aBf16 || aPart ? null : a, b);
      const [betaA, betaB] = [acc & 1, (acc >> 1) & 1]; // 0: cuBLAS does not read C
      // da[N,K] (+)= dy[N,M] @ op(b)^T
      if (a.requiresGrad) {
        this.gemm(
          0,
          transB ? 0 : 1,
          N,
          K,
          M,
          1,
          dy.ptr,
          M,
          0n,
          bb.ptr,
          ldb,
          0n,
          betaA,
          aPart ? aPart.ptr : aBf16 ? a.g!.ptr : da,
          K,
          0n,
          1,
          aBf16 || aPart !== null,
        );
      }
      // db (+)= a^T @ dy  ([K,M]) or dy^T @ a ([M,K]) when b is stored transposed
      if (b.requiresGrad) {
        if (transB) {
          this.gemm(1, 0, M, K, N, 1, dy.ptr, M, 0n, ab.ptr, K, 0n, betaB, db, K, 0n);
        } else {this.gemm(
            1,
            0,
            K,
            M,
            N,
            1,
            ab.ptr,
            K,
            0n,
            dy.ptr,
            M,
            0n,
            betaB,
            db,
            M,
            0n,
          );}
      }
    });
    y.bf16Grad = true;
    a.partUses++;
    return y;
  }

  /**
   * The RWKV-7 mix LoRA's bmm: x [N, nb*D] viewed as nb blocks of D columns, w [nb, D, C];
   * returns nb values [N, C]: out_i = x[:, iD:(i+1)D] @ w[i]. fp32 outputs, or with outBf16 (on
   * the bf16 path) bf16 ones as autocast's: then only ops that read bf16 may take them (rwkv7Mix4).
   */
  blockMatmul(x: Var, w: Var, outBf16 = false): Var[] {
    const [N, XC] = rowsCols(x);
    const [nb, D, C] = w.shape;
    if (XC !== nb * D) throw new Error(`blockMatmul: x has ${XC} columns, w needs ${nb}x${D}`);
    const xb = this.operand(x), wb = this.operand(w);
    const outs: Var[] = [];
    const off = (t: Tensor, elems: number) =>
      Deno.UnsafePointer.offset(t.ptr, elems * DTYPE_BYTES[t.dtype]);
    const cBf16 = outBf16 && this.precision === "bf16";
    const all = this.out([nb, N, C], "blockMatmul", cBf16 ? "bf16" : "f32");
    this.gemm(
      0,
      0,
      N,
      C,
      D,
      1,
      xb.ptr,
      XC,
      BigInt(D),
      wb.ptr,
      C,
      BigInt(D * C),
      0,
      all.ptr,
      C,
      BigInt(N * C),
      nb,
      cBf16,
    );
    for (let i = 0; i < nb; i++) {
      const yi = new Var(all.rows(i, 1).view([...x.shape.slice(0, -1), C]), this.needs(x, w));
      yi.bf16Grad = true;
      outs.push(yi);
    }
    if (!this.needs(x, w)) return outs;
    // One closure for all nb outputs (recorded together, so their gradients are complete together):
    // output i writes columns iD..(i+1)D of dx and block i of dw, so together they cover both
    // tensors and each may overwrite its part; when an output got no gradient its part would stay
    // unwritten, and the tensor is zeroed first instead.
    this.record(() => {
      const every = outs.every((yi) => yi.g);
      const dest = (v: Var): [Tensor | null, number] => {
        if (!v.requiresGrad) return [null, 1];
        if (!every) return this.grad(v), [v.g, 1];
        const [, acc] = this.grads(v);
        return [v.g, acc];
      };
      const [xg, ax] = outs.some((yi) => yi.g) ? dest(x) : [null, 1];
      const [wg, aw] = outs.some((yi) => yi.g) ? dest(w) : [null, 1];
      for (let i = nb - 1; i >= 0; i--) {
        const yi = outs[i];
        if (!yi.g) continue;
        const dy = this.gradOperand(yi.g);
        if (xg) {
          // dx[:, iD:(i+1)D] (+)= dy @ w[i]^T
          this.gemm(
            0,
            1,
            N,
            D,
            C,
            1,
            dy.ptr,
            C,
            0n,
            off(wb, i * D * C),
            C,
            0n,
            ax,
            off(xg, i * D),
            XC,
            0n,
          );
        }
        if (wg) {
          // dw[i] (+)= x[:, iD:(i+1)D]^T @ dy
          this.gemm(
            1,
            0,
            D,
            C,
            N,
            1,
            off(xb, i * D),
            XC,
            0n,
            dy.ptr,
            C,
            0n,
            aw,
            off(wg, i * D * C),
            C,
            0n,
          );
        }
      }
      for (const yi of outs) this.dropGrad(yi);
    }, [x, w]);
    return outs;
  }

  /**
   * y_j = x @ w_j for weights w_j [K, D_j] that read the same input x [..., K] (LoRA first layers),
   * as ONE GEMM over the concatenated weights [K, sum D_j], so that x is read once each way and dx
   * is written by one GEMM instead of one per weight (each after the first a read and write of the
   * fp32 dx to add into it). Returns the y_j [..., D_j], fp32 and contiguous, each the values
   * matmul(x, w_j) gives (every output column is the same dot product over K); with outBf16[j]
   * (on the bf16 path) y_j is bf16 as autocast's, the operand the next matmul would cast it to,
   * so only ops that read bf16 may take it. Their gradients go back as one [N, sum D_j] operand in
   * the GEMM precision, gathered by mn_copy_columns, which is also the cast the separate matmuls
   * would run on each.
   */
  matmulShared(x: Var, ws: Var[], outBf16: readonly boolean[] = []): Var[] {
    const [N, K] = rowsCols(x);
    if (!ws.length) throw new Error("matmulShared: no weights");
    for (const w of ws) {
      if (w.shape.length !== 2 || w.shape[0] !== K) {
        throw new Error(
          `matmulShared: [${x.shape.join(",")}] @ [${
            w.shape.join(",")
          }]: weights must be [${K}, D]`,
        );
      }
    }
    const widths = ws.map((w) => w.shape[1]);
    const S = widths.reduce((a, b) => a + b, 0);
    const at = widths.map((_, j) => widths.slice(0, j).reduce((a, b) => a + b, 0));
    const dt = this.operandDtype(); // the GEMM precision
    const isBf16 = (t: Tensor) => (t.dtype === "bf16" ? 1 : 0);
    const col = (t: Tensor, elems: number) =>
      Deno.UnsafePointer.offset(t.ptr as Deno.PointerObject, elems * DTYPE_BYTES[t.dtype]);
    // dst[:, off:off+cols] (+)= src, row strides ldDst, ldSrc
    const copy = (
      dst: Tensor,
      off: number,
      ldDst: number,
      src: Tensor,
      srcOff: number,
      ldSrc: number,
      rows: number,
      cols: number,
      acc: number,
    ) =>
      this.k.mn_copy_columns(
        col(dst, off),
        ldDst,
        isBf16(dst),
        col(src, srcOff),
        ldSrc,
        isBf16(src),
        rows,
        cols,
        acc,
        this.s,
      );
    const xb = this.operand(x);
    // [K, S] in the GEMM precision: the weights side by side, kept for the backward's dx GEMM
    const wcat = this.out([K, S], "matmulShared.w", dt);
    ws.forEach((w, j) => copy(wcat, at[j], S, this.operand(w), 0, widths[j], K, widths[j], 0));
    // [N, S] fp32, split into the outputs at once and back to the pool (later launches on the
    // stream reuse it only after the copies)
    const all = this.pool.take([N, S], "f32", "matmulShared.y");
    this.gemm(0, 0, N, S, K, 1, xb.ptr, K, 0n, wcat.ptr, S, 0n, 0, all.ptr, S, 0n);
    const lead = x.shape.slice(0, -1);
    const ys = widths.map((D, j) => {
      const bf16 = outBf16[j] && this.precision === "bf16";
      const o = this.out([...lead, D], "matmulShared", bf16 ? "bf16" : "f32"); // [..., D_j]
      copy(o, 0, D, all, at[j], S, N, D, 0);
      const y = new Var(o, this.needs(x, ...ws));
      y.bf16Grad = true; // read only into the gathered GEMM operand below
      return y;
    });
    this.pool.give(all);
    if (!this.needs(x, ...ws)) return ys;
    // One closure for all outputs, so their gradients are complete together; an output nobody
    // used gets a zero gradient (grad(): a counted memset; the models use every output).
    this.record(() => {
      if (ys.some((y) => y.g)) {
        // [N, S] in the GEMM precision, scratch of this closure
        const dy = this.out([N, S], "matmulShared.dy", dt);
        ys.forEach((y, j) => {
          if (!y.g) this.grad(y);
          copy(dy, at[j], S, y.g!, 0, widths[j], N, widths[j], 0);
        });
        if (x.requiresGrad) {
          // dx [N, K] (+)= dy @ wcat^T, or one bf16 part of x's gradient (gradPart)
          const part = this.gradPart(x);
          if (part) {
            this.gemm(
              0,
              1,
              N,
              K,
              S,
              1,
              dy.ptr,
              S,
              0n,
              wcat.ptr,
              S,
              0n,
              0,
              part.ptr,
              K,
              0n,
              1,
              true,
            );
          } else {
            const [[dx], acc] = this.grads(x);
            this.gemm(0, 1, N, K, S, 1, dy.ptr, S, 0n, wcat.ptr, S, 0n, acc & 1, dx, K, 0n);
          }
        }
        if (ws.some((w) => w.requiresGrad)) {
          // [K, S] fp32 scratch: x^T @ dy, each weight's gradient a block of its columns
          const dw = this.out([K, S], "matmulShared.dw");
          this.gemm(1, 0, K, S, N, 1, xb.ptr, K, 0n, dy.ptr, S, 0n, 0, dw.ptr, S, 0n);
          ws.forEach((w, j) => {
            if (!w.requiresGrad) return;
            const [, acc] = this.grads(w); // a weight given twice: the second adds
            copy(w.g!, 0, widths[j], dw, at[j], S, K, widths[j], acc & 1);
          });
        }
      }
      ys.forEach((y) => this.dropGrad(y));
    }, [x, ...ws]);
    x.partUses++;
    return ys;
  }

  /** Dtype of a fused op's matmul-operand outputs: bf16 (the operand itself, no cast kernel) when
   * the graph runs bf16, else fp32. Such a bf16 value may only feed matmuls (and other ops that
   * take their inputs through operand()). */
  private operandDtype(): Dtype {
    return this.precision === "f32" ? "f32" : "bf16";
  }

  /**
   * RWKV-7 fused token shift + first mix (mn_rwkv7_mix_x_*): x + (shift(x) - x) * maa, the
   * original's xxx; x [B,T,C] fp32, maa [C] (time_maa_x, any shape of C elements). The output is a
   * matmul operand (see operandDtype). Same math as
   * add(x, mulRow(axpby(1, timeShift(x), -1, x), maa)).
   */
  rwkv7MixX(x: Var, maa: Var): Var {
    const [B, T, C] = x.shape;
    if (maa.t.numel !== C) throw new Error(`rwkv7MixX: maa has ${maa.t.numel} elements, not ${C}`);
    const dt = this.operandDtype();
    const out = this.out(x.shape, "mix_x", dt);
    const bf16 = dt === "bf16" ? 1 : 0;
    this.k.mn_rwkv7_mix_x_forward(out.ptr, x.t.ptr, maa.t.ptr, bf16, B, T, C, this.s);
    const y = this.node(out, [x, maa], (y) => {
      const sinks = [this.gradSink(x), this.paramSink(maa, "rwkv7MixX")];
      // its one consumer (the maa LoRA's first layer) may write the gradient as a bf16 part
      const part = y.gradParts[0];
      this.k.mn_rwkv7_mix_x_backward(
        ...sinks.map(([p]) => p),
        part ? part.ptr : y.g.ptr,
        x.t.ptr,
        maa.t.ptr,
        part ? 1 : 0,
        B,
        T,
        C,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
    if (bf16) y.maxGradParts = 1;
    return y;
  }

  /**
   * RWKV-7 fused mixes after the maa LoRA (mn_rwkv7_mix4_*): out_j = x + xx * (m_j + maa_j), xx =
   * shift(x) - x, for the four (m, maa) pairs rg, wa, k, v: the original's xrg, xwa, xk, xv.
   * x [B,T,C] fp32; m_j [B,T,C] fp32, or bf16 (blockMatmul's outBf16: then their gradients are
   * written bf16 where gradSinksBf16 allows); maa_j [C]. Outputs are matmul operands (see
   * operandDtype). Same math as add(x, mul(xx, addRow(m_j, maa_j))).
   */
  rwkv7Mix4(x: Var, m: Var[], maa: Var[]): Var[] {
    const [B, T, C] = x.shape;
    checkMixes("rwkv7Mix4", x, m, maa, 4);
    const dt = this.operandDtype();
    const mBf16 = m[0].t.dtype === "bf16";
    if (m.some((mj) => (mj.t.dtype === "bf16") !== mBf16 || mj.t.dtype === "i32")) {
      throw new Error("rwkv7Mix4: the four m must be all fp32 or all bf16");
    }
    const outs = [0, 1, 2, 3].map(() => this.out(x.shape, "mix4", dt));
    const ptrs = (vs: Var[]) => vs.map((v) => v.t.ptr);
    this.k.mn_rwkv7_mix4_forward(
      ...outs.map((o) => o.ptr),
      x.t.ptr,
      ...ptrs(m),
      ...ptrs(maa),
      dt === "bf16" ? 1 : 0,
      mBf16 ? 1 : 0,
      B,
      T,
      C,
      this.s,
    );
    const ys = this.multiNode(outs, [x, ...m, ...maa], (dout, ys) => {
      // the outputs' gradients as bf16 parts (each written by a matmul's dX GEMM), when all four
      // have them; else all fp32 (parts folded)
      const parts = ys.every((y) => y.gradParts.length > 0);
      const d = parts
        ? ys.map((y) => y.gradParts[0].ptr)
        : ys.map((y, j) => dout[j] ?? this.foldParts(y));
      const d2 = ys.map((y) => (parts ? y.gradParts[1]?.ptr ?? null : null));
      const dmBf16 = this.gradSinksBf16(m); // the LoRA's gradients as its bf16 GEMM operands
      const sinks = [
        this.gradSink(x),
        ...(dmBf16 ?? m.map((v) => this.gradSink(v))),
        ...maa.map((p) => this.paramSink(p, "rwkv7Mix4")),
      ];
      this.k.mn_rwkv7_mix4_backward(
        ...sinks.map(([p]) => p),
        ...d,
        ...d2,
        x.t.ptr,
        ...ptrs(m),
        ...ptrs(maa),
        mBf16 ? 1 : 0,
        dmBf16 ? 1 : 0,
        parts ? 1 : 0,
        B,
        T,
        C,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
    // a mixed input's consumers (matmuls) may each write a bf16 part of its gradient
    if (dt === "bf16") { for (const y of ys) y.maxGradParts = 2; }
    return ys;
  }

  /**
   * The chain between RWKV-7's projections and its WKV call, fused (mn_rwkv7_wkv_inputs_*): from
   * dec (the decay LoRA), k0 (key), kkk, aaa, mam, mkm (LoRA outputs), all [B,T,C] fp32, and the
   * parameter vectors time_decay, time_aaaaa, time_misc_a, time_misc_k [C], returns WKV's inputs
   * w, k, a = -kk, b = kk * sigmoid(aaa + time_aaaaa) (see kernels.h). w, a, b are WKV operands
   * (operandDtype); k is fp32 (the bonus reads it) with a bf16 copy for WKV on the bf16 path.
   * Same math as wkvInputsUnfused in train_rwkv7.ts.
   */
  rwkv7WkvInputs(
    ins: { dec: Var; k0: Var; kkk: Var; aaa: Var; mam: Var; mkm: Var },
    params: Var[],
    H: number,
    eps = 1e-12,
  ): { w: Var; k: Var; a: Var; b: Var } {
    const acts = [ins.dec, ins.k0, ins.kkk, ins.aaa, ins.mam, ins.mkm];
    acts.forEach((v) => sameShape("rwkv7WkvInputs", ins.k0.shape, v.shape));
    const [N, C] = rowsCols(ins.k0);
    if (params.length !== 4 || params.some((p) => p.t.numel !== C)) {
      throw new Error(`rwkv7WkvInputs: four parameter vectors of ${C} elements`);
    }
    if (C % H) throw new Error(`rwkv7WkvInputs: ${C} channels do not split into ${H} heads`);
    const inBf16 = acts[0].t.dtype === "bf16";
    if (acts.some((v) => v.t.dtype !== acts[0].t.dtype || v.t.dtype === "i32")) {
      throw new Error("rwkv7WkvInputs: the six inputs must be all fp32 or all bf16");
    }
    const dt = this.operandDtype(), shape = ins.k0.shape;
    const w = this.out(shape, "wkv.w", dt), a = this.out(shape, "wkv.a", dt);
    const b = this.out(shape, "wkv.b", dt), k = this.out(shape, "wkv.k");
    const kb = dt === "bf16" ? this.out(shape, "wkv.k.bf16", "bf16") : null;
    const ptrs = (vs: Var[]) => vs.map((v) => v.t.ptr);
    this.k.mn_rwkv7_wkv_inputs_forward(
      w.ptr,
      k.ptr,
      kb ? kb.ptr : null,
      a.ptr,
      b.ptr,
      ...ptrs(acts),
      ...ptrs(params),
      dt === "bf16" ? 1 : 0,
      inBf16 ? 1 : 0,
      N,
      H,
      C / H,
      eps,
      this.s,
    );
    const [vw, vk, va, vb] = this.multiNode([w, k, a, b], [...acts, ...params], (dout, ys) => {
      // WKV's gradients of w, a, b (and k) may be bf16, as the original's kernel gives them
      const bf = ys.map((y) => y.g?.dtype === "bf16");
      const wabBf16 = bf[0] && bf[2] && bf[3];
      // (w, a, b get theirs together; fp32 if not all three did)
      if (!wabBf16) [0, 2, 3].forEach((i) => bf[i] && (dout[i] = this.fp32Copy(ys[i])));
      const gradBf16 = this.gradSinksBf16(acts); // the projections' bf16 GEMM operands
      const sinks = [
        ...(gradBf16 ?? acts.map((v) => this.gradSink(v))),
        ...params.map((p) => this.paramSink(p, "rwkv7WkvInputs")),
      ];
      this.k.mn_rwkv7_wkv_inputs_backward(
        ...sinks.map(([p]) => p),
        ...dout,
        ...ptrs(acts),
        ...ptrs(params),
        inBf16 ? 1 : 0,
        gradBf16 ? 1 : 0,
        wabBf16 ? 1 : 0,
        bf[1] ? 1 : 0,
        N,
        H,
        C / H,
        eps,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
    vk.bf16 = kb;
    // the backward reads bf16 gradients of w, a, b (WKV's, as their one writer: gradSinksBf16)
    // and of k (where every writer adds in bf16: bf16AccOk)
    if (dt === "bf16") { for (const y of [vw, vk, va, vb]) y.bf16Grad = true; }
    return { w: vw, k: vk, a: va, b: vb };
  }

  /**
   * RWKV-7's value residual, fused (mn_rwkv7_value_mix_*): lerp(v, v1, sigmoid(mv + time_misc_v))
   * for the layers after the first; v (this layer's value), v1 (the first layer's) [B,T,C] fp32,
   * mv (the LoRA's output) fp32, or bf16 (matmul's outBf16: then its gradient is written bf16
   * where gradSinksBf16 allows), tmv [C]. The output is fp32 (the bonus reads it) with WKV's bf16
   * operand alongside on the bf16 path. Same math as lerp(v, v1, sigmoid(addRow(mv, tmv))).
   */
  rwkv7ValueMix(v: Var, v1: Var, mv: Var, tmv: Var): Var {
    const [N, C] = rowsCols(v);
    sameShape("rwkv7ValueMix", v.shape, v1.shape);
    sameShape("rwkv7ValueMix", v.shape, mv.shape);
    if (tmv.t.numel !== C) {
      throw new Error(`rwkv7ValueMix: tmv has ${tmv.t.numel} elements, not ${C}`);
    }
    if (v === v1) throw new Error("rwkv7ValueMix: v and v1 are one value (use lerp)");
    if (v.t.dtype !== "f32" || v1.t.dtype !== "f32") {
      throw new Error("rwkv7ValueMix: v and v1 must be fp32 (only mv may be bf16)");
    }
    const mvBf16 = mv.t.dtype === "bf16";
    if (!mvBf16 && mv.t.dtype !== "f32") throw new Error("rwkv7ValueMix: mv fp32 or bf16");
    const out = this.out(v.shape, "value_mix"); // [B,T,C] fp32
    const ob = this.precision === "f32" ? null : this.out(v.shape, "value_mix.bf16", "bf16");
    const p = [v, v1, mv, tmv].map((x) => x.t.ptr);
    const mvFlag = mvBf16 ? 1 : 0;
    this.k.mn_rwkv7_value_mix_forward(out.ptr, ob?.ptr ?? null, ...p, mvFlag, N, C, this.s);
    const y = this.node(out, [v, v1, mv, tmv], (y) => {
      const dmvBf16 = this.gradSinksBf16([mv]); // the LoRA's bf16 GEMM operand
      // v's too, the value projection's (this layer's v feeds only this mix)
      const dvBf16 = this.gradSinksBf16([v]);
      const sinks = [
        ...(dvBf16 ?? [this.gradSink(v)]),
        this.gradSink(v1),
        ...(dmvBf16 ?? [this.gradSink(mv)]),
        this.paramSink(tmv, "rwkv7ValueMix"),
      ];
      this.k.mn_rwkv7_value_mix_backward(
        ...sinks.map(([q]) => q),
        y.g.ptr,
        ...p,
        mvFlag,
        dmvBf16 ? 1 : 0,
        dvBf16 ? 1 : 0,
        y.g.dtype === "bf16" ? 1 : 0,
        N,
        C,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
    // its gradient may be bf16 (the bonus and WKV add into it in bf16: bf16AccOk)
    y.bf16Grad = this.precision === "bf16";
    y.bf16 = ob;
    return y;
  }

  /**
   * RWKV-7 after the WKV call, fused (mn_rwkv7_gn_bonus_gate_*): (GroupNorm(y) + bonus) * gate,
   * GroupNorm over H heads (weight, bias, eps), bonus = rwkv7Bonus(r, k, v, u, H); y, r, k, v
   * [B,T,C] fp32; gate fp32, or bf16 (matmul's outBf16: then its gradient is written bf16 where
   * gradSinksBf16 allows). The result is the output projection's operand (operandDtype). Same math
   * as mul(add(groupnorm(y, ..), rwkv7Bonus(r, k, v, u, H)), gate).
   */
  rwkv7GnBonusGate(
    y: Var,
    weight: Var,
    bias: Var,
    r: Var,
    k: Var,
    v: Var,
    u: Var,
    gate: Var,
    H: number,
    eps: number,
  ): Var {
    const acts = [r, k, v, gate];
    acts.forEach((x) => sameShape("rwkv7GnBonusGate", y.shape, x.shape));
    const [N, C] = rowsCols(y);
    if (C % H) throw new Error(`rwkv7GnBonusGate: ${C} channels do not split into ${H} heads`);
    for (const p of [weight, bias, u]) {
      if (p.t.numel !== C) throw new Error(`rwkv7GnBonusGate: ${p.t.numel} elements, not ${C}`);
    }
    if ([y, r, k, v].some((x) => x.t.dtype !== "f32")) {
      throw new Error("rwkv7GnBonusGate: y, r, k, v must be fp32 (only the gate may be bf16)");
    }
    const gateBf16 = gate.t.dtype === "bf16";
    if (!gateBf16 && gate.t.dtype !== "f32") throw new Error("rwkv7GnBonusGate: gate fp32 or bf16");
    const D = C / H, dt = this.operandDtype();
    const mean = this.out([N, H], "gn.mean"), rstd = this.out([N, H], "gn.rstd");
    const out = this.out(y.shape, "gn_bonus_gate", dt);
    const ptrs = (vs: Var[]) => vs.map((x) => x.t.ptr);
    this.k.mn_rwkv7_gn_bonus_gate_forward(
      out.ptr,
      mean.ptr,
      rstd.ptr,
      ...ptrs([y, weight, bias, r, k, v, u, gate]),
      dt === "bf16" ? 1 : 0,
      gateBf16 ? 1 : 0,
      N,
      H,
      D,
      eps,
      this.s,
    );
    return this.node(out, [y, weight, bias, r, k, v, u, gate], (z) => {
      const dgateBf16 = this.gradSinksBf16([gate]); // the gate LoRA's bf16 GEMM operand
      const sinks = [
        ...[y, r, k, v].map((x) => this.gradSink(x)),
        ...(dgateBf16 ?? [this.gradSink(gate)]),
        ...[weight, bias, u].map((p) => this.paramSink(p, "rwkv7GnBonusGate")),
      ];
      this.k.mn_rwkv7_gn_bonus_gate_backward(
        ...sinks.map(([p]) => p),
        z.g.ptr,
        y.t.ptr,
        weight.t.ptr,
        bias.t.ptr,
        mean.ptr,
        rstd.ptr,
        ...ptrs([r, k, v, u, gate]),
        gateBf16 ? 1 : 0,
        dgateBf16 ? 1 : 0,
        N,
        H,
        D,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
  }

  /**
   * RWKV-6 fused mixes after the maa LoRA (mn_rwkv6_mix5_*): out_j = x + xx * (m_j + maa_j), xx =
   * shift(x) - x, for the five (m, maa) pairs w, k, v, r, g: the original's xw, xk, xv, xr, xg
   * (rwkv7Mix4's math with five pairs; RWKV-6's first mix xxx is rwkv7MixX). x, m_j [B,T,C] fp32;
   * maa_j [C]. Outputs are matmul operands (see operandDtype). Same math as
   * add(x, mul(xx, addRow(m_j, maa_j))).
   */
  rwkv6Mix5(x: Var, m: Var[], maa: Var[]): Var[] {
    const [B, T, C] = x.shape;
    checkMixes("rwkv6Mix5", x, m, maa, 5);
    const dt = this.operandDtype();
    const outs = [0, 1, 2, 3, 4].map(() => this.out(x.shape, "mix5", dt));
    const ptrs = (vs: Var[]) => vs.map((v) => v.t.ptr);
    type P5 = [
      Deno.PointerValue,
      Deno.PointerValue,
      Deno.PointerValue,
      Deno.PointerValue,
      Deno.PointerValue,
    ];
    this.k.mn_rwkv6_mix5_forward(
      ...outs.map((o) => o.ptr) as P5,
      x.t.ptr,
      ...ptrs(m) as P5,
      ...ptrs(maa) as P5,
      dt === "bf16" ? 1 : 0,
      B,
      T,
      C,
      this.s,
    );
    return this.multiNode(outs, [x, ...m, ...maa], (dout) => {
      const sinks = [
        this.gradSink(x),
        ...m.map((v) => this.gradSink(v)),
        ...maa.map((p) => this.paramSink(p, "rwkv6Mix5")),
      ];
      const sp = sinks.map(([p]) => p);
      this.k.mn_rwkv6_mix5_backward(
        sp[0],
        ...sp.slice(1, 6) as P5,
        ...sp.slice(6, 11) as P5,
        ...dout as P5,
        x.t.ptr,
        ...ptrs(m) as P5,
        ...ptrs(maa) as P5,
        B,
        T,
        C,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
  }

  /**
   * RWKV-6's decay and key chain before WKV-6, fused (mn_rwkv6_decay_k_*): w = ww + time_decay,
   * kw = k * exp(min(w, 0)); ww (the decay LoRA), k [..., C] fp32, timeDecay [C]. w and kw are
   * WKV-6's operands (operandDtype: the bf16 the original's .bfloat16() makes). Same math as
   * w = addRow(ww, timeDecay); kw = mul(k, unary(w, "EXP_MIN0")).
   */
  rwkv6DecayK(ww: Var, k: Var, timeDecay: Var): { w: Var; kw: Var } {
    sameShape("rwkv6DecayK", ww.shape, k.shape);
    const [N, C] = rowsCols(ww);
    if (timeDecay.t.numel !== C) {
      throw new Error(`rwkv6DecayK: time_decay has ${timeDecay.t.numel} elements, not ${C}`);
    }
    const dt = this.operandDtype();
    const w = this.out(ww.shape, "decay.w", dt), kw = this.out(ww.shape, "decay.kw", dt);
    this.k.mn_rwkv6_decay_k_forward(
      w.ptr,
      kw.ptr,
      ww.t.ptr,
      k.t.ptr,
      timeDecay.t.ptr,
      dt === "bf16" ? 1 : 0,
      N,
      C,
      this.s,
    );
    const [vw, vkw] = this.multiNode([w, kw], [ww, k, timeDecay], ([dw, dkw]) => {
      const sinks = [
        this.gradSink(ww),
        this.gradSink(k),
        this.paramSink(timeDecay, "rwkv6DecayK"),
      ];
      this.k.mn_rwkv6_decay_k_backward(
        ...sinks.map(([p]) => p) as [Deno.PointerValue, Deno.PointerValue, Deno.PointerValue],
        dw,
        dkw,
        ww.t.ptr,
        k.t.ptr,
        timeDecay.t.ptr,
        N,
        C,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
    return { w: vw, kw: vkw };
  }

  /**
   * RWKV-6 after the WKV call, fused (mn_rwkv6_gn_gate_*): GroupNorm(y) * gate, GroupNorm over H
   * heads (weight, bias, eps); y [..., C] fp32; gate fp32, or bf16 (matmul's outBf16: then its
   * gradient is written bf16 where gradSinksBf16 allows). The result is the output projection's
   * operand (operandDtype). Same math as mul(groupnorm(y, weight, bias, H, eps), gate).
   */
  rwkv6GnGate(y: Var, weight: Var, bias: Var, gate: Var, H: number, eps: number): Var {
    sameShape("rwkv6GnGate", y.shape, gate.shape);
    const [N, C] = rowsCols(y);
    if (C % H) throw new Error(`rwkv6GnGate: ${C} channels do not split into ${H} heads`);
    for (const p of [weight, bias]) {
      if (p.t.numel !== C) throw new Error(`rwkv6GnGate: ${p.t.numel} elements, not ${C}`);
    }
    if (y.t.dtype !== "f32") throw new Error("rwkv6GnGate: y must be fp32");
    const gateBf16 = gate.t.dtype === "bf16";
    if (!gateBf16 && gate.t.dtype !== "f32") throw new Error("rwkv6GnGate: gate fp32 or bf16");
    const D = C / H, dt = this.operandDtype();
    const mean = this.out([N, H], "gn.mean"), rstd = this.out([N, H], "gn.rstd");
    const out = this.out(y.shape, "gn_gate", dt);
    this.k.mn_rwkv6_gn_gate_forward(
      out.ptr,
      mean.ptr,
      rstd.ptr,
      y.t.ptr,
      weight.t.ptr,
      bias.t.ptr,
      gate.t.ptr,
      dt === "bf16" ? 1 : 0,
      gateBf16 ? 1 : 0,
      N,
      H,
      D,
      eps,
      this.s,
    );
    return this.node(out, [y, weight, bias, gate], (z) => {
      const dgateBf16 = this.gradSinksBf16([gate]); // the gate LoRA's bf16 GEMM operand
      const sinks = [
        this.gradSink(y),
        ...(dgateBf16 ?? [this.gradSink(gate)]),
        this.paramSink(weight, "rwkv6GnGate"),
        this.paramSink(bias, "rwkv6GnGate"),
      ];
      const [dy, dgate, dweight, dbias] = sinks.map(([p]) => p);
      this.k.mn_rwkv6_gn_gate_backward(
        dy,
        dgate,
        dweight,
        dbias,
        z.g.ptr,
        y.t.ptr,
        weight.t.ptr,
        bias.t.ptr,
        mean.ptr,
        rstd.ptr,
        gate.t.ptr,
        gateBf16 ? 1 : 0,
        dgateBf16 ? 1 : 0,
        N,
        H,
        D,
        Graph.accumulateBits(sinks),
        this.s,
      );
    });
  }

  /**
   * Wraps the outputs of one op with several: one backward, recorded after the forward, so it runs
   * when the tape reaches the op (every consumer of every output has added its gradient by then),
   * given the output gradients (zeros for an output nobody used); then frees them.
   */
  /** Wraps an op's several outputs (one closure: their gradients are complete together). dout:
   * each output's fp32 gradient (a zero-filled one for an output nobody used), or null for one
   * held as bf16 parts (maxGradParts; the closure reads ys[i].gradParts). */
  multiNode(
    outs: Tensor[],
    inputs: Var[],
    bwd: (dout: Deno.PointerValue[], ys: Var[]) => void,
  ): Var[] {
    const ys = outs.map((o) => new Var(o, this.needs(...inputs)));
    if (!ys[0].requiresGrad) return ys;
    this.record(() => {
      if (ys.some((y) => y.g || y.gradParts.length)) {
        bwd(ys.map((y) => (y.gradParts.length ? null : this.grad(y))), ys);
      }
      ys.forEach((y) => this.dropGrad(y));
    }, inputs);
    return ys;
  }

  /** A parameter vector's gradient sink (the fused kernels' column sums only add). */
  private paramSink(p: Var, op: string): [Deno.PointerValue, boolean] {
    if (!p.requiresGrad || !p.g) throw new Error(`${op}: ${p.shape} must be a trainable parameter`);
    return [p.g.ptr, true];
  }

  /** RWKV-7 bonus: (sum_j r k u) * v per head; r,k,v [..., H*D], u [H, D] */
  rwkv7Bonus(r: Var, k: Var, v: Var, u: Var, H: number): Var {
    const [N, C] = rowsCols(r);
    const D = C / H;
    const out = this.out(r.shape, "bonus");
    this.k.mn_rwkv7_bonus_forward(out.ptr, r.t.ptr, k.t.ptr, v.t.ptr, u.t.ptr, N, H, D, this.s);
    return this.node(out, [r, k, v, u], (y) => {
      const [[dr, dk, dv, du], acc] = this.grads(r, k, v, u);
      this.k.mn_rwkv7_bonus_backward(
        dr,
        dk,
        dv,
        du,
        y.g.ptr,
        r.t.ptr,
        k.t.ptr,
        v.t.ptr,
        u.t.ptr,
        N,
        H,
        D,
        acc,
        this.s,
      );
    });
  }

  /**
   * WKV-7 on [B,T,H*N] inputs (fp32 values cast to bf16 as the original's .bfloat16()).
   * kernel: "fast" = backstepping (--fast_cuda), "wind" = tensor-core chunk-16 (--wind_cuda; the
   * same ABI and saved buffers as "fast"), "ref" = wkv7g (default).
   */
  wkv7(r: Var, w: Var, k: Var, v: Var, a: Var, b: Var, H: number, kernel: Wkv7Kernel): Var {
    const [B, T, C] = r.shape;
    const N = C / H;
    for (const x of [w, k, v, a, b]) sameShape("wkv7", r.shape, x.shape);
    const f32 = this.precision === "f32"; // exact path: fp32 inputs, wkv7g structure
    if (f32) kernel = "ref";
    const ins = [r, w, k, v, a, b].map((x) => (f32 ? x.t : this.bf16Of(x)));
    const y = this.out(r.shape, "wkv7");
    const sCk = this.out([B, H, T / 16, N, N], "wkv7.s");
    const sa = kernel !== "ref" ? this.out([B, T, H, N], "wkv7.sa") : null;
    const p = ins.map((t) => t.ptr);
    if (kernel === "fast") {
      this.k.mn_wkv7_forward(y.ptr, sCk.ptr, sa!.ptr, ...p, B, T, H, N, this.s);
    } else if (kernel === "wind") {
      this.k.mn_wkv7_wind_forward(y.ptr, sCk.ptr, sa!.ptr, ...p, B, T, H, N, this.s);
    } else if (f32) this.k.mn_wkv7g_forward_f32(y.ptr, sCk.ptr, ...p, B, T, H, N, this.s);
    else this.k.mn_wkv7g_forward(y.ptr, sCk.ptr, ...p, B, T, H, N, this.s);
    if (kernel !== "ref" && !f32) { for (const x of [r, k, v]) x.bf16Writers++; }
    return this.node(y, [r, w, k, v, a, b], (out) => {
      if (kernel !== "ref") {
        // in bf16 as the original's kernel gives them: r, k, v's gradients when every writer of
        // each adds in bf16 (the bonus's too); w, a, b's when their producer reads them so (the
        // fused WKV-input chain) and this is their one writer
        const rkv = [r, k, v].every((x) => this.bf16AccOk(x));
        const wab = this.gradSinksBf16([w, a, b]);
        const [rs, ks, vs] = rkv
          ? [r, k, v].map((x) => this.gradSinkBf16Acc(x))
          : [null, null, null];
        const [[gr, gw, gk, gv, ga, gb], acc0] = this.grads(
          rkv ? null : r,
          wab ? null : w,
          rkv ? null : k,
          rkv ? null : v,
          ...(wab ? [null, null] : [a, b]),
        );
        const acc = acc0 | (rkv ? Graph.accumulateBits([rs!, [null, false], ks!, vs!]) : 0);
        const gs = [
          rkv ? rs![0] : gr,
          wab ? wab[0][0] : gw,
          rkv ? ks![0] : gk,
          rkv ? vs![0] : gv,
          wab ? wab[1][0] : ga,
          wab ? wab[2][0] : gb,
        ];
        const args = [
          ...gs,
          out.g.ptr,
          ...p,
          sCk.ptr,
          sa!.ptr,
          B,
          T,
          H,
          N,
          rkv ? 1 : 0,
          wab ? 1 : 0,
          acc,
        ] as const;
        if (kernel === "fast") this.k.mn_wkv7_backward(...args, this.s);
        else this.k.mn_wkv7_wind_backward(...args, this.s);
        return;
      }
      const [g, acc] = this.grads(r, w, k, v, a, b);
      const ws = this.out([B, H, 17, N, N], "wkv7g.ws"); // per-chunk recomputed states
      const bwd = f32 ? this.k.mn_wkv7g_backward_f32 : this.k.mn_wkv7g_backward;
      bwd(...g, out.g.ptr, ...p, sCk.ptr, ws.ptr, B, T, H, N, acc, this.s);
    });
  }

  /**
   * The model's end: logits = x @ W^T, softcapped, cross-entropy with targets, mean over rows.
   * Done in row chunks so the [N, V] logits never exist whole; when grad is on, the head's
   * backward (dx, dW += ...) runs right here with dloss = lossScale / N, since nothing follows
   * the loss. Returns the per-row losses [N] (device); their mean is the loss.
   */
  lmHeadLoss(
    x: Var,
    W: Var,
    targets: Tensor,
    softcap: number,
    lossScale = 1,
    chunkRows = 8192,
  ): Tensor {
    const [N, C] = rowsCols(x);
    const [V, WC] = W.shape;
    if (WC !== C) throw new Error(`lmHeadLoss: head is [${V},${WC}], x rows have ${C}`);
    if (targets.numel !== N) throw new Error(`lmHeadLoss: ${targets.numel} targets for ${N} rows`);
    const losses = this.out([N], "losses");
    const xb = this.operand(x), wb = this.operand(W);
    const train = this.needs(x, W);
    const f32 = this.precision === "f32";
    const rows = Math.min(chunkRows, N);
    const logits = this.pool.take([rows, V], "f32", "logits");
    const dlb = train && !f32 ? this.pool.take([rows, V], "bf16", "dlogits.bf16") : null;
    // the row chunks of dx tile it (each may overwrite its rows); dW sums over the chunks, so only
    // the first chunk may overwrite it
    const [, acc] = train ? this.grads(x, W) : [null, 3];
    const betaX = acc & 1, betaW = (acc >> 1) & 1;
    const rowOff = (t: Tensor, r: number, width: number) =>
      Deno.UnsafePointer.offset(t.ptr, r * width * DTYPE_BYTES[t.dtype]);
    for (let r0 = 0; r0 < N; r0 += rows) {
      const n = Math.min(rows, N - r0);
      this.gemm(0, 1, n, V, C, 1, rowOff(xb, r0, C), C, 0n, wb.ptr, C, 0n, 0, logits.ptr, V, 0n);
      const tgt = Deno.UnsafePointer.offset(targets.ptr, r0 * 4);
      this.k.mn_softcap_crossentropy(
        rowOff(losses, r0, 1),
        train ? logits.ptr : null,
        logits.ptr,
        tgt,
        n,
        V,
        softcap,
        lossScale / N,
        this.s,
      );
      if (!train) continue;
      const dl = f32 ? logits : dlb!;
      if (!f32) this.k.mn_cast_f32_to_bf16(dlb!.ptr, logits.ptr, BigInt(n * V), this.s);
      if (x.requiresGrad) {
        const xg = rowOff(x.g!, r0, C);
        this.gemm(0, 0, n, C, V, 1, dl.ptr, V, 0n, wb.ptr, C, 0n, betaX, xg, C, 0n);
      }
      if (W.requiresGrad) {
        const beta = r0 === 0 ? betaW : 1;
        this.gemm(1, 0, V, C, n, 1, dl.ptr, V, 0n, rowOff(xb, r0, C), C, 0n, beta, W.g!.ptr, C, 0n);
      }
    }
    this.pool.give(logits);
    if (dlb) this.pool.give(dlb);
    return losses;
  }
}
