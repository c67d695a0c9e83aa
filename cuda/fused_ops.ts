// Tape ops over the fused kernels of the record models (cuda/gpt2_fused.cu): the fast path of the
// trainers. Each is the composition of generic Graph ops it replaces (same rounding of every
// element), launched as one forward and one backward kernel; the generic ops stay in
// cuda/autograd.ts for anyone who changes a model.
import { DTYPE_BYTES, Tensor } from "./backend.ts";
import { type Graph, Var } from "./autograd.ts";

const ONES = new WeakMap<Graph, Tensor>();
/** the coefficients [1, 1] in device memory (a plain residual add), one per graph */
function ones(g: Graph): Tensor {
  let t = ONES.get(g);
  if (!t) ONES.set(g, t = g.be.upload(new Float32Array([1, 1]), [2], "f32", "const [1,1]"));
  return t;
}

/**
 * x_out = ab[0]*(x + r) + ab[1]*y (ab: a 2-element parameter such as a block's lambdas; null:
 * [1, 1], a residual add; r: null for x alone, or the previous block's MLP output, its residual
 * add folded in), then normed = F.rms_norm(x_out) over the last dimension. Returns [x_out,
 * normed]: x_out fp32 (the residual stream), normed the next matmul's operand, bf16 in the graph's
 * bf16 precision (fp32 gradient), fp32 in "f32". y and r may be bf16 matmul outputs (outBf16):
 * their gradients are then written in bf16 where Graph.gradSinksBf16 allows (the matmul backward's
 * operand, no cast). x may be y (both fp32); r is neither. normed's gradient may be bf16 (its
 * sole consumer's GEMM output: bf16Grad).
 */
export function mixRmsnorm(
  g: Graph,
  x: Var,
  y: Var,
  ab: Var | null,
  r: Var | null = null,
  eps = 1.1920928955078125e-7,
): [Var, Var] {
  const C = x.shape[x.shape.length - 1], N = x.t.numel / C;
  for (const v of [y, r]) {
    if (v && v.t.numel !== x.t.numel) throw new Error(`mixRmsnorm: x ${x.t} and ${v.t} differ`);
  }
  if (ab && ab.t.numel !== 2) throw new Error(`mixRmsnorm: ab has ${ab.t.numel} elements, not 2`);
  if (r && (r === x || r === y)) throw new Error("mixRmsnorm: r must be distinct from x and y");
  if (x.t.dtype !== "f32") {
    throw new Error(`mixRmsnorm: x ${x.t} must be fp32`);
  }
  const f32 = g.precision === "f32";
  const abT = ab ? ab.t : ones(g);
  const isBf16 = (v: Var | null) => (v?.t.dtype === "bf16" ? 1 : 0);
  const [rBf16, yBf16] = [isBf16(r), isBf16(y)];
  const xo = g.out(x.shape, "mix"); // [N, C] fp32
  const normed = g.out(x.shape, "mix.rmsnorm", f32 ? "f32" : "bf16"); // [N, C]
  const rstd = g.out([N], "mix.rstd"); // [N] fp32
  const rP = r ? r.t.ptr : null;
  g.k.mn_mix_rmsnorm_forward(
    xo.ptr,
    f32 ? normed.ptr : null,
    f32 ? null : normed.ptr,
    rstd.ptr,
    x.t.ptr,
    rP,
    y.t.ptr,
    abT.ptr,
    rBf16,
    yBf16,
    N,
    C,
    eps,
    g.s,
  );
  const needs = g.needs(x, y, ab, r);
  const xv = new Var(xo, needs), nv = new Var(normed, needs);
  // normed's gradient may be bf16, as autocast's linear writes its input gradient (the kernel
  // widens it): a sole consumer that can (mlpRelu2, matmul) writes it so, half the bytes
  nv.bf16Grad = true;
  if (needs) {
    g.record(() => {
      if (xv.g || nv.g) {
        // a matmul output's gradient straight in bf16 when this is its one writer (gradSinksBf16)
        const drBf16 = r !== null && r.requiresGrad && g.gradSinksBf16([r]) !== null;
        const dyBf16 = y !== x && y.requiresGrad && g.gradSinksBf16([y]) !== null;
        // x may be y: then the kernel writes dx before dy (in order), so the first may overwrite
        const [[dx, dr, dy, dab], acc] = g.gradsInOrder(
          x,
          drBf16 ? null : r,
          dyBf16 ? null : y,
          ab,
        );
        const dnorm = g.grad(nv); // zeros if only x_out was used (never in the model)
        g.k.mn_mix_rmsnorm_backward(
          dx,
          drBf16 ? r!.g!.ptr : dr,
          dyBf16 ? y.g!.ptr : dy,
          dab,
          xv.g ? xv.g.ptr : null,
          dnorm,
          xo.ptr,
          rstd.ptr,
          x.t.ptr,
          rP,
          y.t.ptr,
          abT.ptr,
          rBf16,
          yBf16,
          drBf16 ? 1 : 0,
          dyBf16 ? 1 : 0,
          nv.g!.dtype === "bf16" ? 1 : 0,
          N,
          C,
          acc,
          g.s,
        );
      }
      g.dropGrad(xv);
      g.dropGrad(nv);
    }, [x, r, y, ab]);
  }
  return [xv, nv];
}

/** The operand a fused op writes: bf16 in the graph's bf16 precision, fp32 in "f32". */
function operandOut(g: Graph, shape: readonly number[], label: string): Tensor {
  return g.out(shape, label, g.precision === "f32" ? "f32" : "bf16");
}
const f32Ptr = (t: Tensor) => (t.dtype === "f32" ? t.ptr : null);
const bf16Ptr = (t: Tensor) => (t.dtype === "bf16" ? t.ptr : null);

/** 1 when t is bf16 (the ABI's dtype flags) */
const isBf16 = (t: Tensor) => (t.dtype === "bf16" ? 1 : 0);
/** the address `elems` elements into t (a column block of a row-major matrix) */
const at = (t: Tensor, elems: number) =>
  Deno.UnsafePointer.offset(t.ptr as Deno.PointerObject, elems * DTYPE_BYTES[t.dtype]);

/** The first block's v of GPT-2's value residual: a column block of that block's fused q|k|v
 * output (rows 3C apart), read by every later block's value mix. Its Var's gradient is fp32
 * [N, C], contiguous (every block adds to it); its tensor is not contiguous: only qkvHeads
 * reads it. */
export interface FirstV {
  v: Var;
  qkv: Tensor;
}

/**
 * The attention's inputs from the normed residual x [B,T,C]: q, k, v = x @ W^T (the three
 * nn.Linear [C, C] weights as one GEMM over their stacked bf16 operands: x is read once), then
 * rotary(F.rms_norm(q)), the same of k (the record's QK norm over the head dim D = C/H), and the
 * value residual v + lamb (v1 - v) with v1 the first block's v (`first`; null in the first block,
 * which returns its own). q, k, v are autocast's bf16 (fp32 on the "f32" path), read in place by
 * the norm and mix kernels (rows 3C apart); their gradients land in one [N, 3C] buffer, so the
 * backward is one dx GEMM (K = 3C) and one dW GEMM instead of three of each. Returns [q, k, v]
 * ([B,T,H,D] attention operands, whose gradients may come bf16) and the first block's FirstV.
 */
export function qkvHeads(
  g: Graph,
  x: Var,
  ws: [Var, Var, Var],
  lamb: Var,
  first: FirstV | null,
  H: number,
  eps = 1.1920928955078125e-7,
): [Var, Var, Var, FirstV] {
  const [B, T, C] = x.shape, N = B * T, D = C / H, S = 3 * C;
  for (const w of ws) {
    if (w.shape[0] !== C || w.shape[1] !== C) {
      throw new Error(`qkvHeads: ${w.t} is not [${C},${C}]`);
    }
  }
  const dt = g.precision === "f32" ? "f32" : "bf16";
  const xb = g.operand(x); // [N, C]
  const wcat = g.out([S, C], "qkv.w", dt); // [3C, C]: W_q, W_k, W_v stacked (kept for dx)
  const wBytes = C * C * DTYPE_BYTES[dt];
  ws.forEach((w, j) =>
    g.k.mn_memcpy_d2d(at(wcat, j * C * C), g.operand(w).ptr, BigInt(wBytes), g.s)
  );
  const qkv = g.out([N, S], "qkv", dt); // [N, 3C]: q | k | v of each token
  g.gemm(0, 1, N, S, C, 1, xb.ptr, C, 0n, wcat.ptr, C, 0n, 0, qkv.ptr, S, 0n, 1, dt === "bf16");
  const qb = isBf16(qkv), shape = [B, T, H, D];
  const rstds = [0, 1].map((j) => {
    const out = operandOut(g, shape, j ? "k.rotary" : "q.rotary"); // [B,T,H,D]
    const rstd = g.out([N * H], "qk.rstd"); // [B*T*H] fp32
    g.k.mn_qk_rmsnorm_rotary_forward(
      f32Ptr(out),
      bf16Ptr(out),
      rstd.ptr,
      at(qkv, j * C),
      qb,
      S,
      B,
      T,
      H,
      D,
      eps,
      g.s,
    );
    return [out, rstd] as const;
  });
  const needs = g.needs(x, ...ws, lamb);
  const own: FirstV = first ?? {
    v: new Var(
      new Tensor(at(qkv, 2 * C) as Deno.PointerObject, [N, C], dt, "qkv.v (rows 3C apart)"),
      needs,
    ),
    qkv,
  };
  const vm = operandOut(g, shape, "value_mix"); // [B,T,H,D]
  const v1 = at(own.qkv, 2 * C);
  g.k.mn_value_mix_forward(
    f32Ptr(vm),
    bf16Ptr(vm),
    at(qkv, 2 * C),
    v1,
    lamb.t.ptr,
    qb,
    C,
    S,
    BigInt(N * C),
    g.s,
  );
  const outs = [rstds[0][0], rstds[1][0], vm].map((t) => new Var(t, needs));
  outs.forEach((o) => (o.bf16Grad = true)); // the attention may write their gradients in bf16
  if (!needs) return [outs[0], outs[1], outs[2], own];
  g.record(() => {
    const v0 = first ? null : own.v; // the first block: v1 is its own v
    if (outs.some((o) => o.g) || v0?.g) {
      const dqkv = g.out([N, S], "qkv.grad", dt); // [N, 3C], overwritten below
      const db = isBf16(dqkv);
      outs.forEach((o) => o.g || g.grad(o));
      [0, 1].forEach((j) => {
        const dout = outs[j].g!;
        g.k.mn_qk_rmsnorm_rotary_backward(
          at(dqkv, j * C),
          dout.ptr,
          at(qkv, j * C),
          rstds[j][1].ptr,
          qb,
          isBf16(dout),
          db,
          S,
          B,
          T,
          H,
          D,
          0,
          g.s,
        );
      });
      const dout = outs[2].g!;
      const vmix = (
        dv: Deno.PointerValue,
        dv1: Deno.PointerValue,
        ldDv: number,
        dvBf16: number,
        acc: number,
        dlamb: Deno.PointerValue,
      ) =>
        g.k.mn_value_mix_backward(
          dv,
          dv1,
          dlamb,
          dout.ptr,
          at(qkv, 2 * C),
          v1,
          lamb.t.ptr,
          qb,
          isBf16(dout),
          dvBf16,
          C,
          S,
          ldDv,
          BigInt(N * C),
          acc,
          g.s,
        );
      if (first) {
        // v's gradient straight into its block of dqkv; v1's (fp32) and lamb's added to
        const [[, dv1, dlamb], acc] = g.grads(null, first.v, lamb);
        vmix(at(dqkv, 2 * C), dv1, S, db, acc, dlamb);
      } else {
        // v1 is v: the later blocks' sum (v0.g) plus this block's, in fp32, then into dqkv
        const [[dlamb], lacc] = g.grads(lamb);
        const dv = v0!.g ?? g.out([N, C], "qkv.dv"); // [N, C] fp32
        vmix(dv.ptr, dv.ptr, C, 0, (v0!.g ? 1 : 0) | (lacc & 1 ? 4 : 0), dlamb);
        g.k.mn_copy_columns(at(dqkv, 2 * C), S, db, dv.ptr, C, 0, N, C, 0, g.s);
        g.dropGrad(v0!);
      }
      if (x.requiresGrad) {
        // dx [N, C] (+)= dqkv [N, 3C] @ wcat [3C, C]; in bf16 where x's producer takes it
        // (mixRmsnorm's normed, read by this op alone), as autocast's projections write it
        const sink = g.gradSinksBf16([x]);
        const [[dx], acc] = sink ? [[sink[0][0]], 0] : g.grads(x);
        g.gemm(0, 0, N, C, S, 1, dqkv.ptr, S, 0n, wcat.ptr, C, 0n, acc & 1, dx, C, 0n, 1, !!sink);
      }
      if (ws.some((w) => w.requiresGrad)) {
        // [3C, C] fp32 scratch: dqkv^T @ x, each weight's gradient a block of C rows
        const dw = g.out([S, C], "qkv.dw");
        g.gemm(1, 0, S, C, N, 1, dqkv.ptr, S, 0n, xb.ptr, C, 0n, 0, dw.ptr, C, 0n);
        ws.forEach((w, j) => {
          if (!w.requiresGrad) return;
          const [[dW], acc] = g.grads(w);
          g.k.mn_copy_columns(dW, C, 0, at(dw, j * C * C), C, 0, C, C, acc & 1, g.s);
        });
      }
    }
    outs.forEach((o) => g.dropGrad(o));
  }, [x, ...ws, lamb, first?.v ?? null]);
  return [outs[0], outs[1], outs[2], own];
}

/**
 * Graph.lmHeadLoss with bf16 logits, as the original's bf16 model computes them: the head's GEMM
 * writes bf16 logits, the softcapped cross-entropy reads them and writes bf16 dlogits in place,
 * which both backward GEMMs read as their operand (no fp32 logits, no cast). The "f32" path is
 * Graph.lmHeadLoss. Returns the per-row losses [N] (device).
 */
export function lmHeadLossBf16(
  g: Graph,
  x: Var,
  W: Var,
  targets: Tensor,
  softcap: number,
  lossScale = 1,
  chunkRows = 8192,
): Tensor {
  if (g.precision === "f32") return g.lmHeadLoss(x, W, targets, softcap, lossScale, chunkRows);
  const C = x.shape[x.shape.length - 1], N = x.t.numel / C;
  const [V, WC] = W.shape;
  if (WC !== C) throw new Error(`lmHeadLossBf16: head is [${V},${WC}], x rows have ${C}`);
  if (targets.numel !== N) {
    throw new Error(`lmHeadLossBf16: ${targets.numel} targets for ${N} rows`);
  }
  const losses = g.out([N], "losses"); // [N] fp32
  const xb = g.operand(x), wb = g.operand(W);
  const train = g.needs(x, W);
  const rows = Math.min(chunkRows, N);
  const logits = g.out([rows, V], "logits.bf16", "bf16"); // [rows, V] bf16; then dlogits
  // the row chunks of dx tile it (each may overwrite its rows); dW sums over the chunks, so only
  // the first chunk may overwrite it
  const [, acc] = train ? g.grads(x, W) : [null, 3];
  const betaX = acc & 1, betaW = (acc >> 1) & 1;
  const rowOff = (t: Tensor, r: number, width: number) =>
    Deno.UnsafePointer.offset(t.ptr!, r * width * (t.dtype === "bf16" ? 2 : 4));
  for (let r0 = 0; r0 < N; r0 += rows) {
    const n = Math.min(rows, N - r0);
    const xr = rowOff(xb, r0, C), lp = logits.ptr;
    g.k.mn_gemm_bf16(0, 1, n, V, C, 1, xr, C, 0n, wb.ptr, C, 0n, 0, lp, V, 0n, 1, 1, g.s);
    const tgt = Deno.UnsafePointer.offset(targets.ptr!, r0 * 4);
    const loss = rowOff(losses, r0, 1);
    g.k.mn_softcap_crossentropy_bf16(
      loss,
      train ? lp : null,
      lp,
      tgt,
      n,
      V,
      softcap,
      lossScale / N,
      g.s,
    );
    if (!train) continue;
    if (x.requiresGrad) {
      g.gemm(0, 0, n, C, V, 1, lp, V, 0n, wb.ptr, C, 0n, betaX, rowOff(x.g!, r0, C), C, 0n);
    }
    if (W.requiresGrad) {
      g.gemm(1, 0, V, C, n, 1, lp, V, 0n, xr, C, 0n, r0 === 0 ? betaW : 1, W.g!.ptr, C, 0n);
    }
  }
  return losses;
}

/** C [M, N] = A [M, K] @ op(B) written in bf16 (mn_gemm_bf16 with a bf16 C; fp32 accumulation) */
function gemmToBf16(
  g: Graph,
  tb: number,
  M: number,
  N: number,
  K: number,
  A: Deno.PointerValue,
  lda: number,
  B: Deno.PointerValue,
  ldb: number,
  C: Deno.PointerValue,
) {
  g.k.mn_gemm_bf16(0, tb, M, N, K, 1, A, lda, 0n, B, ldb, 0n, 0, C, N, 0n, 1, 1, g.s);
}

/**
 * The MLP of the record models, x -> c_proj(relu(c_fc(x))^2) (nn.Linear weights Wfc [Hd, C],
 * Wproj [C, Hd], no biases), in bf16 as autocast runs it: the c_fc GEMM writes the pre-activation
 * u [N, Hd] in bf16, one kernel writes a = relu(u)^2 in bf16 (c_proj's operand), the c_proj GEMM
 * writes the fp32 output [N, C], or with outBf16 a bf16 one as autocast's (then only ops that read
 * bf16 may take it, as Graph.matmul's outBf16). Saved for backward: x's bf16 operand, u and a
 * (bf16; nothing fp32 of [N, Hd]). Backward: dy as a bf16 operand (an fp32 dy cast once; a bf16
 * one, which its consumer may write under outBf16, as it is); dA = dy @ Wproj in bf16; dWproj (+)=
 * dy^T a; du = 2 relu(u) dA in bf16 over dA; dx (+)= du @ Wfc (fp32, or bf16 where x's
 * producer takes it: gradSinksBf16) and dWfc (+)= du^T x (fp32). The
 * "f32" path is the generic matmul, relu2, matmul.
 */
export function mlpRelu2(g: Graph, x: Var, Wfc: Var, Wproj: Var, outBf16 = false): Var {
  if (g.precision === "f32") return g.matmul(g.relu2(g.matmul(x, Wfc, true)), Wproj, true);
  const C = x.shape[x.shape.length - 1], N = x.t.numel / C;
  const [Hd, fcC] = Wfc.shape, [pC, pHd] = Wproj.shape;
  if (Wfc.shape.length !== 2 || fcC !== C || Wproj.shape.length !== 2 || pHd !== Hd) {
    throw new Error(
      `mlpRelu2: x [${x.shape}], c_fc [${Wfc.shape}], c_proj [${Wproj.shape}] do not chain`,
    );
  }
  const rows = x.shape.slice(0, -1);
  const xb = g.operand(x), wfc = g.operand(Wfc), wproj = g.operand(Wproj);
  const u = g.out([...rows, Hd], "mlp.fc.bf16", "bf16"); // [N, Hd] bf16
  gemmToBf16(g, 1, N, Hd, C, xb.ptr, C, wfc.ptr, C, u.ptr); // u = x @ Wfc^T
  const a = g.out([...rows, Hd], "mlp.relu2.bf16", "bf16"); // [N, Hd] bf16
  g.k.mn_relu2_forward_bf16io(a.ptr, u.ptr, u.n, g.s);
  const out = g.out([...rows, pC], "mlp.proj", outBf16 ? "bf16" : "f32"); // [N, C]
  g.gemm(0, 1, N, pC, Hd, 1, a.ptr, Hd, 0n, wproj.ptr, Hd, 0n, 0, out.ptr, pC, 0n, 1, outBf16);
  const y = g.node(out, [x, Wfc, Wproj], (y) => {
    const dy = g.gradOperand(y.g); // [N, C] bf16, back to the pool when this closure returns
    // x's gradient in bf16 when x's producer reads it so (a bf16 LayerNorm output: autocast's)
    const sink = x.requiresGrad ? g.gradSinksBf16([x]) : null;
    const [[dx, dWfc, dWproj], acc] = g.grads(sink ? null : x, Wfc, Wproj);
    const d = g.out(u.shape, "mlp.dA.bf16", "bf16"); // dA, then du in place
    gemmToBf16(g, 0, N, Hd, pC, dy.ptr, pC, wproj.ptr, Hd, d.ptr); // dA = dy @ Wproj
    if (Wproj.requiresGrad) {
      g.gemm(1, 0, pC, Hd, N, 1, dy.ptr, pC, 0n, a.ptr, Hd, 0n, (acc >> 2) & 1, dWproj, Hd, 0n);
    }
    g.k.mn_relu2_backward_bf16io(d.ptr, d.ptr, u.ptr, u.n, 0, g.s);
    if (sink) {
      g.gemm(0, 0, N, C, Hd, 1, d.ptr, Hd, 0n, wfc.ptr, C, 0n, 0, sink[0][0], C, 0n, 1, true);
    } else if (x.requiresGrad) {
      g.gemm(0, 0, N, C, Hd, 1, d.ptr, Hd, 0n, wfc.ptr, C, 0n, acc & 1, dx, C, 0n);
    }
    if (Wfc.requiresGrad) {
      g.gemm(1, 0, Hd, C, N, 1, d.ptr, Hd, 0n, xb.ptr, C, 0n, (acc >> 1) & 1, dWfc, C, 0n);
    }
  });
  y.bf16Grad = true; // the backward reads dy only as a bf16 GEMM operand
  return y;
}
