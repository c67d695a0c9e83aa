// What lets the host queue training steps far ahead of the device (issue #16), shared by the three
// trainers:
// - StepInputs: everything that changes from one step to the next (the batches of every
//   micro-step, learning rates, Adam's step count, Muon's momentum) in ONE device buffer, written
//   by the host into pinned memory and sent up by one asynchronous copy before the step's launches;
//   the launches read it at fixed addresses, so a step recorded once (a CUDA graph) can be replayed.
// - BucketedAllReduce: the gradient all-reduce in buckets, each started during the last
//   micro-step's backward as soon as its gradients are final, on a communication stream ordered by
//   events (cpu/emu: the same calls at the same point of the host sequence, synchronous there).
// - StepGraph (--cuda_graph): the whole step captured once after warm-up and replayed.
import type { Backend, Tensor } from "./backend.ts";
import { Tensor as TensorClass } from "./backend.ts";
import type { GradAccumulator, Graph, Param } from "./autograd.ts";
import type { Collective } from "./collectives.ts";

export interface InputSlot {
  name: string;
  dtype: "f32" | "i32";
  numel: number;
}

/**
 * Per-step inputs in device memory, uploaded from pinned host memory.
 *
 * Why pinned: cudaMemcpyAsync from pageable memory stages the data through a driver buffer and
 * returns only when the staging is done; from page-locked memory it is a DMA the host does not
 * wait for (CUDA C++ Best Practices Guide, "Pinned Memory" and "Asynchronous and Overlapping
 * Transfers with Computation":
 * https://docs.nvidia.com/cuda/cuda-c-best-practices-guide/index.html#pinned-memory).
 *
 * Why two host buffers and an event each: the copy of step s reads buffer s % 2 when the device
 * gets to it, which may be after the host has gone on to prepare step s + 1. Step s + 1 writes the
 * other buffer, so it never touches memory a queued copy still reads; before step s + 2 writes
 * buffer s % 2 again, begin() waits on the event recorded right after step s's copy. That wait
 * ends as soon as the device has passed step s's copy (the start of step s), so the host may run a
 * full step ahead and never drains the queue. The device buffer itself needs no event: the copy
 * into it and the kernels reading it are on one stream, so the copy of step s + 1 runs after every
 * kernel of step s (a graph replay included).
 */
export class StepInputs {
  /** the device buffer: every slot, each at a 256-byte aligned offset */
  readonly dev: Tensor;
  private readonly at = new Map<string, InputSlot & { offset: number }>();
  private readonly bytes: number;
  private readonly host: { ptr: Deno.PointerObject; mem: Uint8Array }[] = [];
  private readonly events: Deno.PointerValue[] = [];
  private parity = 0;

  constructor(readonly be: Backend, slots: InputSlot[]) {
    let words = 0;
    for (const s of slots) {
      this.at.set(s.name, { ...s, offset: words });
      words += Math.ceil(s.numel / 64) * 64;
    }
    this.bytes = words * 4;
    this.dev = be.alloc([words], "i32", "step_inputs");
    for (let i = 0; i < 2; i++) {
      const out = new BigUint64Array(1);
      be.k.mn_host_alloc(out, BigInt(this.bytes));
      const ptr = Deno.UnsafePointer.create(out[0]) as Deno.PointerObject;
      const mem = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, this.bytes));
      mem.fill(0);
      this.host.push({ ptr, mem });
      be.k.mn_event_create(out);
      this.events.push(Deno.UnsafePointer.create(out[0]));
    }
  }

  private slot(name: string) {
    const s = this.at.get(name);
    if (!s) throw new Error(`StepInputs: no slot ${name}`);
    return s;
  }

  /** The device view of a slot (the address kernels read; the same every step). */
  tensor(name: string, shape?: readonly number[]): Tensor {
    const s = this.slot(name);
    const p = Deno.UnsafePointer.offset(this.dev.ptr, s.offset * 4) as Deno.PointerObject;
    return new TensorClass(p, shape ?? [s.numel], s.dtype, name);
  }

  /** Starts a step's inputs: waits until the copy that last read this step's host buffer ran. */
  begin() {
    this.be.k.mn_event_synchronize(this.events[this.parity]);
  }

  /** The host view of a slot in the buffer being filled (valid until upload()). */
  f32(name: string): Float32Array {
    const s = this.slot(name);
    if (s.dtype !== "f32") throw new Error(`StepInputs: ${name} is ${s.dtype}`);
    return new Float32Array(this.host[this.parity].mem.buffer, s.offset * 4, s.numel);
  }
  i32(name: string): Int32Array {
    const s = this.slot(name);
    if (s.dtype !== "i32") throw new Error(`StepInputs: ${name} is ${s.dtype}`);
    return new Int32Array(this.host[this.parity].mem.buffer, s.offset * 4, s.numel);
  }

  /** One asynchronous copy of every slot, then the event begin() will wait on two steps later. */
  upload() {
    const k = this.be.k, h = this.host[this.parity];
    k.mn_memcpy_h2d(this.dev.ptr, h.mem, BigInt(this.bytes), this.be.stream);
    k.mn_event_record(this.events[this.parity], this.be.stream);
    this.parity ^= 1;
  }

  close() {
    this.be.k.mn_synchronize(this.be.stream);
    for (const h of this.host) this.be.k.mn_host_free(h.ptr);
    for (const e of this.events) this.be.k.mn_event_destroy(e);
    this.host.length = 0;
    this.events.length = 0;
  }
}

/** A bucket of the gradient all-reduce: a slice of the flat gradient buffer and its parameters. */
export interface GradBucket {
  grads: Tensor;
  params: Param[];
}

/**
 * The gradient all-reduce's buckets (DDP's): runs of consecutive parameters of the flat gradient
 * buffer, which holds them in reverse order (about the order backward produces them; DDP orders its
 * buckets by reversed model.parameters() too), each closed before it would pass capBytes (a bigger
 * parameter is a bucket alone). Together they tile the buffer. gradAt[i]: [offset, padded length]
 * of parameter i's gradient in `grads`, in elements (a trainer's Model).
 */
export function gradBuckets(
  model: { params: Param[]; gradAt: [number, number][]; grads: Tensor },
  capBytes: number,
): (GradBucket & { names: string[] })[] {
  const out: (GradBucket & { names: string[] })[] = [];
  let start = 0, end = 0, params: Param[] = [];
  const close = () =>
    out.push({
      grads: model.grads.rows(start, end - start),
      params,
      names: params.map((p) => p.name),
    });
  for (let i = model.params.length - 1; i >= 0; i--) {
    const [offset, padded] = model.gradAt[i]; // === end: the buffer is in this order
    if (params.length && (offset + padded - start) * 4 > capBytes) {
      close();
      [start, params] = [end, []];
    }
    end = offset + padded;
    params.push(model.params[i]);
  }
  if (params.length) close();
  return out;
}

/**
 * The gradient all-reduce, overlapped with the last micro-step's backward.
 *
 * The flat gradient buffer holds the parameters in reverse order, so buckets fill in about the
 * order backward runs. A parameter's gradient is final once the backward of its EARLIEST use has
 * run (a parameter used by several ops gets a term from each; the tape runs in reverse, so the
 * first-recorded use is the last to add): Graph.firstUse gives that tape position, and a bucket is
 * final at the smallest position of its parameters (a parameter the graph never used: from the
 * start). Buckets start in order (every rank issues its collectives in the same order, as NCCL
 * requires) as soon as the next one is final.
 *
 * Ordering on cuda: an event recorded on the compute stream when the bucket is final, the
 * communication stream waits on it and runs the all-reduce; after the backward the compute stream
 * waits on an event recorded on the communication stream after the last bucket, so the optimizer
 * sees the sums (and, inside a graph capture, this is the fork/join pattern that brings the second
 * stream into the graph: https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#cross-stream-dependencies-and-events).
 * On cpu/emu (null streams, no-op events) the TCP all-reduce runs synchronously at the same point:
 * the same rank-ordered sums, so 1 process accumulating stays bit-identical to N processes.
 *
 * With gradient accumulation the last micro-step's gradients sit in the accumulator's buffer; each
 * bucket's slice is added into the flat buffer just before it starts (GradAccumulator.addSlice),
 * elementwise, so the sums are those of one add after the backward.
 */
export class BucketedAllReduce {
  private readonly comm: Deno.PointerValue = null;
  private readonly ready: Deno.PointerValue[] = [];
  private readonly done: Deno.PointerValue = null;

  constructor(
    readonly be: Backend,
    readonly coll: Collective,
    readonly buckets: readonly GradBucket[],
  ) {
    if (!buckets.length) return;
    const out = new BigUint64Array(1);
    be.k.mn_stream_create(out);
    this.comm = Deno.UnsafePointer.create(out[0]);
    if (this.comm === null) return; // cpu/emu: everything runs in call order already
    for (let i = 0; i <= buckets.length; i++) {
      be.k.mn_event_create(out);
      this.ready.push(Deno.UnsafePointer.create(out[0]));
    }
    this.done = this.ready.pop()!;
  }

  /** Runs g's backward (the step's last micro-step), starting each bucket once it is final.
   * `acc`: the accumulator whose last add this does bucket by bucket (accumulating micro-steps). */
  backward(g: Graph, acc: GradAccumulator | null) {
    if (!this.buckets.length) {
      g.backward();
      return;
    }
    const k = this.be.k;
    const finalAt = this.buckets.map((b) =>
      Math.min(...b.params.map((p) => g.firstUse(p) ?? Infinity))
    );
    let next = 0;
    const start = (done: number) => {
      while (next < this.buckets.length && finalAt[next] >= done) {
        const b = this.buckets[next];
        acc?.addSlice(b.grads);
        if (this.comm !== null) {
          k.mn_event_record(this.ready[next], this.be.stream);
          k.mn_stream_wait_event(this.comm, this.ready[next]);
        }
        this.coll.allReduceSum(b.grads, this.comm);
        next++;
      }
    };
    g.backward(start);
    start(-Infinity);
    if (this.comm !== null) {
      k.mn_event_record(this.done, this.comm);
      k.mn_stream_wait_event(this.be.stream, this.done);
    }
  }

  close() {
    for (const e of [...this.ready, this.done]) if (e !== null) this.be.k.mn_event_destroy(e);
    if (this.comm !== null) this.be.k.mn_stream_destroy(this.comm);
  }
}

/**
 * --cuda_graph: the training step captured once, after warm-up, into a CUDA graph and replayed
 * every later step: one cudaGraphLaunch instead of thousands of launches of host time.
 *
 * What makes a step capturable, and why the replay is the same step: every launch reads what
 * changes per step from StepInputs' device buffer (kernel arguments are frozen at capture); the
 * activation pool and every scratch buffer are warm after the warm-up steps, so nothing allocates
 * inside the capture (cudaMalloc is not allowed there); nothing inside a step reads the device
 * back (the loss is read after it); cuBLAS runs on a workspace of our own (cuda/gemm.cu); NCCL
 * collectives are capturable since NCCL 2.9 (every rank captures and replays the same graph:
 * https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/usage/cudagraph.html). The sequence of
 * calls a step makes depends on host state that is the same at the start of every step (the bf16
 * weight copies are stale after every optimizer step; the tape and pool are empty).
 *
 * If the capture fails (an allocation, an unsupported call), the capture is ended and thrown
 * away (nothing in it ran), `resetHost` resets the host state the body left mid-way, one line is
 * logged, and this step and every later one run eagerly. Capture, instantiate and launch:
 * https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#creating-a-graph-using-stream-capture
 * https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__GRAPH.html (cudaGraphInstantiateWithFlags, cudaGraphLaunch)
 */
export class StepGraph {
  private exec: Deno.PointerValue = null;
  private steps = 0;
  private mode: "eager" | "warmup" | "replay";
  /** true once a captured graph is replayed (for logs and tests) */
  get replaying(): boolean {
    return this.mode === "replay";
  }

  constructor(
    readonly be: Backend,
    enabled: boolean,
    private readonly log: (s: string) => void,
    private readonly warmup = 2,
  ) {
    this.mode = enabled ? "warmup" : "eager";
    if (enabled && be.name !== "cuda" && be.name !== "dry") {
      log(`cuda_graph: the ${be.name} backend has no CUDA graphs; steps run eagerly`);
      this.mode = "eager";
    }
  }

  /** One training step: `body` enqueues it (the host prepared its inputs before). `resetHost`
   * puts the host-side state the body keeps back to where a finished eager step leaves it: after a
   * capture that failed mid-way, and after every replay (which runs no host code: the bf16 weight
   * copies must be marked stale, as the body's optimizer step would, or a later eager forward such
   * as validation would use copies from before the replayed update). */
  run(body: () => void, resetHost: () => void) {
    if (this.mode === "eager" || this.steps++ < this.warmup) return body();
    if (this.mode === "replay") {
      this.be.k.mn_graph_launch(this.exec, this.be.stream);
      resetHost();
      return;
    }
    const k = this.be.k, s = this.be.stream, out = new BigUint64Array(1);
    try {
      k.mn_graph_begin_capture(s);
      let failed: unknown = null;
      try {
        body();
      } catch (e) {
        failed = e;
      }
      try {
        k.mn_graph_end_capture(s, out); // ends the capture whether or not the body got through
      } catch (e) {
        failed ??= e; // the body's error, if any, is the cause worth logging
      }
      if (failed !== null) throw failed;
      this.exec = Deno.UnsafePointer.create(out[0]);
      this.mode = "replay";
    } catch (e) {
      resetHost();
      this.mode = "eager";
      this.log(
        `cuda_graph: capture failed, running eagerly: ${(e as Error).message.split("\n")[0]}`,
      );
      return body();
    }
    this.log(`cuda_graph: step captured after ${this.warmup} warm-up steps; replaying it`);
    k.mn_graph_launch(this.exec, s);
  }

  close() {
    if (this.exec !== null) this.be.k.mn_graph_destroy(this.exec);
    this.exec = null;
  }
}

/** An optimizer as TrainStep drives it: its per-step values go into StepInputs before the step. */
export interface StepOptimizer {
  readonly inputSlot: InputSlot;
  stage(inputs: StepInputs, lrFactor: number): void;
}

/** Muon's per-step values in StepInputs, {momentum, 1, -lr of each parameter}, and their device
 * addresses for mn_axpby_forward (which reads its two factors from device memory). */
export class MuonScalars {
  constructor(readonly name: string, readonly count: number) {}
  get inputSlot(): InputSlot {
    return { name: `muon:${this.name}`, dtype: "f32", numel: 2 + this.count };
  }
  stage(inputs: StepInputs, momentum: number, lr: (i: number) => number) {
    const v = inputs.f32(this.inputSlot.name);
    v[0] = momentum;
    v[1] = 1;
    for (let i = 0; i < this.count; i++) v[2 + i] = -lr(i);
  }
  at(inputs: StepInputs) {
    const t = inputs.tensor(this.inputSlot.name);
    const at = (i: number) => t.rows(i, 1).ptr;
    return { mom: at(0), one: at(1), lr: (i: number) => at(2 + i) };
  }
}

/** What TrainStep needs of a trainer's model. */
export interface StepModel {
  readonly params: Param[];
  readonly grads: Tensor;
  zeroGrads(): void;
  /** per-row losses of one micro-step's batch (idx, targets: [rows] int32), gradients scaled */
  forward(g: Graph, idx: Tensor, targets: Tensor, lossScale: number): Tensor;
}

/**
 * One training step of the three trainers, host side and device side apart: prepare() fills and
 * uploads the step's inputs (every micro-step's batch, the optimizers' scalars), run() enqueues
 * every micro-step's forward and backward (gradients summed in a fixed order by GradAccumulator:
 * N micro-steps here train bit-identically to N processes), the bucketed all-reduce inside the
 * last backward, the optimizers' launches and the gradient zeroing, or replays them (--cuda_graph).
 * Neither waits for the device; the last micro-step's mean loss is left in `loss`.
 */
export class TrainStep {
  readonly inputs: StepInputs;
  private readonly xs: Tensor[];
  private readonly ys: Tensor[];
  private readonly acc: GradAccumulator;
  private readonly allReduce: BucketedAllReduce;
  private readonly graph: StepGraph;
  private readonly accum: number;
  private readonly rows: number;
  private readonly scale: number;
  private readonly loss: Tensor;
  private readonly optimizers: readonly StepOptimizer[];

  constructor(
    readonly be: Backend,
    readonly g: Graph,
    readonly model: StepModel,
    o: {
      /** micro-steps per step, processes, tokens per micro-step (B * T) */
      accum: number;
      world: number;
      rows: number;
      coll: Collective;
      buckets: readonly GradBucket[];
      optimizers: readonly StepOptimizer[];
      acc: GradAccumulator;
      /** where the last micro-step's mean loss goes (device, 1 float) */
      loss: Tensor;
      cudaGraph: boolean;
      log: (s: string) => void;
    },
  ) {
    const { accum, rows } = o;
    this.accum = accum;
    this.scale = 1 / (accum * o.world);
    this.loss = o.loss;
    this.optimizers = o.optimizers;
    this.inputs = new StepInputs(be, [
      { name: "x", dtype: "i32", numel: accum * rows },
      { name: "y", dtype: "i32", numel: accum * rows },
      ...o.optimizers.map((p) => p.inputSlot),
    ]);
    this.xs = Array.from({ length: accum }, (_, i) => this.inputs.tensor("x").rows(i * rows, rows));
    this.ys = Array.from({ length: accum }, (_, i) => this.inputs.tensor("y").rows(i * rows, rows));
    this.rows = rows;
    this.acc = o.acc;
    this.allReduce = new BucketedAllReduce(be, o.coll, o.buckets);
    this.graph = new StepGraph(be, o.cudaGraph, o.log);
  }

  /** The host's part, which may run a step ahead of the device: batches from `next`, the
   * optimizers' scalars for this lrFactor, one upload. */
  prepare(next: () => [Int32Array, Int32Array], lrFactor: number) {
    const inp = this.inputs;
    inp.begin();
    for (let i = 0; i < this.accum; i++) {
      const [x, y] = next();
      inp.i32("x").set(x, i * this.rows);
      inp.i32("y").set(y, i * this.rows);
    }
    for (const o of this.optimizers) o.stage(inp, lrFactor);
    inp.upload();
  }

  /** The device's part: `update` enqueues the optimizers' launches (reading this.inputs). */
  run(update: () => void) {
    const { be, g, model } = this;
    this.graph.run(() => {
      this.acc.run(this.accum, (i) => {
        // grads come out averaged over micro-steps and ranks: DDP's 1/world is folded into the
        // loss scale, so the all-reduce is a plain sum (and 1 process accumulating = N processes)
        const losses = model.forward(g, this.xs[i], this.ys[i], this.scale);
        // the logged loss is the last micro-step's, as the original's; its mean stays on the device
        if (i === this.accum - 1) {
          be.k.mn_sum_into(this.loss.ptr, losses.ptr, losses.n, 1 / losses.numel, 0, be.stream);
          // the all-reduce buckets start inside this backward, each once its gradients are final
          this.allReduce.backward(g, i > 0 ? this.acc : null);
        } else g.backward();
        g.release();
      }, this.allReduce.buckets.length > 0);
      update();
      model.zeroGrads();
    }, () => {
      // after a replay or a capture that failed (nothing it recorded ran): the tape and pool as an
      // eager step leaves them, and the bf16 weight copies stale (the weights moved on the device)
      g.release();
      for (const p of model.params) p.markUpdated();
    });
  }

  close() {
    this.graph.close();
    this.allReduce.close();
    this.inputs.close();
  }
}
