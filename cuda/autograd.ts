// A small tape autograd over the kernel ABI, so a record attempt can change a model's forward
// without hand-writing its backward: every op below launches its forward kernel and, when grad is
// on, records a closure that launches the paired backward kernel(s). Backward kernels accumulate
// (+=), so a value used twice needs nothing special; micro-steps are summed by GradAccumulator.
//
//   const g = new Graph(be);
//   const h = g.linear(g.rmsnorm(x), W);  ...  const loss = g.lmHeadLoss(h, head, targets, 30);
//   g.backward();          // runs the tape in reverse; parameter grads are now in p.grad
//   g.release();           // returns this step's activations to the pool (reused next step)
//
// Memory: activations come from a pool of exact-size buffers that are reused step after step, so
// after the first step there are no allocations. An activation's gradient is allocated (zeroed)
// when first needed in backward and returned to the pool as soon as its producer's backward ran.
import { type Backend, type Dtype, DTYPE_BYTES, Tensor } from "./backend.ts";
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
  /** microStep(i) runs micro-step i's forward, backward and release; i = 0 .. accum-1. */
  run(accum: number, microStep: (i: number) => void) {
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
      if (this.extra) k.mn_axpy(this.flat!.ptr, 1, this.extra.ptr, this.flat!.n, s);
      else this.params.forEach((p, j) => k.mn_axpy(p.grad.ptr, 1, this.sinks[j].ptr, p.grad.n, s));
    }
  }
}

/** A value in the graph: a tensor, and its gradient once backward asks for it. */
export class Var {
  g: Tensor | null = null;
  constructor(
    readonly t: Tensor,
    readonly requiresGrad: boolean,
    readonly param: Param | null = null,
  ) {
    if (param) this.g = param.sink;
  }
  get shape(): readonly number[] {
    return this.t.shape;
  }
}

/** Exact-size buffer pool: a step's buffers are handed back and reused by the next step. */
class Pool {
  private free = new Map<string, Tensor[]>();
  constructor(private be: Backend) {}
  take(shape: readonly number[], dtype: Dtype, label: string): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    const key = `${n * DTYPE_BYTES[dtype]}`;
    const list = this.free.get(key);
    const t = list && list.length ? list.pop()! : this.be.alloc([n], dtype, label);
    return new Tensor(t.ptr, shape, dtype, label);
  }
  give(t: Tensor) {
    const key = `${t.nbytes}`;
    let list = this.free.get(key);
    if (!list) this.free.set(key, list = []);
    list.push(t);
  }
}

const OP = kernelsHeaderConstants();
/** WKV-7 structure: "ref" = wkv7g, "fast" = backstepping, "wind" = tensor-core chunk-16. */
export type Wkv7Kernel = "ref" | "fast" | "wind";
export type UnaryOp = "TANH" | "SIGMOID" | "RWKV7_DECAY" | "EXP_MIN0" | "NEG";

function sameShape(what: string, a: readonly number[], b: readonly number[]) {
  if (a.length !== b.length || a.some((d, i) => d !== b[i])) {
    throw new Error(`${what}: shapes [${a.join(",")}] and [${b.join(",")}] differ`);
  }
}
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
  private live: Tensor[] = []; // this step's activations, returned to the pool by release()
  private pool: Pool;
  private consts = new Map<number, Tensor>();
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
    this.live.push(t);
    return t;
  }
  needs(...vs: (Var | null | undefined)[]): boolean {
    return this.gradEnabled && vs.some((v) => v && v.requiresGrad);
  }
  record(fn: () => void) {
    this.tape.push(fn);
  }
  /** The gradient buffer of v, zero-filled on first use (null when v needs no gradient). */
  grad(v: Var): Deno.PointerValue {
    if (!v.requiresGrad) return null;
    if (!v.g) {
      v.g = this.pool.take(v.shape, "f32", "grad");
      this.k.mn_memset(v.g.ptr, 0, BigInt(v.g.nbytes), this.s);
    }
    return v.g.ptr;
  }
  /** Done with v's gradient (its producer's backward has run): the buffer goes back to the pool. */
  dropGrad(v: Var) {
    if (v.g && !v.param) {
      this.pool.give(v.g);
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

  /** Runs the recorded backward closures in reverse order and clears the tape. */
  backward() {
    for (let i = this.tape.length - 1; i >= 0; i--) this.tape[i]();
    this.tape = [];
  }
  /** Returns every activation of this step to the pool (call after backward, or after eval). */
  release() {
    for (const t of this.live) this.pool.give(t);
    this.live = [];
    this.tape = [];
  }

  // ---- ops: each forward kernel paired with its backward ----
  /** Wraps an op's output: records `bwd` (run only if the output got a gradient), then frees it. */
  node(out: Tensor, inputs: (Var | null)[], bwd: (y: Var & { g: Tensor }) => void): Var {
    const y = new Var(out, this.needs(...inputs));
    if (y.requiresGrad) {
      this.record(() => {
        if (y.g) bwd(y as Var & { g: Tensor });
        this.dropGrad(y);
      });
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

  unary(x: Var, op: UnaryOp): Var {
    const code = OP[`MN_OP_${op}`];
    return this.unaryLike(
      x,
      op.toLowerCase(),
      (out) => this.k.mn_unary_forward(out.ptr, x.t.ptr, code, x.t.n, this.s),
      (y) => this.k.mn_unary_backward(this.grad(x), y.g.ptr, x.t.ptr, y.t.ptr, code, x.t.n, this.s),
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
    return this.node(out, [a, b], (y) => {
      if (a.requiresGrad) this.k.mn_axpy(this.grad(a), 1, y.g.ptr, a.t.n, this.s);
      if (b.requiresGrad) this.k.mn_axpy(this.grad(b), 1, y.g.ptr, b.t.n, this.s);
    });
  }

  /** alpha*x + beta*y with scalars that are either numbers (constants) or 1-element Vars. */
  axpby(alpha: number | Var, x: Var, beta: number | Var, y: Var): Var {
    sameShape("axpby", x.shape, y.shape);
    const sa = typeof alpha === "number" ? this.input(this.constant(alpha)) : alpha;
    const sb = typeof beta === "number" ? this.input(this.constant(beta)) : beta;
    const out = this.out(x.shape, "axpby");
    this.k.mn_axpby_forward(out.ptr, x.t.ptr, y.t.ptr, sa.t.ptr, sb.t.ptr, x.t.n, this.s);
    return this.node(out, [x, y, sa, sb], (z) => {
      this.k.mn_axpby_backward(
        this.grad(x),
        this.grad(y),
        this.grad(sa),
        this.grad(sb),
        z.g.ptr,
        x.t.ptr,
        y.t.ptr,
        sa.t.ptr,
        sb.t.ptr,
        x.t.n,
        this.s,
      );
    });
  }

  /** element i of a 1-D parameter, as a 1-element Var whose gradient aliases the parameter's */
  scalarOf(p: Var, i: number): Var {
    if (!p.param) throw new Error("scalarOf: expects a parameter");
    const v = new Var(p.t.rows(i, 1), true);
    v.g = p.param.sink.rows(i, 1);
    return v;
  }

  mul(a: Var, b: Var): Var {
    sameShape("mul", a.shape, b.shape);
    const out = this.out(a.shape, "mul");
    this.k.mn_mul_forward(out.ptr, a.t.ptr, b.t.ptr, a.t.n, this.s);
    return this.node(out, [a, b], (y) => {
      this.k.mn_mul_backward(
        this.grad(a),
        this.grad(b),
        y.g.ptr,
        a.t.ptr,
        b.t.ptr,
        a.t.n,
        this.s,
      );
    });
  }

  /** x + (y - x) * g */
  lerp(x: Var, y: Var, g: Var): Var {
    sameShape("lerp", x.shape, y.shape);
    sameShape("lerp", x.shape, g.shape);
    const out = this.out(x.shape, "lerp");
    this.k.mn_lerp_forward(out.ptr, x.t.ptr, y.t.ptr, g.t.ptr, x.t.n, this.s);
    return this.node(out, [x, y, g], (z) => {
      this.k.mn_lerp_backward(
        this.grad(x),
        this.grad(y),
        this.grad(g),
        z.g.ptr,
        x.t.ptr,
        y.t.ptr,
        g.t.ptr,
        x.t.n,
        this.s,
      );
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
      this.k.mn_add_row_vector_backward(this.grad(x), this.grad(v), y.g.ptr, N, C, this.s);
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
      this.k.mn_mul_row_vector_backward(
        this.grad(x),
        this.grad(v),
        y.g.ptr,
        x.t.ptr,
        v.t.ptr,
        N,
        C,
        this.s,
      );
    });
  }

  /** out[b,t] = x[b,t-1], zeros at t = 0; x [B,T,C] */
  timeShift(x: Var): Var {
    const [B, T, C] = x.shape;
    return this.unaryLike(
      x,
      "timeShift",
      (out) => this.k.mn_time_shift_forward(out.ptr, x.t.ptr, B, T, C, this.s),
      (y) => this.k.mn_time_shift_backward(this.grad(x), y.g.ptr, B, T, C, this.s),
    );
  }

  relu2(x: Var): Var {
    return this.unaryLike(
      x,
      "relu2",
      (out) => this.k.mn_relu2_forward(out.ptr, x.t.ptr, x.t.n, this.s),
      (y) => this.k.mn_relu2_backward(this.grad(x), y.g.ptr, x.t.ptr, x.t.n, this.s),
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
      (y) => this.k.mn_rmsnorm_backward(this.grad(x), y.g.ptr, x.t.ptr, rstd.ptr, N, C, this.s),
    );
  }

  /** nn.LayerNorm over the last dimension */
  layernorm(x: Var, w: Var, b: Var, eps = 1e-5): Var {
    const [N, C] = rowsCols(x);
    const mean = this.out([N], "ln.mean"), rstd = this.out([N], "ln.rstd");
    const out = this.out(x.shape, "layernorm");
    this.k.mn_layernorm_forward(
      out.ptr,
      mean.ptr,
      rstd.ptr,
      x.t.ptr,
      w.t.ptr,
      b.t.ptr,
      N,
      C,
      eps,
      this.s,
    );
    return this.node(out, [x, w, b], (y) => {
      this.k.mn_layernorm_backward(
        this.grad(x),
        this.grad(w),
        this.grad(b),
        y.g.ptr,
        x.t.ptr,
        w.t.ptr,
        mean.ptr,
        rstd.ptr,
        N,
        C,
        this.s,
      );
    });
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
      this.k.mn_groupnorm_backward(
        this.grad(x),
        this.grad(w),
        this.grad(b),
        y.g.ptr,
        x.t.ptr,
        w.t.ptr,
        mean.ptr,
        rstd.ptr,
        N,
        G,
        D,
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
      (y) => this.k.mn_l2norm_backward(this.grad(x), y.g.ptr, x.t.ptr, rows, D, eps, this.s),
    );
  }

  /** embedding lookup: idx [N] int32 (device), W [V, C] -> [N, C] */
  embedding(idx: Tensor, W: Var, shape: readonly number[]): Var {
    const [V, C] = W.shape;
    const N = idx.numel;
    const out = this.out([...shape, C], "embedding");
    this.k.mn_embedding_forward(out.ptr, idx.ptr, W.t.ptr, N, C, V, this.s);
    return this.node(
      out,
      [W],
      (y) => this.k.mn_embedding_backward(this.grad(W), idx.ptr, y.g.ptr, N, C, V, this.s),
    );
  }

  /** a matmul operand in this graph's precision (a parameter uses its cached bf16 shadow) */
  operand(v: Var): Tensor {
    return this.precision === "f32" ? v.t : this.bf16Of(v);
  }
  /** an upstream gradient as a matmul operand */
  gradOperand(g: Tensor): Tensor {
    if (this.precision === "f32") return g;
    const t = this.out(g.shape, "dy.bf16", "bf16");
    this.k.mn_cast_f32_to_bf16(t.ptr, g.ptr, g.n, this.s);
    return t;
  }
  /** fp32 C = alpha op(A) op(B) + beta C with A, B in this graph's precision (see mn_gemm_bf16) */
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
  ) {
    const args = [ta, tb, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC] as const;
    if (this.precision === "f32") this.k.mn_gemm_f32(...args, batch, this.s);
    else this.k.mn_gemm_bf16(...args, 0, batch, this.s); // 0: fp32 C
  }

  /** bf16 copy of an activation for a matmul operand (a parameter uses its cached shadow) */
  bf16Of(v: Var): Tensor {
    if (v.param) return v.param.bf16();
    if (v.t.dtype === "bf16") return v.t; // a fused op already wrote the operand in bf16
    const t = this.out(v.shape, "bf16", "bf16");
    this.k.mn_cast_f32_to_bf16(t.ptr, v.t.ptr, v.t.n, this.s);
    return t;
  }

  /**
   * y = a @ b (transB: a @ b^T, i.e. nn.Linear with b [out, in]). a [..., K]; b [K, M] or [M, K].
   * bf16 operands, fp32 accumulation and fp32 output (autocast's matmul, kept in fp32 after).
   */
  matmul(a: Var, b: Var, transB = false): Var {
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
    const out = this.out([...a.shape.slice(0, -1), M], "matmul");
    const ldb = transB ? K : M;
    this.gemm(0, transB ? 1 : 0, N, M, K, 1, ab.ptr, K, 0n, bb.ptr, ldb, 0n, 0, out.ptr, M, 0n);
    return this.node(out, [a, b], (y) => {
      const dy = this.gradOperand(y.g);
      // da[N,K] += dy[N,M] @ op(b)^T
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
          1,
          this.grad(a),
          K,
          0n,
        );
      }
      // db += a^T @ dy  ([K,M]) or dy^T @ a ([M,K]) when b is stored transposed
      if (b.requiresGrad) {
        if (transB) {
          this.gemm(1, 0, M, K, N, 1, dy.ptr, M, 0n, ab.ptr, K, 0n, 1, this.grad(b), K, 0n);
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
            1,
            this.grad(b),
            M,
            0n,
          );}
      }
    });
  }

  /**
   * The RWKV-7 mix LoRA's bmm: x [N, nb*D] viewed as nb blocks of D columns, w [nb, D, C];
   * returns nb values [N, C]: out_i = x[:, iD:(i+1)D] @ w[i].
   */
  blockMatmul(x: Var, w: Var): Var[] {
    const [N, XC] = rowsCols(x);
    const [nb, D, C] = w.shape;
    if (XC !== nb * D) throw new Error(`blockMatmul: x has ${XC} columns, w needs ${nb}x${D}`);
    const xb = this.operand(x), wb = this.operand(w);
    const outs: Var[] = [];
    const off = (t: Tensor, elems: number) =>
      Deno.UnsafePointer.offset(t.ptr, elems * DTYPE_BYTES[t.dtype]);
    const all = this.out([nb, N, C], "blockMatmul");
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
    );
    for (let i = 0; i < nb; i++) {
      const yi = new Var(all.rows(i, 1).view([...x.shape.slice(0, -1), C]), this.needs(x, w));
      outs.push(yi);
      if (!yi.requiresGrad) continue;
      this.record(() => {
        if (yi.g) {
          const dy = this.gradOperand(yi.g);
          if (x.requiresGrad) {
            // dx[:, iD:(i+1)D] += dy @ w[i]^T
            this.grad(x);
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
              1,
              off(x.g!, i * D),
              XC,
              0n,
            );
          }
          if (w.requiresGrad) {
            // dw[i] += x[:, iD:(i+1)D]^T @ dy
            this.grad(w);
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
              1,
              off(w.g!, i * D * C),
              C,
              0n,
            );
          }
        }
        this.dropGrad(yi);
      });
    }
    return outs;
  }

  /** RWKV-7 bonus: (sum_j r k u) * v per head; r,k,v [..., H*D], u [H, D] */
  rwkv7Bonus(r: Var, k: Var, v: Var, u: Var, H: number): Var {
    const [N, C] = rowsCols(r);
    const D = C / H;
    const out = this.out(r.shape, "bonus");
    this.k.mn_rwkv7_bonus_forward(out.ptr, r.t.ptr, k.t.ptr, v.t.ptr, u.t.ptr, N, H, D, this.s);
    return this.node(out, [r, k, v, u], (y) => {
      this.k.mn_rwkv7_bonus_backward(
        this.grad(r),
        this.grad(k),
        this.grad(v),
        this.grad(u),
        y.g.ptr,
        r.t.ptr,
        k.t.ptr,
        v.t.ptr,
        u.t.ptr,
        N,
        H,
        D,
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
    return this.node(y, [r, w, k, v, a, b], (out) => {
      const g = [r, w, k, v, a, b].map((x) => this.grad(x));
      if (kernel === "fast") {
        this.k.mn_wkv7_backward(...g, out.g.ptr, ...p, sCk.ptr, sa!.ptr, B, T, H, N, this.s);
      } else if (kernel === "wind") {
        this.k.mn_wkv7_wind_backward(...g, out.g.ptr, ...p, sCk.ptr, sa!.ptr, B, T, H, N, this.s);
      } else {
        const ws = this.out([B, H, 17, N, N], "wkv7g.ws"); // per-chunk recomputed states
        if (f32) {
          this.k.mn_wkv7g_backward_f32(
            ...g,
            out.g.ptr,
            ...p,
            sCk.ptr,
            ws.ptr,
            B,
            T,
            H,
            N,
            this.s,
          );
        } else {this.k.mn_wkv7g_backward(
            ...g,
            out.g.ptr,
            ...p,
            sCk.ptr,
            ws.ptr,
            B,
            T,
            H,
            N,
            this.s,
          );}
      }
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
    if (train && x.requiresGrad) this.grad(x);
    if (train && W.requiresGrad) this.grad(W);
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
        this.gemm(0, 0, n, C, V, 1, dl.ptr, V, 0n, wb.ptr, C, 0n, 1, rowOff(x.g!, r0, C), C, 0n);
      }
      if (W.requiresGrad) {
        this.gemm(1, 0, V, C, n, 1, dl.ptr, V, 0n, rowOff(xb, r0, C), C, 0n, 1, W.g!.ptr, C, 0n);
      }
    }
    this.pool.give(logits);
    if (dlb) this.pool.give(dlb);
    return losses;
  }
}
