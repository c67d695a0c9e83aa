// The cost of each ABI call (cuda/kernels.h) on the cuda backend: the kernel launches one call
// issues, each with its grid, DRAM bytes and FLOPs, for the step-cost tool (issue #13).
//
// One entry per ABI function, grouped by source file in the order of kernels.h, each mirroring
// the launch code of the .cu function named in its comment (grid and block formulas, how many
// kernels, what each reads and writes). Where the source is explicit (grids, blocks, tensor
// sizes) the numbers are exact; FLOP counts of CUDA-core math and the L2 reuse assumptions are
// estimates and say so.
//
// Conventions of the byte counts:
// - Each distinct input byte of a launch is read once (data re-read by the same launch is assumed
//   to hit L2/L1) unless noted: a second pass whose working set cannot stay in the H100's 50 MB L2
//   counts again (cross-entropy's passes over the logits, the recompute WKV-7's scratch).
// - Accumulating (`+=`) outputs are read and written; a backward output whose bit of
//   `accumulate` is clear (kernels.h) is written only (acc() below). Separate launches never share a read:
//   each counts its own. The partials of the two-stage reductions (library scratch, scratch.h)
//   are written by stage 1 and read by stage 2 like any tensor.
// - Pointer arguments are device addresses; 0 means NULL. A pointer parameter missing from `a`
//   counts as present (non-NULL). Only the entry points whose launches depend on it look.

/** One kernel launch of an ABI call, as the cuda build issues it. */
export interface Launch {
  kernel: string; // the __global__ function name (or "cublas_gemm", "memset", "memcpy_d2d", ...)
  blocks: number; // grid size in blocks (x*y*z) for these arguments
  threads: number; // threads per block
  bytesRead: number; // DRAM bytes this launch reads, as implemented (see the file comment)
  bytesWritten: number;
  tcFlops: number; // tensor-core FLOPs (mma/cuBLAS bf16): 2*M*N*K per GEMM
  fp32Flops: number; // CUDA-core FLOPs, rough (multiply-add = 2; exp/div/tanh ~ 4-8)
  serialSteps?: number; // dependent steps a single block walks in sequence, when that bounds it
}

// ---- shared sizes and helpers -------------------------------------------------------------------

const F32 = 4; // bytes of float / int32
const BF16 = 2; // bytes of bf16
/** rough CUDA-core FLOPs of one expf / logf / tanhf / division (estimate) */
const EXP = 8;
/** H100 L2 (bytes): the working-set limit below which a re-read is assumed to hit L2 */
const L2_BYTES = 50 * 1024 * 1024;
/** H100 SMs, used only to size the resident set of the cross-entropy rows (estimate) */
const SMS = 132;

/** common.cuh mn_blocks_for: ceil(n / threads), clamped to [1, 65535 * 16] */
export function blocksFor(n: number, threads: number): number {
  const b = Math.ceil(n / threads);
  return b < 1 ? 1 : Math.min(b, 65535 * 16);
}

const cdiv = (a: number, b: number) => Math.ceil(a / b);

/** An integer/float argument that the entry point needs. */
function need(a: Record<string, number>, name: string): number {
  const v = a[name];
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new Error(`cost_model: argument ${name} missing (got ${v})`);
  }
  return v;
}

/** Bit i of a backward call's `accumulate` (kernels.h): 1 = the i-th gradient output is added
 * into (read and written), 0 = overwritten (written only). Missing counts as -1 (all set). */
function acc(a: Record<string, number>, i: number): number {
  return ((a.accumulate ?? -1) >> i) & 1;
}

/** How many of the first n gradient outputs are added into (see acc). */
function accCount(a: Record<string, number>, n: number): number {
  let k = 0;
  for (let i = 0; i < n; i++) k += acc(a, i);
  return k;
}

/** Whether a pointer argument is non-NULL (missing from `a` counts as present). */
function has(a: Record<string, number>, name: string): boolean {
  return a[name] !== 0;
}

function launch(
  kernel: string,
  blocks: number,
  threads: number,
  bytesRead: number,
  bytesWritten: number,
  fp32Flops: number,
  tcFlops = 0,
  serialSteps?: number,
): Launch {
  const l: Launch = { kernel, blocks, threads, bytesRead, bytesWritten, tcFlops, fp32Flops };
  if (serialSteps !== undefined) l.serialSteps = serialSteps;
  return l;
}

type Cost = (a: Record<string, number>) => Launch[];
const host: Cost = () => [];

/** A grid-stride elementwise kernel over n elements (mn_blocks_for(n, 256) x 256 threads). */
function elementwise(
  kernel: string,
  n: number,
  read: number,
  written: number,
  flopsPerElem: number,
): Launch {
  return launch(kernel, blocksFor(n, 256), 256, read, written, n * flopsPerElem);
}

// ---- two-stage reductions (reduce.cuh; used by elementwise.cu, norm.cu and modelops.cu) ---------
// Column sums out_k[c] += sum_i term_k(i, c) over [N, C], K = 1 or 2 outputs:
//   stage 1 col_sums_kernel<K, Term>: grid (ceil(C/32), tiles), block (32, 8); block (x, y) sums
//     its 32 columns over the rows of tile y and writes a partial row to scratch [tiles][K][C];
//   stage 2 ("column_sums_finish") col_sums_kernel<K, PartialsTerm<K>>: grid (ceil(C/32), 1),
//     block (32, 8), sums the tiles' partials in order and adds them to out_k (read and written).
//   One tile: stage 1 adds straight into out_k and there is no stage 2.
// Full sums out_k (= or +=) sum_i term_k(i) over n elements: stage 1 full_sums_kernel<K, Term>:
//   `blocks` blocks of 256, block b over its contiguous chunk, a partial per block to scratch;
//   stage 2 ("full_sums_finish") one block of 256 over the partials. One block: no stage 2.
// Each thread loads 4 rows (elements) before adding them: its dependent DRAM round trips are the
// groups of 4 plus the leftovers one at a time (loadRounds), the serialSteps of these launches.
const RED_COLS = 32; // kCols: columns per block (one warp)
const RED_LANES = 8; // kLanes: row lanes per block
const RED_UNROLL = 4; // kUnroll: loads in flight per thread
const RED_TARGET_BLOCKS = 1024; // kTargetBlocks
const RED_MIN_TILE_ROWS = 64; // kMinTileRows
const RED_MAX_TILES = 256; // kMaxTiles
const FULL_THREADS = 256; // kFullThreads
const FULL_MAX_BLOCKS = 1024; // kFullMaxBlocks
const FULL_MIN_CHUNK = 4096; // kFullMinChunk

/** reduce.cuh row_tile_plan: row tiles and rows per tile (a multiple of 32) for a grid of
 * `blocksPerTile` blocks per row tile. */
function rowTilePlan(N: number, blocksPerTile: number) {
  const want = cdiv(RED_TARGET_BLOCKS, blocksPerTile);
  const byRows = cdiv(N, RED_MIN_TILE_ROWS);
  const tiles0 = Math.max(1, Math.min(want, byRows, RED_MAX_TILES));
  const step = RED_LANES * RED_UNROLL;
  const tileRows = cdiv(cdiv(N, tiles0), step) * step;
  return { tiles: cdiv(N, tileRows), tileRows };
}

/** reduce.cuh col_plan: column blocks, row tiles (grid.y) and rows per tile (a multiple of 32). */
function colPlan(N: number, C: number) {
  const colBlocks = cdiv(C, RED_COLS);
  return { colBlocks, ...rowTilePlan(N, colBlocks) };
}

/** reduce.cuh full_plan: blocks and the chunk of elements per block (a multiple of 1024). */
function fullPlan(n: number) {
  const step = FULL_THREADS * RED_UNROLL;
  const chunk = cdiv(Math.max(cdiv(n, FULL_MAX_BLOCKS), FULL_MIN_CHUNK), step) * step;
  return { blocks: cdiv(n, chunk), chunk };
}

/** Dependent load rounds of the busiest thread of a reduce.cuh loop over `rows` rows (elements)
 * `stride` apart: groups of 4 loads issued together, then the leftovers one at a time. */
function loadRounds(rows: number, stride: number): number {
  const r = cdiv(rows, stride);
  return Math.floor(r / RED_UNROLL) + (r % RED_UNROLL);
}

/** reduce.cuh col_sums<K, Term> over [N, C]: `read`, `written` and `flops` are stage 1's own
 * traffic and work (the term's loads and any fused elementwise output); the partials and the K
 * outputs [C] are added here. */
function colSums(
  term: string,
  K: number,
  N: number,
  C: number,
  read: number,
  written: number,
  flops: number,
  accumulated = K, // outputs added into (read as well as written)
): Launch[] {
  const p = colPlan(N, C);
  const threads = RED_COLS * RED_LANES;
  const kernel = `col_sums_kernel<${K},${term}>`;
  const out = K * C * F32, outRead = accumulated * C * F32; // out_k [C]
  if (p.tiles === 1) {
    return [
      launch(
        kernel,
        p.colBlocks,
        threads,
        read + outRead,
        written + out,
        flops,
        0,
        loadRounds(N, RED_LANES),
      ),
    ];
  }
  return [
    launch(
      kernel,
      p.colBlocks * p.tiles,
      threads,
      read,
      written + p.tiles * K * C * F32,
      flops,
      0,
      loadRounds(p.tileRows, RED_LANES),
    ),
    colSumsFinish(K, p.tiles, C, accumulated),
  ];
}

/** reduce.cuh col_sums_finish<K> (stage 2 alone): the partials [tiles][K][C] summed in tile order
 * into the K outputs [C], `accumulated` of them added into (read). */
function colSumsFinish(K: number, tiles: number, C: number, accumulated = K): Launch {
  const part = tiles * K * C * F32;
  return launch(
    `col_sums_kernel<${K},PartialsTerm>`,
    cdiv(C, RED_COLS),
    RED_COLS * RED_LANES,
    part + accumulated * C * F32,
    K * C * F32,
    tiles * K * C,
    0,
    loadRounds(tiles, RED_LANES),
  );
}

/** reduce.cuh full_sums<K, Term> over n elements, like colSums; `accumulated`: how many of the K
 * outputs are added into (read). */
function fullSums(
  term: string,
  K: number,
  n: number,
  read: number,
  written: number,
  flops: number,
  accumulated: number,
): Launch[] {
  const p = fullPlan(n);
  const kernel = `full_sums_kernel<${K},${term}>`;
  const out = K * F32, outRead = accumulated * F32;
  if (p.blocks === 1) {
    return [
      launch(
        kernel,
        1,
        FULL_THREADS,
        read + outRead,
        written + out,
        flops,
        0,
        loadRounds(n, FULL_THREADS),
      ),
    ];
  }
  const part = p.blocks * K * F32;
  return [
    launch(
      kernel,
      p.blocks,
      FULL_THREADS,
      read,
      written + part,
      flops,
      0,
      loadRounds(p.chunk, FULL_THREADS),
    ),
    launch(
      `full_sums_kernel<${K},FullPartialsTerm>`,
      1,
      FULL_THREADS,
      part + outRead,
      out,
      p.blocks * K,
      0,
      loadRounds(p.blocks, FULL_THREADS),
    ),
  ];
}

// ---- runtime (runtime_cuda.cu) ------------------------------------------------------------------
// cudaMemcpyAsync D2D and cudaMemsetAsync run the driver's own copy/fill kernels; their grid is
// not ours. Estimate: a full-GPU grid of 256 threads moving 16 bytes each.
const driverBlocks = (bytes: number) => blocksFor(cdiv(bytes, 16), 256);

const memcpyD2d: Cost = (a) => {
  const bytes = need(a, "bytes");
  return bytes <= 0 ? [] : [launch("memcpy_d2d", driverBlocks(bytes), 256, bytes, bytes, 0)];
};
const memset: Cost = (a) => {
  const bytes = need(a, "bytes");
  return bytes <= 0 ? [] : [launch("memset", driverBlocks(bytes), 256, 0, bytes, 0)];
};

// ---- matmul (gemm.cu: cublasGemmStridedBatchedEx) -----------------------------------------------
// cuBLAS picks its own kernel; ASSUMPTION: 128x128 output tiles, 256 threads, one block per tile
// per batch item (the usual shape of the large sm_90 bf16 kernels). Where that leaves the GPU
// short of blocks and K is long (a weight gradient [768 x 768] over K = 32768 rows: 36 tiles),
// cuBLAS splits K (split-K / stream-K kernels); modelled as up to ceil(K / 1024) blocks per tile,
// never more than one wave of 132. Not ours to change, and calibrated only as part of the whole
// step (bench/step_cost.ts --calibrate). A, B and C are each read/written once per batch item; an
// operand with batch stride 0 (shared by all items) is read once.
const GEMM_WAVE = 132;
function gemm(a: Record<string, number>, ab: number, cBytes: number, tensorCores: boolean): Launch {
  const M = need(a, "M"), N = need(a, "N"), K = need(a, "K"), batch = need(a, "batch");
  const items = (stride: string) => (a[stride] === 0 ? 1 : batch);
  const readAB = M * K * ab * items("stride_a") + K * N * ab * items("stride_b");
  const cTotal = M * N * cBytes * batch;
  const readC = (a.beta ?? 0) !== 0 ? cTotal : 0;
  const flops = 2 * M * N * K * batch;
  const tiles = cdiv(M, 128) * cdiv(N, 128) * batch;
  const blocks = tiles >= GEMM_WAVE
    ? tiles
    : Math.max(tiles, Math.min(GEMM_WAVE, tiles * cdiv(K, 1024)));
  return launch(
    "cublas_gemm",
    blocks,
    256,
    readAB + readC,
    cTotal,
    tensorCores ? 0 : flops,
    tensorCores ? flops : 0,
  );
}
// mn_gemm_bf16: bf16 A, B; C fp32 (c_bf16 == 0) or bf16; CUBLAS_COMPUTE_32F on bf16 = tensor cores
const gemmBf16: Cost = (a) => [gemm(a, BF16, need(a, "c_bf16") ? BF16 : F32, true)];
// mn_gemm_f32: CUBLAS_COMPUTE_32F_PEDANTIC, fp32 CUDA-core arithmetic (no TF32)
const gemmF32: Cost = (a) => [gemm(a, F32, F32, false)];

// ---- cast (cast.cu) -----------------------------------------------------------------------------
// cast_f32_to_bf16_kernel / cast_bf16_to_f32_kernel: mn_blocks_for(n, 256) x 256; n == 0: no launch
const castF32ToBf16: Cost = (a) => {
  const n = need(a, "n");
  return n <= 0 ? [] : [elementwise("cast_f32_to_bf16_kernel", n, n * F32, n * BF16, 1)];
};
const castBf16ToF32: Cost = (a) => {
  const n = need(a, "n");
  return n <= 0 ? [] : [elementwise("cast_bf16_to_f32_kernel", n, n * BF16, n * F32, 1)];
};

// copy_columns_kernel<D, S>: mn_blocks_for(rows * cols, 256) x 256 over the block; reads src
// (and an accumulated fp32 dst), writes dst; an empty block: no launch
const copyColumns: Cost = (a) => {
  const n = need(a, "rows") * need(a, "cols");
  const src = need(a, "src_bf16") ? BF16 : F32, dst = need(a, "dst_bf16") ? BF16 : F32;
  const added = need(a, "dst_bf16") ? 0 : acc(a, 0);
  return n <= 0
    ? []
    : [elementwise("copy_columns_kernel", n, n * (src + added * dst), n * dst, added)];
};

// ---- layout (transpose.cu) ----------------------------------------------------------------------
// transpose_kernel: grid (ceil(C/32), ceil(R/32)), block (32, 8)
const transpose: Cost = (a) => {
  const R = need(a, "R"), C = need(a, "C");
  const bytes = R * C * F32;
  return [launch("transpose_kernel", cdiv(C, 32) * cdiv(R, 32), 256, bytes, bytes, 0)];
};

// ---- embedding (embedding.cu) -------------------------------------------------------------------
// embedding_forward_kernel: mn_blocks_for(N*C, 256) x 256. Reads idx and the gathered rows of wte
// (at most min(N, V) distinct rows: repeated ids assumed to hit L2), writes out [N, C].
const embeddingForward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), V = need(a, "V");
  const read = N * F32 + Math.min(N, V) * C * F32;
  return [elementwise("embedding_forward_kernel", N * C, read, N * C * F32, 1)];
};
// mn_embedding_backward: a stable LSD radix sort of the ids, 4 bits a pass, then one warp per
// (id, 32 columns). T = ceil(N/1024) tiles of 1024 keys, P = ceil(bitlen(V)/4) passes (4 for
// V = 50,304). Per pass:
//   sort_count_kernel: T x 256; reads the keys (pass 0: idx) 4N, writes hist [16][T] ints;
//   exclusive_scan_kernel: 1 x scan_threads(16T) (32..1024); hist read and written in place;
//   sort_scatter_kernel: T x 256; reads the keys (pass 0: idx), the rows (pass 0: none, rows are
//     positions) and hist; writes keys and rows 8N.
// Then once segment_starts_kernel: 1 x scan_threads(N); reads the sorted keys (keys[p - 1] is the
// neighbour's load again: L1/L2), writes seg [S + 1] and nseg; and embedding_segments_kernel:
// grid (min(ceil(4096 / ceil(C/32)), ceil(min(N, V)/8)), ceil(C/32)) x 256, (171, 24) at C = 768:
// reads every row of dout once (N*C*4), rows [N], and per segment seg, keys and the id's dwte row,
// which it writes back (read-modify-write, no other dwte row is touched). Overwriting (bit 0 of
// accumulate clear): mn_fill zeroes all of dwte first (ew_fill_kernel, V*C floats written).
// ESTIMATE: S, the number of distinct ids in idx, is data the model does not see; it takes the
// upper bound S = min(N, V) (each id once: real text repeats ids, so fewer dwte rows move).
// serialSteps (estimates): the one-block scans walk scan_threads' share of the elements twice,
// every load an L2 hit (the previous launch wrote them, about half a DRAM round trip): counted as
// one step per element of a thread's share. A warp of the segments kernel walks ceil(S / warps)
// segments, 3 dependent loads each (seg, then keys/rows, then dwte/dout); a frequent id's long
// segment adds 2 per 32 rows, not modelled. Sort work is integer: fp32Flops are rough op counts.
const SORT_TILE = 1024; // kSortThreads * kSortItems
/** embedding.cu scan_threads: a multiple of 32, >= 16 elements each, 32..1024 */
const scanThreads = (n: number) => Math.min(Math.max(cdiv(n, 512) * 32, 32), 1024);
const embeddingBackward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), V = need(a, "V");
  const tiles = cdiv(N, SORT_TILE);
  let bits = 0;
  while (bits < 31 && Math.floor(V / 2 ** bits) !== 0) bits++; // bitlen(V): keys lie in [0, V]
  const passes = cdiv(bits, 4);
  const histN = 16 * tiles, hist = histN * F32, keys = N * F32;
  const scanT = scanThreads(histN);
  const out: Launch[] = [];
  if (!acc(a, 0)) out.push(elementwise("ew_fill_kernel", V * C, 0, V * C * F32, 0));
  for (let p = 0; p < passes; p++) {
    out.push(launch("sort_count_kernel", tiles, 256, keys, hist, 8 * N));
    out.push(
      launch("exclusive_scan_kernel", 1, scanT, hist, hist, 2 * histN, 0, cdiv(histN, scanT)),
    );
    out.push(
      launch("sort_scatter_kernel", tiles, 256, (p === 0 ? 1 : 2) * keys + hist, 2 * keys, 32 * N),
    );
  }
  const S = Math.min(N, V); // ESTIMATE: distinct ids (see above)
  const segT = scanThreads(N);
  out.push(
    launch(
      "segment_starts_kernel",
      1,
      segT,
      keys,
      (S + 1) * F32 + F32, // seg, nseg
      4 * N,
      0,
      cdiv(N, segT),
    ),
  );
  const colChunks = cdiv(C, 32);
  const segBlocks = Math.max(1, Math.min(cdiv(4096, colChunks), cdiv(Math.min(N, V), 8)));
  const row = C * F32;
  out.push(
    launch(
      "embedding_segments_kernel",
      segBlocks * colChunks,
      256,
      N * row + keys + (S + 1) * F32 + S * F32 + F32 + S * row, // dout; rows; seg; keys; nseg; dwte
      S * row,
      N * C,
      0,
      3 * cdiv(S, segBlocks * 8),
    ),
  );
  return out;
};

// ---- norms (norm.cu) ----------------------------------------------------------------------------
// norm_threads(C): 32*ceil(C/32), at most 256
const normThreads = (C: number) => Math.min(32 * cdiv(C, 32), 256);

// layernorm_forward_kernel: one block per row (N blocks), three passes over the row (in L1); out
// fp32 or (mn_layernorm_forward_bf16) bf16.
const layernormForward = (outBytes: number): Cost => (a) => {
  const N = need(a, "N"), C = need(a, "C");
  return [
    launch(
      "layernorm_forward_kernel",
      N,
      normThreads(C),
      N * C * F32 + 2 * C * F32,
      N * C * outBytes + 2 * N * F32,
      8 * N * C,
    ),
  ];
};
// add_layernorm_forward_kernel: N blocks of normThreads(C); reads inp and branch (fp32 or bf16),
// writes sum (fp32) and out (bf16); the row of sum it reads back stays in cache
const addLayernormForward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C");
  const branch = need(a, "branch_bf16") ? BF16 : F32;
  return [
    launch(
      "add_layernorm_forward_kernel",
      N,
      normThreads(C),
      N * C * (F32 + branch) + 2 * C * F32,
      N * C * (F32 + BF16) + 2 * N * F32,
      9 * N * C,
    ),
  ];
};
// mix_layernorm_forward_kernel: N blocks of normThreads(C); reads x, branch (when given) and x0
// (x == x0, the first block: one tensor, read once), writes sum (when given), x_out and out (fp32);
// x_out's row it reads back stays in cache
const mixLayernormForward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C");
  const x0 = typeof a.x === "number" && a.x === a.x0 ? 0 : 1;
  const reads = 1 + (has(a, "branch") ? 1 : 0) + x0, writes = 2 + (has(a, "sum") ? 1 : 0);
  return [
    launch(
      "mix_layernorm_forward_kernel",
      N,
      normThreads(C),
      N * C * reads * F32 + 2 * C * F32 + 2 * F32, // + weight, bias; a, b
      N * C * writes * F32 + 2 * N * F32,
      11 * N * C,
    ),
  ];
};
// layernorm_backward, C <= 768 (LN_MAX_SLOTS column slots of 32 per lane):
// layernorm_backward_fused_kernel, one block of 8 warps per row tile of row_tile_plan(N, 1), a
// warp per row at a time (the row held in registers for its second pass): reads dout, inp, dinp
// (+=), weight, mean, rstd once; writes dinp and one partial pair [2][C] per tile (one tile:
// dweight, dbias themselves, read too where accumulated); a warp walks ceil(tile_rows / 8) rows, a
// DRAM round trip each. Then, with tiles > 1, col_sums_finish<2> adds the partials to dweight,
// dbias (colSumsFinish).
// Wider rows: layernorm_backward_dinp_kernel (N blocks; dinp += or =), then dweight, dbias by
// reduce.cuh's column sums col_sums<2, LayerNormParamTerm> over [N, C] (see colSums): stage 1
// reads dout, inp and mean, rstd [N] (each row's pair re-read by the ceil(C/32) column blocks:
// L2), writes 2 partial rows per tile; stage 2 adds them to dweight, dbias (+=).
const LN_MAX_SLOTS = 24; // norm.cu kLnMaxSlots
const LN_WARPS = 8; // norm.cu kLnWarps
const layernormBackward = (doutElem: number): Cost => (a) => {
  const N = need(a, "N"), C = need(a, "C");
  const act = N * C * F32, dout = N * C * doutElem;
  const params = acc(a, 1) + acc(a, 2);
  if (cdiv(C, 32) <= LN_MAX_SLOTS) {
    const p = rowTilePlan(N, 1);
    const one = p.tiles === 1;
    const fused = launch(
      "layernorm_backward_fused_kernel",
      p.tiles,
      LN_WARPS * 32,
      // dout, inp, dinp (+=); weight; mean, rstd; with one tile dweight, dbias (+=)
      dout + (1 + acc(a, 0)) * act + C * F32 + 2 * N * F32 + (one ? params * C * F32 : 0),
      act + 2 * (one ? 1 : p.tiles) * C * F32,
      17 * N * C,
      0,
      cdiv(Math.min(p.tileRows, N), LN_WARPS),
    );
    return one ? [fused] : [fused, colSumsFinish(2, p.tiles, C, params)];
  }
  return [
    launch(
      "layernorm_backward_dinp_kernel",
      N,
      normThreads(C),
      dout + (1 + acc(a, 0)) * act + C * F32 + 2 * N * F32, // dout, inp, dinp (+=); weight; mean, rstd
      act,
      14 * N * C,
    ),
    ...colSums(
      "LayerNormParamTerm",
      2,
      N,
      C,
      dout + act + 2 * N * F32,
      0,
      6 * N * C,
      params,
    ),
  ];
};
// mix_layernorm_backward_kernel<V>: one block of 8 warps per row tile, reduce.cuh
// row_tile_plan(N, 1) (colPlan's tiling with one block per tile), one warp per row. Reads dout,
// g_in (each when given), x_out, x, branch (when given), x0 (not again when it is x), ds and dx0
// where added into (ds not again when it is g_in: the element was just read; dx0 not when it is
// ds), weight, mean, rstd, a, b; writes ds, ds_bf16 and dx0 (once when dx0 is ds) and 2 (C + 1)
// partials per tile; then col_sums_finish<2> twice: dweight, dbias over C columns, da, db over 1.
// Each warp walks its rows of the tile one after another, two dependent load rounds a row.
const MIX_LN_WARPS = 8;
const mixLayernormBackward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), n = N * C;
  const p = rowTilePlan(N, 1);
  const same = (x: string, y: string) => typeof a[x] === "number" && a[x] === a[y];
  const ds = has(a, "ds"), dsb = has(a, "ds_bf16"), dx0 = has(a, "dx0") && !same("dx0", "ds");
  const inputs = ["dout", "g_in", "branch"].filter((k) => has(a, k)).length + 2 +
    (same("x", "x0") ? 0 : 1); // + x_out, x
  const readBack = (ds && acc(a, 0) && !same("ds", "g_in") ? 1 : 0) + (dx0 && acc(a, 2) ? 1 : 0);
  const part = p.tiles * 2 * (C + 1) * F32;
  return [
    launch(
      "mix_layernorm_backward_kernel",
      p.tiles,
      MIX_LN_WARPS * 32,
      (inputs + readBack) * n * F32 + C * F32 + 2 * N * F32 + 2 * F32,
      ((ds ? 1 : 0) + (dx0 ? 1 : 0)) * n * F32 + (dsb ? n * BF16 : 0) + part,
      24 * n,
      0,
      2 * cdiv(p.tileRows, MIX_LN_WARPS),
    ),
    colSumsFinish(2, p.tiles, C, acc(a, 3) + acc(a, 4)),
    colSumsFinish(2, p.tiles, 1, acc(a, 5) + acc(a, 6)),
  ];
};
// rmsnorm_forward_kernel: N blocks x norm_threads(C); writes out and rstd [N]
const rmsnormForward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C");
  return [
    launch(
      "rmsnorm_forward_kernel",
      N,
      normThreads(C),
      N * C * F32,
      N * C * F32 + N * F32,
      4 * N * C,
    ),
  ];
};
// rmsnorm_backward_kernel: N blocks; reads dout, inp, rstd, dinp (when +=)
const rmsnormBackward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C");
  const act = N * C * F32;
  const read = (2 + acc(a, 0)) * act + N * F32;
  return [launch("rmsnorm_backward_kernel", N, normThreads(C), read, act, 7 * N * C)];
};

// ---- GPT-2 fused chains (gpt2_fused.cu) ---------------------------------------------------------
// mix_rmsnorm_forward_kernel: N blocks x norm_threads(C); reads x, r (if given), y (not again
// when it is x) and ab, r and y in their dtypes (r_bf16, y_bf16); writes x_out, rstd and whichever
// of out_f32 / out_bf16 is given.
const mixWidth = (a: Record<string, number>, flag: string) => (a[flag] ? BF16 : F32);
const mixRmsnormForward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), n = N * C;
  const sameXY = typeof a.x === "number" && a.x === a.y;
  const inputs = F32 + (has(a, "r") ? mixWidth(a, "r_bf16") : 0) +
    (sameXY ? 0 : mixWidth(a, "y_bf16"));
  const outs = (has(a, "out_f32") ? F32 : 0) + (has(a, "out_bf16") ? BF16 : 0);
  return [
    launch(
      "mix_rmsnorm_forward_kernel",
      N,
      normThreads(C),
      inputs * n + 2 * F32,
      n * (F32 + outs) + N * F32,
      (has(a, "r") ? 9 : 8) * n,
    ),
  ];
};
// mix_rmsnorm_backward_kernel: min(N, 1024) blocks over row chunks (gpt2_fused.cu mix_plan);
// reads dnorm (fp32 or bf16), x_out, rstd, dx_out (if given), x, r and y (if dab; y not again
// when it is x; r and y in their dtypes), dx / dr / dy where their accumulate bit is set (fp32); writes dx, dr, dy (dx
// = dy: once; dr, dy bf16 with dr_bf16 / dy_bf16) and, with dab and more than one block, 2
// partials per block that one full_sums_kernel<2,FullPartialsTerm> block adds into dab.
const mixRmsnormBackward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), n = N * C;
  const accm = need(a, "accumulate");
  const dab = has(a, "dab"), dx = has(a, "dx"), dr = has(a, "dr"), dy = has(a, "dy");
  const same = dx && typeof a.dx === "number" && a.dx === a.dy;
  const rows = Math.ceil(N / Math.min(N, 1024)), blocks = Math.ceil(N / rows);
  const sameXY = typeof a.x === "number" && a.x === a.y;
  const inputs = !dab ? 0 : F32 + (has(a, "r") ? mixWidth(a, "r_bf16") : 0) +
    (sameXY ? 0 : mixWidth(a, "y_bf16"));
  // [written bytes per element, read back when accumulated] of each gradient output
  const outs: [number, boolean][] = [];
  if (dx) outs.push([F32, (accm & 1) !== 0]);
  if (dr) outs.push([mixWidth(a, "dr_bf16"), (accm & 2) !== 0 && !a.dr_bf16]);
  if (dy && !same) outs.push([mixWidth(a, "dy_bf16"), (accm & 4) !== 0 && !a.dy_bf16]);
  const written = outs.reduce((t, [w]) => t + w, 0);
  const readBack = outs.reduce((t, [w, rd]) => t + (rd ? w : 0), 0);
  const read = (1 + (has(a, "dx_out") ? 1 : 0)) * n * F32 +
    (mixWidth(a, "dnorm_bf16") + inputs + readBack) * n + N * F32 + 2 * F32;
  const part = dab && blocks > 1 ? 2 * blocks * F32 : 0;
  const out: Launch[] = [
    launch(
      "mix_rmsnorm_backward_kernel",
      blocks,
      normThreads(C),
      read,
      written * n + part + (dab && !part ? 2 * F32 : 0),
      (dab ? 12 : 8) * n,
    ),
  ];
  if (part) {
    out.push(
      launch(
        "full_sums_kernel<2,FullPartialsTerm>",
        1,
        FULL_THREADS,
        part + (accm & 8 ? 2 * F32 : 0),
        2 * F32,
        2 * blocks,
      ),
    );
  }
  return out;
};

// qk_rmsnorm_rotary_{forward,backward}_kernel: one block of norm_threads(D) per head row (B*T*H);
// forward reads x (fp32, or bf16 under x_bf16), writes the fp32 and/or bf16 output and rstd;
// backward reads dout (bf16 under dout_bf16), x, rstd and dx where bit 0 is set, writes dx (bf16
// under dx_bf16). The cos/sin entries are recomputed (powf, cosf, sinf).
const qkRmsnormRotary = (backward: boolean): Cost => (a) => {
  const rows = need(a, "B") * need(a, "T") * need(a, "H"), D = need(a, "D"), n = rows * D;
  const x = a.x_bf16 ? BF16 : F32;
  if (!backward) {
    const outs = (has(a, "out_f32") ? F32 : 0) + (has(a, "out_bf16") ? BF16 : 0);
    return [
      launch(
        "qk_rmsnorm_rotary_forward_kernel",
        rows,
        normThreads(D),
        n * x,
        n * outs + rows * F32,
        (6 + 3 * EXP) * n,
      ),
    ];
  }
  const dx = a.dx_bf16 ? BF16 : F32, dout = a.dout_bf16 ? BF16 : F32;
  const accRead = need(a, "accumulate") & 1 ? dx : 0;
  return [
    launch(
      "qk_rmsnorm_rotary_backward_kernel",
      rows,
      normThreads(D),
      (dout + x + accRead) * n + rows * F32,
      n * dx,
      (10 + 3 * EXP) * n,
    ),
  ];
};
// value_mix_forward_kernel: elementwise over n; reads v, v1 (once if one tensor; fp32, or bf16
// under v_bf16), lamb.
const valueMixForward: Cost = (a) => {
  const n = need(a, "n");
  const vv = (typeof a.v === "number" && a.v === a.v1 ? 1 : 2) * (a.v_bf16 ? BF16 : F32);
  const outs = (has(a, "out_f32") ? F32 : 0) + (has(a, "out_bf16") ? BF16 : 0);
  return [elementwise("value_mix_forward_kernel", n, vv * n + F32, n * outs, 4)];
};
// mn_value_mix_backward: full_sums<1, ValueMixTerm> (dlamb, += under bit 2): reads dout, v, v1
// (once if one tensor), dv and dv1 where their bits are set (dv == dv1: once); writes dv (bf16
// under dv_bf16), dv1.
const valueMixBackward: Cost = (a) => {
  const n = need(a, "n"), acc = need(a, "accumulate");
  const vv = (typeof a.v === "number" && a.v === a.v1 ? 1 : 2) * (a.v_bf16 ? BF16 : F32);
  const dv = has(a, "dv"), dv1 = has(a, "dv1");
  const dvElem = a.dv_bf16 ? BF16 : F32;
  const same = dv && typeof a.dv === "number" && a.dv === a.dv1;
  const dvBytes = dv ? dvElem : 0, dv1Bytes = !same && dv1 ? F32 : 0;
  const read = (dv && acc & 1 ? dvElem : 0) + (!same && dv1 && acc & 2 ? F32 : 0);
  return fullSums(
    "ValueMixTerm",
    1,
    n,
    ((a.dout_bf16 ? BF16 : F32) + vv + read) * n + F32,
    (dvBytes + dv1Bytes) * n,
    8 * n,
    acc & 4 ? 1 : 0,
  );
};

// ---- elementwise (elementwise.cu) ---------------------------------------------------------------
// EW_LAUNCH: mn_blocks_for(n, 256) x 256 grid-stride. The full reductions (axpby's da, db and
// sum_squares) are reduce.cuh's two-stage full sums (see fullSums).

const relu2Forward: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("relu2_forward_kernel", n, n * F32, n * F32, 2)];
};
const relu2Backward: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("relu2_backward_kernel", n, (2 + acc(a, 0)) * n * F32, n * F32, 4)];
};
const axpbyForward: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("axpby_forward_kernel", n, 2 * n * F32 + 2 * F32, n * F32, 3)];
};
// mn_axpby_backward:
// - all four gradients: one pass, full_sums<2, AxpbyAllTerm>: reads dout, x, y, dx, dy (those
//   added into) and the scalars a, b; writes dx, dy (dx += a g or = a g; dy likewise) and the
//   partials of da, db. With dx == dy (x and y one tensor) it reads dx at most once and writes it
//   once (AxpbyAllTerm<true>).
// - otherwise axpby_backward_dxdy_kernel if dx or dy (each given one store), then if da or db
//   full_sums<2, Dot2Term> (da and db: dout, x, y) or full_sums<1, DotTerm> (dout and x for da,
//   or y for db), into da, db (read when added into).
// x and y the same device address (one tensor): its one load per element counted once.
const axpbyBackward: Cost = (a) => {
  const n = need(a, "n");
  const dx = has(a, "dx"), dy = has(a, "dy"), da = has(a, "da"), db = has(a, "db");
  const same = (p: string, q: string) => typeof a[p] === "number" && a[p] === a[q];
  const xy = same("x", "y") ? 1 : 2; // distinct x, y tensors read
  const ax = dx ? acc(a, 0) : 0, ay = dy ? acc(a, 1) : 0;
  const aa = da ? acc(a, 2) : 0, ab = db ? acc(a, 3) : 0;
  if (dx && dy && da && db) {
    const grads = same("dx", "dy") ? 1 : 2, gradsRead = same("dx", "dy") ? ax : ax + ay;
    return fullSums(
      "AxpbyAllTerm",
      2,
      n,
      (1 + xy + gradsRead) * n * F32 + 2 * F32, // dout, x, y, dx, dy (+=); a, b
      grads * n * F32,
      8 * n,
      aa + ab,
    );
  }
  const out: Launch[] = [];
  if (dx || dy) {
    const k = (dx ? 1 : 0) + (dy ? 1 : 0), kr = ax + ay;
    out.push(
      elementwise(
        "axpby_backward_dxdy_kernel",
        n,
        (1 + kr) * n * F32 + k * F32,
        k * n * F32,
        2 * k,
      ),
    );
  }
  if (da && db) out.push(...fullSums("Dot2Term", 2, n, (1 + xy) * n * F32, 0, 4 * n, aa + ab));
  else if (da || db) out.push(...fullSums("DotTerm", 1, n, 2 * n * F32, 0, 2 * n, aa + ab));
  return out;
};
const add: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("ew_add_kernel", n, 2 * n * F32, n * F32, 1)];
};
const axpy: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("ew_axpy_kernel", n, 2 * n * F32, n * F32, 2)];
};
const scale: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("ew_scale_kernel", n, n * F32, n * F32, 1)];
};
const fill: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("ew_fill_kernel", n, 0, n * F32, 0)];
};
// mn_sum_squares: full_sums<1, SquareTerm> over x (out = sum, not accumulated)
const sumSquares: Cost = (a) => {
  const n = need(a, "n");
  return fullSums("SquareTerm", 1, n, n * F32, 0, 2 * n, 0);
};

// ---- loss (crossentropy.cu) ---------------------------------------------------------------------
// softcap_crossentropy_kernel: one block of 256 per row (N blocks), two passes over the row of V
// logits: an online softmax (each thread's running max and rescaled sum of exp, merged in a fixed
// order), then, only with dlogits, the loss gradient; without dlogits there is one pass. The
// second pass hits L2 only if the rows in flight fit there. Estimate: 8 resident 256-thread blocks
// per SM on 132 SMs; at V = 50304 that is ~210 MB in flight, so it reads DRAM again.
// FLOPs per logit (estimates): pass 1 z (capped: a tanh) and one exp with the compare and add of
// the online update; pass 2 z, exp, dz (capped: another exp and a division) and the products.
// mn_softcap_crossentropy_bf16: the same kernel on bf16 logits and dlogits (elem = BF16). With a
// gradient and a row of at most CE_STAGE_MAX_BYTES (160 KB) it first copies the row into shared
// memory and both passes read it there (still 256 threads): one DRAM read of the row, and
// x[target] comes from the copy. (The kernel also checks the device's per-block shared-memory
// opt-in; the model assumes an H100/H200, 227 KB.)
const CE_STAGE_MAX_BYTES = 160 * 1024;
const softcapCrossentropy = (elem: number): Cost => (a) => {
  const N = need(a, "N"), V = need(a, "V");
  const grad = has(a, "dlogits");
  const row = V * elem;
  const staged = elem === BF16 && grad && row <= CE_STAGE_MAX_BYTES;
  const passes = grad ? 2 : 1;
  const inFlight = Math.min(N, 8 * SMS) * row;
  const logitReads = staged || inFlight <= L2_BYTES ? N * row : passes * N * row;
  const capped = (a.softcap ?? 1) > 0;
  const perElem = (capped ? EXP : 1) + EXP + 2 + (grad ? (capped ? 4 * EXP : 2 * EXP) : 0);
  return [
    launch(
      "softcap_crossentropy_kernel",
      N,
      256,
      logitReads + N * F32 + (staged ? 0 : N * elem), // + targets, x[target]
      N * F32 + (grad ? N * row : 0),
      N * V * perElem,
    ),
  ];
};

// ---- optimizer (adam.cu) ------------------------------------------------------------------------
// adam_step_kernel: mn_blocks_for(n, 256) x 256; reads param, grad, m, v; writes param, m, v
const adamStep: Cost = (a) => {
  const n = need(a, "n");
  return n <= 0 ? [] : [elementwise("adam_step_kernel", n, 4 * n * F32, 3 * n * F32, 12 + EXP)];
};
// adam_multi_step_kernel: mn_blocks_for(total_n, 256) x 256, grid-stride over every tensor's
// elements: adam_step's bytes for total_n elements, plus the list (6 int64 a tensor, read through
// L1/L2 by the searches; counted once).
const adamMultiStep: Cost = (a) => {
  const n = need(a, "total_n"), count = need(a, "count");
  return n <= 0 ? [] : [
    elementwise("adam_multi_step_kernel", n, 4 * n * F32 + 48 * count, 3 * n * F32, 12 + EXP),
  ];
};

// ---- device-side scalars (scalars.cu) -----------------------------------------------------------
// sum_into_kernel: ONE block of sum_threads(n) threads (1024 above 16,384 elements, 256 from 256,
// else 32*ceil(n/32)): n/threads serial steps.
const sumThreads = (n: number) => n > 16384 ? 1024 : n >= 256 ? 256 : 32 * cdiv(n, 32);
const sumInto: Cost = (a) => {
  const n = need(a, "n"), t = sumThreads(n);
  return [launch("sum_into_kernel", 1, t, n * F32 + F32, F32, n, 0, cdiv(n, t))];
};
// scale_by_inv_norm_kernel: mn_blocks_for(n, 256) x 256; reads x and the one sumsq, writes out
const scaleByInvNorm: Cost = (a) => {
  const n = need(a, "n");
  return [elementwise("scale_by_inv_norm_kernel", n, n * F32 + F32, n * F32, 1)];
};

// ---- model ops (modelops.cu) --------------------------------------------------------------------
// Elementwise ops: mn_blocks_for(n, 256) x 256; warp-per-row ops: mn_blocks_for(rows, 8) x 256;
// column reductions (row-vector dv, GroupNorm dweight/dbias, bonus du): reduce.cuh's two-stage
// column sums (colSums).
const warpRowBlocks = (rows: number) => blocksFor(rows, 8);

// per-element FLOPs of unary_f / unary_df by op code (MN_OP_*: 1 tanh, 2 sigmoid, 3 rwkv7 decay,
// 4 exp(min(x, 0)), 5 neg); estimates
const UNARY_FWD: Record<number, number> = { 1: EXP, 2: EXP + 2, 3: 2 * EXP + 2, 4: EXP, 5: 1 };
const UNARY_BWD: Record<number, number> = { 1: 4, 2: 4, 3: 2 * EXP + 2, 4: 3, 5: 2 };

const unaryForward: Cost = (a) => {
  const n = need(a, "n"), op = need(a, "op");
  return n <= 0
    ? []
    : [elementwise("unary_forward_kernel", n, n * F32, n * F32, UNARY_FWD[op] ?? 8)];
};
// unary_backward_kernel reads x and out wherever the pointer is non-NULL (not only when the op
// needs them), dout, and dx (when +=)
const unaryBackward: Cost = (a) => {
  const n = need(a, "n"), op = need(a, "op");
  if (n <= 0) return [];
  const inputs = 1 + acc(a, 0) + (has(a, "x") ? 1 : 0) + (has(a, "out") ? 1 : 0);
  return [
    elementwise("unary_backward_kernel", n, inputs * n * F32, n * F32, UNARY_BWD[op] ?? 4),
  ];
};
// the bf16 variants: x, out bf16; dout, dx fp32 or bf16 (a bf16 dx is overwritten, never read)
const unaryForwardBf16: Cost = (a) => {
  const n = need(a, "n"), op = need(a, "op");
  return n <= 0
    ? []
    : [elementwise("unary_forward_kernel", n, n * BF16, n * BF16, UNARY_FWD[op] ?? 8)];
};
const unaryBackwardBf16: Cost = (a) => {
  const n = need(a, "n"), op = need(a, "op");
  if (n <= 0) return [];
  const dout = need(a, "dout_bf16") ? BF16 : F32, dx = need(a, "dx_bf16") ? BF16 : F32;
  const xs = (has(a, "x") ? 1 : 0) + (has(a, "out") ? 1 : 0);
  const read = n * (dout + xs * BF16 + (need(a, "dx_bf16") ? 0 : acc(a, 0) * F32));
  return [elementwise("unary_backward_kernel", n, read, n * dx, UNARY_BWD[op] ?? 4)];
};
const mulForward: Cost = (a) => {
  const n = need(a, "n");
  return n <= 0 ? [] : [elementwise("mul_forward_kernel", n, 2 * n * F32, n * F32, 1)];
};
// mul_backward_kernel: dout; dx += dout*y (reads y, and dx when +=); dy += dout*x likewise
const mulBackward: Cost = (a) => {
  const n = need(a, "n");
  const dx = has(a, "dx"), dy = has(a, "dy");
  const k = (dx ? 1 : 0) + (dy ? 1 : 0), kr = (dx ? acc(a, 0) : 0) + (dy ? acc(a, 1) : 0);
  if (n <= 0 || k === 0) return [];
  return [elementwise("mul_backward_kernel", n, (1 + k + kr) * n * F32, k * n * F32, 2 * k)];
};
const lerpForward: Cost = (a) => {
  const n = need(a, "n");
  return n <= 0 ? [] : [elementwise("lerp_forward_kernel", n, 3 * n * F32, n * F32, 3)];
};
// lerp_backward_kernel: dout, g always; dx, dy, dg (read when +=); dg also reads x, y
const lerpBackward: Cost = (a) => {
  const n = need(a, "n");
  const dx = has(a, "dx"), dy = has(a, "dy"), dg = has(a, "dg");
  const k = (dx ? 1 : 0) + (dy ? 1 : 0) + (dg ? 1 : 0);
  const kr = (dx ? acc(a, 0) : 0) + (dy ? acc(a, 1) : 0) + (dg ? acc(a, 2) : 0);
  if (n <= 0 || k === 0) return [];
  const reads = 2 + kr + (dg ? 2 : 0);
  return [elementwise("lerp_backward_kernel", n, reads * n * F32, k * n * F32, 3 * k)];
};
// row_vector_forward_kernel<false/true>: mn_blocks_for(N*C, 256) x 256; reads x and v [C]
function rowVectorForward(a: Record<string, number>): Launch[] {
  const N = need(a, "N"), C = need(a, "C");
  const act = N * C * F32;
  return [elementwise("row_vector_forward_kernel", N * C, act + C * F32, act, 2)];
}
// row_vector_backward (dx may be NULL; dv NULL only for mul):
// - dv: col_sums<1, RowVecTerm<kMul, kDx>> over [N, C] (colSums): stage 1 reads dout, x (mul)
//   and, with dx fused in (dx += or = dout * (mul ? v[c] : 1)), dx (when +=) and v [C] (mul),
//   writes dx; dv += or =.
// - dv NULL: row_vector_dx_kernel<kMul>: mn_blocks_for(N*C, 256) x 256; reads dout, dx (when +=),
//   v [C]; writes dx.
function rowVectorBackward(a: Record<string, number>, mul: boolean, dx: boolean, dv: boolean) {
  const N = need(a, "N"), C = need(a, "C");
  const act = N * C * F32, dxRead = acc(a, 0) * act;
  if (!dv) {
    return [elementwise("row_vector_dx_kernel", N * C, act + dxRead + C * F32, act, 2)];
  }
  const read = act + (mul ? act : 0) + (dx ? dxRead + (mul ? C * F32 : 0) : 0);
  const flops = N * C * ((dx ? 2 : 0) + (mul ? 2 : 1));
  return colSums("RowVecTerm", 1, N, C, read, dx ? act : 0, flops, acc(a, 1));
}
// mn_add_row_vector_backward: dv required, dx optional
const addRowVectorBackward: Cost = (a) => rowVectorBackward(a, false, has(a, "dx"), true);
// mn_mul_row_vector_backward: no launch when dx and dv are both NULL
const mulRowVectorBackward: Cost = (a) => {
  const dx = has(a, "dx"), dv = has(a, "dv");
  if (!dx && !dv) return [];
  return rowVectorBackward(a, true, dx, dv);
};
// time_shift_forward_kernel: mn_blocks_for(B*T*C, 256); reads x for t < T-1, writes all of out
const timeShiftForward: Cost = (a) => {
  const B = need(a, "B"), T = need(a, "T"), C = need(a, "C");
  const n = B * T * C;
  return [elementwise("time_shift_forward_kernel", n, B * (T - 1) * C * F32, n * F32, 1)];
};
// time_shift_backward_kernel: dx[t] += dout[t+1] for t < T-1 (dx, dout read; dx written there);
// overwriting, dx[t] = dout[t+1] and the last step's dx = 0 (all of dx written, none read)
const timeShiftBackward: Cost = (a) => {
  const B = need(a, "B"), T = need(a, "T"), C = need(a, "C");
  const moved = B * (T - 1) * C * F32;
  const written = acc(a, 0) ? moved : B * T * C * F32;
  return [
    elementwise("time_shift_backward_kernel", B * T * C, (1 + acc(a, 0)) * moved, written, 1),
  ];
};
// l2norm_forward_kernel: warp per row of D, mn_blocks_for(N, 8) x 256
const l2normForward: Cost = (a) => {
  const N = need(a, "N"), D = need(a, "D");
  return [
    launch("l2norm_forward_kernel", warpRowBlocks(N), 256, N * D * F32, N * D * F32, 3 * N * D),
  ];
};
// l2norm_backward_kernel: reads dx (when +=), dout, x
const l2normBackward: Cost = (a) => {
  const N = need(a, "N"), D = need(a, "D");
  const act = N * D * F32, read = (2 + acc(a, 0)) * act;
  return [launch("l2norm_backward_kernel", warpRowBlocks(N), 256, read, act, 8 * N * D)];
};
// groupnorm_forward_kernel: warp per (row, group), rows = N*G; writes out, mean, rstd [N, G]
const groupnormForward: Cost = (a) => {
  const N = need(a, "N"), G = need(a, "G"), D = need(a, "D");
  const rows = N * G, act = rows * D * F32;
  return [
    launch(
      "groupnorm_forward_kernel",
      warpRowBlocks(rows),
      256,
      act + 2 * G * D * F32,
      act + 2 * rows * F32,
      8 * rows * D,
    ),
  ];
};
// groupnorm_backward: groupnorm_backward_dx_kernel (warp per (row, group); dx += or =), then dweight,
// dbias by col_sums<2, GroupNormParamTerm> over [N, C = G*D] (colSums): stage 1 reads dout, x and
// mean, rstd [N, G] (re-read by the column blocks of one group: L2); dweight, dbias +=.
const groupnormBackward: Cost = (a) => {
  const N = need(a, "N"), G = need(a, "G"), D = need(a, "D");
  const rows = N * G, C = G * D, act = rows * D * F32;
  return [
    launch(
      "groupnorm_backward_dx_kernel",
      warpRowBlocks(rows),
      256,
      (2 + acc(a, 0)) * act + C * F32 + 2 * rows * F32, // dout, x, dx (+=); weight; mean, rstd
      act,
      14 * rows * D,
    ),
    ...colSums(
      "GroupNormParamTerm",
      2,
      N,
      C,
      2 * act + 2 * rows * F32,
      0,
      6 * rows * D,
      acc(a, 1) + acc(a, 2),
    ),
  ];
};
// bonus_forward_kernel: warp per (row, head), rows = N*H; reads r, k, v, u; writes out
const rwkv7BonusForward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D");
  const rows = N * H, act = rows * D * F32;
  return [
    launch(
      "bonus_forward_kernel",
      warpRowBlocks(rows),
      256,
      3 * act + H * D * F32,
      act,
      5 * rows * D,
    ),
  ];
};
// rwkv7_bonus_backward: bonus_backward_rkv_kernel (warp per (row, head); dr, dk, dv += or =; writes
// ds = dout . v [N, H] to library scratch), then du by col_sums<1, BonusDuTerm> over [N, C = H*D]
// (colSums): stage 1 reads ds, r, k again (a separate launch: counted again), du += sum ds r k.
const rwkv7BonusBackward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D");
  const rows = N * H, act = rows * D * F32;
  return [
    launch(
      "bonus_backward_rkv_kernel",
      warpRowBlocks(rows),
      256,
      (4 + acc(a, 0) + acc(a, 1) + acc(a, 2)) * act + H * D * F32, // dout, r, k, v; dr, dk, dv; u
      3 * act + rows * F32, // dr, dk, dv; ds
      14 * rows * D,
    ),
    ...colSums("BonusDuTerm", 1, N, H * D, 2 * act + rows * F32, 0, 3 * rows * D, acc(a, 3)),
  ];
};

// ---- fused RWKV-7 time mixing (rwkv7_fused.cu) ---------------------------------------------------
// Forwards are grid-stride elementwise kernels (mn_blocks_for(B*T*C, 256) x 256) writing fp32 or
// bf16 (out_bf16); x's previous row (the token shift) is the row another block just read: L2, so
// x counts once. Backwards are reduce.cuh column sums whose stage 1 also writes the elementwise
// gradients; a gradient is read only where its accumulate bit is set. dout's next row (the next
// token's xx) is likewise an L2 hit.
const accBit = (a: Record<string, number>, bit: number) =>
  ((need(a, "accumulate") >> bit) & 1) === 1;
const rwkv7MixXForward: Cost = (a) => {
  const n = need(a, "B") * need(a, "T") * need(a, "C"), C = need(a, "C");
  const out = need(a, "out_bf16") ? BF16 : F32;
  return [elementwise("mix_x_forward_kernel", n, n * F32 + C * F32, n * out, 3)];
};
// col_sums<1, MixXTerm>: reads dout (fp32 or bf16), x (and dx with bit 0); writes dx; dmaa += sum dout * xx
const rwkv7MixXBackward: Cost = (a) => {
  const N = need(a, "B") * need(a, "T"), C = need(a, "C"), act = N * C * F32;
  const dout = N * C * (need(a, "dout_bf16") ? BF16 : F32);
  return colSums("MixXTerm", 1, N, C, act + dout + (accBit(a, 0) ? act : 0), act, 7 * N * C);
};
const rwkv7Mix4Forward: Cost = (a) => {
  const n = need(a, "B") * need(a, "T") * need(a, "C"), C = need(a, "C");
  const out = need(a, "out_bf16") ? BF16 : F32, m = need(a, "m_bf16") ? BF16 : F32;
  const read = n * F32 + 4 * n * m + 4 * C * F32;
  return [elementwise("mixn_forward_kernel", n, read, 4 * n * out, 13)];
};
// col_sums<4, MixNTerm<4>>: reads dout_j (fp32, or bf16 and the second bf16 parts given), m_j
// (j < 4), x, and dx, dm_j where their bits are set; writes dx, dm_j; sums the four dmaa_j.
const rwkv7Mix4Backward: Cost = (a) => {
  const N = need(a, "B") * need(a, "T"), C = need(a, "C"), act = N * C * F32;
  const m = N * C * (need(a, "m_bf16") ? BF16 : F32);
  const dm = N * C * (need(a, "dm_bf16") ? BF16 : F32);
  const parts = ["dout2_rg", "dout2_wa", "dout2_k", "dout2_v"].filter((k) => has(a, k)).length;
  const dout = need(a, "dout_bf16") ? (4 + parts) * N * C * BF16 : 4 * act;
  let accRead = accBit(a, 0) ? act : 0;
  for (let bit = 1; bit < 5; bit++) accRead += accBit(a, bit) ? dm : 0;
  return colSums("MixNTerm<4>", 4, N, C, act + dout + 4 * m + accRead, act + 4 * dm, 32 * N * C);
};

// rwkv7_value_mix_forward: reads v, v1, mv (fp32 or bf16) and time_misc_v; writes out fp32 (+ bf16
// copy)
const rwkv7ValueMixForward: Cost = (a) => {
  const n = need(a, "N") * need(a, "C"), C = need(a, "C");
  const mv = n * (need(a, "mv_bf16") ? BF16 : F32);
  const out = n * F32 + (has(a, "out_bf16") ? n * BF16 : 0);
  return [elementwise("value_mix_forward_kernel", n, 2 * n * F32 + mv + C * F32, out, 8)];
};
// col_sums<1, ValueMixTerm>: reads dout, v, v1, mv (fp32 or bf16), and dv, dv1, dmv where their
// bits are set; writes dv, dmv (fp32 or bf16), dv1; dtime_misc_v += sum dmv
const rwkv7ValueMixBackward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), act = N * C * F32;
  const mv = N * C * (need(a, "mv_bf16") ? BF16 : F32);
  const dmv = N * C * (need(a, "dmv_bf16") ? BF16 : F32);
  const dv = N * C * (need(a, "dv_bf16") ? BF16 : F32);
  const dout = N * C * (need(a, "dout_bf16") ? BF16 : F32);
  const accRead = (accBit(a, 0) ? dv : 0) + (accBit(a, 1) ? act : 0) + (accBit(a, 2) ? dmv : 0);
  return colSums(
    "ValueMixTerm",
    1,
    N,
    C,
    dout + 2 * act + mv + accRead,
    dv + act + dmv,
    14 * N * C,
  );
};

// rwkv7_wkv_inputs_forward: warp per (row, head), mn_blocks_for(N*H, 8) x 256; reads the six
// inputs (k0, kkk twice: the norm pass, then the elements; the head's second read is an L1/L2 hit)
// and the four parameter vectors; writes w, a, b (fp32 or bf16), k fp32 and its bf16 copy.
const rwkv7WkvInputsForward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D");
  const n = N * H * D, out = need(a, "out_bf16") ? BF16 : F32;
  const inB = need(a, "in_bf16") ? BF16 : F32;
  const written = 3 * n * out + n * F32 + (has(a, "k_bf16") ? n * BF16 : 0);
  return [
    launch(
      "wkv_inputs_forward_kernel",
      warpRowBlocks(N * H),
      256,
      6 * n * inB + 4 * H * D * F32,
      written,
      60 * n,
    ),
  ];
};
// rwkv7_wkv_inputs_backward: wkv_inputs_backward_kernel, grid (H, tiles) of row_tile_plan(N, H),
// 256 threads: warp w of block (h, y) takes head h of rows w, w + 8, ... of tile y (one warp per
// (row, head) at a time). It reads the four output gradients and six inputs, the gradients whose
// bits are set, writes the six gradients, and sums the four parameter terms per column of the tile
// (shared memory): several tiles write partials [tiles][4][C] for col_sums_finish<4>, one tile adds
// into the four parameter gradients (read and written). A warp walks its rows in sequence, two
// dependent DRAM rounds a row (the head's norm, then the dot product; the third pass over the
// head's elements hits L1/L2): its serialSteps.
const rwkv7WkvInputsBackward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D"), C = H * D, act = N * C * F32;
  const inputs = 6 * N * C * (need(a, "in_bf16") ? BF16 : F32);
  const grad = N * C * (need(a, "grad_bf16") ? BF16 : F32);
  let accRead = 0;
  for (let bit = 0; bit < 6; bit++) accRead += accBit(a, bit) ? act : 0;
  const p = rowTilePlan(N, H), par = 4 * C * F32;
  // the outputs' gradients dw, da, db (dwab_bf16) and dk (dk_bf16): fp32 or bf16
  const douts = N * C * (3 * ((a.dwab_bf16 ?? 0) ? BF16 : F32) + ((a.dk_bf16 ?? 0) ? BF16 : F32));
  const main = launch(
    "wkv_inputs_backward_kernel",
    H * p.tiles,
    256,
    douts + inputs + 4 * C * F32 + accRead + (p.tiles === 1 ? par : 0),
    6 * grad + (p.tiles === 1 ? par : p.tiles * par),
    124 * N * C,
    0,
    2 * cdiv(Math.min(p.tileRows, N), 8),
  );
  return p.tiles === 1 ? [main] : [main, colSumsFinish(4, p.tiles, C)];
};

// rwkv7_gn_bonus_gate_forward: warp per (row, head), mn_blocks_for(N*H, 8) x 256; reads y (twice
// for the statistics: the head's second pass hits L1/L2), r, k, v, gate (fp32 or bf16) and weight,
// bias, u; writes out (fp32 or bf16) and mean, rstd [N, H].
const rwkv7GnBonusGateForward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D");
  const n = N * H * D, out = need(a, "out_bf16") ? BF16 : F32;
  const gate = n * (need(a, "gate_bf16") ? BF16 : F32);
  return [
    launch(
      "gn_bonus_gate_forward_kernel",
      warpRowBlocks(N * H),
      256,
      4 * n * F32 + gate + 3 * H * D * F32,
      n * out + 2 * N * H * F32,
      14 * n,
    ),
  ];
};
// The fused GroupNorm (+ bonus) * gate backward (rwkv7_fused.cu gn_backward): one pass,
// gn_bonus_gate_backward_kernel, grid (H * ceil(D / 128), tiles) x 256 with tiles from
// row_tile_plan(N, H * ceil(D / 128)); a warp walks its rows of the tile one (row, head) at a time
// (serialSteps: ceil(tile rows / 8) round trips), reads dout, y, gate (fp32 or bf16), mean, rstd,
// weight, bias (and r, k, v, u with the bonus) and the gradients whose bits are set, writes the
// elementwise gradients and sums its K parameter gradients (dweight, dbias, du): partials
// [tiles][K][C] to scratch, then "column_sums_finish" (col_sums_kernel<K, PartialsTerm>) adds them
// to the outputs; one tile adds into the outputs itself. Heads over 128 channels: the blocks of one
// head re-read its statistics' inputs, counted once (L2 hits: they run side by side).
function gnGateBackward(
  N: number,
  H: number,
  D: number,
  K: number,
  read: number,
  written: number,
  flops: number,
): Launch[] {
  const C = H * D, groups = cdiv(D, 128);
  const p = rowTilePlan(N, H * groups);
  const kernel = "gn_bonus_gate_backward_kernel", out = K * C * F32;
  const steps = cdiv(p.tileRows, 8);
  if (p.tiles === 1) {
    return [launch(kernel, H * groups, 256, read + out, written + out, flops, 0, steps)];
  }
  const part = p.tiles * K * C * F32;
  return [
    launch(kernel, H * groups * p.tiles, 256, read, written + part, flops, 0, steps),
    launch(
      `col_sums_kernel<${K},PartialsTerm>`,
      cdiv(C, RED_COLS),
      RED_COLS * RED_LANES,
      part + out,
      out,
      p.tiles * K * C,
      0,
      loadRounds(p.tiles, RED_LANES),
    ),
  ];
}
// rwkv7_gn_bonus_gate_backward: reads dout, y, r, k, v, gate, mean, rstd, weight, bias, u (and the
// gradients whose bits are set), writes dy, dr, dk, dv, dgate (fp32 or bf16); sums dweight, dbias,
// du (K = 3)
const rwkv7GnBonusGateBackward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D"), C = H * D, act = N * C * F32;
  const stats = 2 * N * H * F32;
  const gate = N * C * (need(a, "gate_bf16") ? BF16 : F32);
  const dgate = N * C * (need(a, "dgate_bf16") ? BF16 : F32);
  let accRead = accBit(a, 4) ? dgate : 0;
  for (let bit = 0; bit < 4; bit++) accRead += accBit(a, bit) ? act : 0;
  return gnGateBackward(
    N,
    H,
    D,
    3,
    5 * act + gate + stats + 3 * C * F32 + accRead,
    4 * act + dgate,
    46 * N * C,
  );
};

// ---- fused RWKV-6 time mixing (rwkv7_fused.cu, beside RWKV-7's) --------------------------------
// mix5: the mix4 kernels with five pairs. col_sums<4, MixNTerm<5>>: reads dout_j, m_j (j < 5), x,
// and dx, dm_j where their bits are set; writes dx, dm_j; sums dmaa_w .. dmaa_r. Then
// col_sums<1, MixTailTerm> (dout_g, x) for dmaa_g.
const rwkv6Mix5Forward: Cost = (a) => {
  const n = need(a, "B") * need(a, "T") * need(a, "C"), C = need(a, "C");
  const out = need(a, "out_bf16") ? BF16 : F32;
  return [elementwise("mixn_forward_kernel", n, 6 * n * F32 + 5 * C * F32, 5 * n * out, 16)];
};
const rwkv6Mix5Backward: Cost = (a) => {
  const N = need(a, "B") * need(a, "T"), C = need(a, "C"), act = N * C * F32;
  let accRead = 0;
  for (let bit = 0; bit < 6; bit++) accRead += accBit(a, bit) ? act : 0;
  return [
    ...colSums("MixNTerm<5>", 4, N, C, 11 * act + accRead, 6 * act, 39 * N * C),
    ...colSums("MixTailTerm", 1, N, C, 2 * act, 0, 3 * N * C),
  ];
};
// decay_k_forward: elementwise over N*C, reads ww, k (and time_decay), writes w, kw (fp32 or bf16)
const rwkv6DecayKForward: Cost = (a) => {
  const n = need(a, "N") * need(a, "C"), C = need(a, "C");
  const out = need(a, "out_bf16") ? BF16 : F32;
  return [elementwise("decay_k_forward_kernel", n, 2 * n * F32 + C * F32, 2 * n * out, 4)];
};
// col_sums<1, DecayKTerm>: reads dw, dkw, ww, k (and dww, dk where their bits are set); writes
// dww, dk; dtime_decay += sum dww
const rwkv6DecayKBackward: Cost = (a) => {
  const N = need(a, "N"), C = need(a, "C"), act = N * C * F32;
  const accRead = (accBit(a, 0) ? act : 0) + (accBit(a, 1) ? act : 0);
  return colSums("DecayKTerm", 1, N, C, 4 * act + accRead, 2 * act, 8 * N * C);
};
// rwkv6_gn_gate_forward: gn_bonus_gate_forward_kernel<false>: reads y (twice, the second pass an
// L1/L2 hit), gate (fp32 or bf16), weight, bias; writes out and mean, rstd [N, H]
const rwkv6GnGateForward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D");
  const n = N * H * D, out = need(a, "out_bf16") ? BF16 : F32;
  const gate = n * (need(a, "gate_bf16") ? BF16 : F32);
  return [
    launch(
      "gn_bonus_gate_forward_kernel",
      warpRowBlocks(N * H),
      256,
      n * F32 + gate + 2 * H * D * F32,
      n * out + 2 * N * H * F32,
      10 * n,
    ),
  ];
};
// rwkv6_gn_gate_backward: gn_bonus_gate_backward_kernel<false> (gnGateBackward, K = 2) reads
// dout, y, gate (fp32 or bf16), mean, rstd, weight, bias and the gradients whose bits are set,
// writes dy, dgate (fp32 or bf16); sums dweight, dbias
const rwkv6GnGateBackward: Cost = (a) => {
  const N = need(a, "N"), H = need(a, "H"), D = need(a, "D"), C = H * D, act = N * C * F32;
  const stats = 2 * N * H * F32;
  const gate = N * C * (need(a, "gate_bf16") ? BF16 : F32);
  const dgate = N * C * (need(a, "dgate_bf16") ? BF16 : F32);
  const accRead = (accBit(a, 0) ? act : 0) + (accBit(a, 1) ? dgate : 0);
  return gnGateBackward(
    N,
    H,
    D,
    2,
    2 * act + gate + stats + 2 * C * F32 + accRead,
    act + dgate,
    23 * N * C,
  );
};

// ---- WKV-7 (wkv7.cu) ----------------------------------------------------------------------------
// grid (H, B); forward block N (thread = row of S), backward block N*P with P = N >= 64 ? N/32 : 1
// lanes per row; t walked in order: T serial steps. Inputs r, w, k, v, a, b [B,T,H,N] in `inBytes`.
const wkv7Lanes = (N: number) => (N >= 64 ? N / 32 : 1);

function wkv7Shape(a: Record<string, number>) {
  const B = need(a, "B"), T = need(a, "T"), H = need(a, "H"), N = need(a, "N");
  const elems = B * T * H * N; // one [B,T,H,N] tensor
  const ckpt = B * H * (T / 16) * N * N * F32; // s_ckpt [B,H,T/16,N,N] fp32
  return { B, T, H, N, elems, ckpt };
}

// wkv7_forward_kernel: reads the 6 inputs; writes y, s_ckpt and (mn_wkv7_forward only) sa.
// Per step and row: sa = s.a (2N), s = s d + sa b + v k (5N), y = s.r (2N); 2 exps per thread.
function wkv7Forward(a: Record<string, number>, inBytes: number, withSa: boolean): Launch[] {
  const { B, T, H, N, elems, ckpt } = wkv7Shape(a);
  return [
    launch(
      "wkv7_forward_kernel",
      H * B,
      N,
      6 * elems * inBytes,
      elems * F32 * (withSa ? 2 : 1) + ckpt,
      B * H * T * N * (9 * N + 2 * EXP),
      0,
      T,
    ),
  ];
}
// wkv7_backward_kernel (backstepping): reads dy, sa (fp32), the 6 bf16 inputs, every checkpoint;
// dr, dw, dk, dv, da, db += or = (read only when +=; at N = 128 the flag is compile-time: a mixed
// mask first zero-fills the overwritten ones with mn_fill, then adds into all six). Per step and row ~32N FLOPs (backstep 6N, five dot products 10N,
// dai 2N, G row/column updates 8N, dy r^T 4N, dr 2N); estimate.
/** The six WKV-7 gradients' bytes: dr, dk, dv bf16 with drkv_bf16, dw, da, db with dwab_bf16;
 * those added into (their bits) are read as well */
function wkv7GradBytes(a: Record<string, number>, elems: number) {
  const size = (i: number) =>
    (([1, 4, 5].includes(i) ? a.dwab_bf16 ?? 0 : a.drkv_bf16 ?? 0) ? BF16 : F32) * elems;
  let written = 0, added = 0;
  for (let i = 0; i < 6; i++) {
    written += size(i);
    added += acc(a, i) ? size(i) : 0;
  }
  return { written, added };
}
const wkv7Backward: Cost = (a) => {
  const { B, T, H, N, elems, ckpt } = wkv7Shape(a);
  const added = accCount(a, 6), mixed = N === 128 && added > 0 && added < 6;
  const grads = wkv7GradBytes(a, elems);
  // N = 128 with a mixed mask: the overwritten ones zero-filled, then all six added into
  const fills = mixed ? 6 - added : 0;
  const fill = elementwise("ew_fill_kernel", elems, 0, elems * F32, 0);
  return [
    ...Array.from({ length: fills }, () => fill),
    launch(
      "wkv7_backward_kernel",
      H * B,
      N * wkv7Lanes(N),
      2 * elems * F32 + 6 * elems * BF16 + ckpt + (mixed ? grads.written : grads.added),
      grads.written,
      B * H * T * N * (32 * N + 3 * EXP),
      0,
      T,
    ),
  ];
};
// wkv7g_backward_kernel (recompute): per 16-step chunk, phase A re-runs the chunk forward from
// checkpoint c-1 and stores the 17 states S_{16c-1} .. S_{16c+15} [N,N] fp32 in ws; phase B reads
// them back, S_t and S_{t-1} at step t (S_{t-1} is S_t of the next step down: a hit, so 17 distinct
// state reads per chunk). ws traffic (estimate): when all blocks' scratch B*H*17*N*N*4 fits in L2
// it is counted once written and once read; otherwise (1.1e8 bytes at B=32, H=12, N=64: it does
// not) every chunk's 17 stores and 17 loads count: an upper bound, as L2 absorbs part of it.
function wkv7gBackward(a: Record<string, number>, inBytes: number): Launch[] {
  const { B, T, H, N, elems } = wkv7Shape(a);
  const nc = T / 16;
  const state = N * N * F32;
  const wsAll = B * H * 17 * state;
  const fits = wsAll <= L2_BYTES;
  const wsWrite = fits ? wsAll : B * H * nc * 17 * state;
  const wsRead = fits ? wsAll : B * H * nc * 17 * state;
  const ckptRead = B * H * Math.max(nc - 1, 0) * state;
  return [
    launch(
      "wkv7g_backward_kernel",
      H * B,
      N * wkv7Lanes(N),
      elems * F32 + 6 * elems * inBytes + ckptRead + wsRead + accCount(a, 6) * elems * F32,
      6 * elems * F32 + wsWrite,
      B * H * T * N * (7 * N + 30 * N + 4 * EXP),
      0,
      T,
    ),
  ];
}

// ---- causal attention (attention.cu): CUDA cores ------------------------------------------------
// Forward grid (ceil(T/64), H, B) x 256; backward: attention_delta_kernel (ceil(B*T*H/8) x 256),
// attention_backward_dkv_kernel and attention_backward_dq_kernel (grid (ceil(T/32), H, B) x 256).
// q, k, v of one (b, h) are re-read by every tile of that head: assumed to hit L2 (the blocks of a
// head are adjacent in the grid), so each is counted once. FLOPs are those the tiles compute,
// masked entries included (the kernels compute whole tiles); exp ~ EXP per score.
interface AttnShape {
  B: number;
  T: number;
  H: number;
  D: number;
  elems: number; // B*T*H*D
  rows: number; // B*H*T
}
function attnShape(a: Record<string, number>): AttnShape {
  const B = need(a, "B"), T = need(a, "T"), H = need(a, "H"), D = need(a, "D");
  return { B, T, H, D, elems: B * T * H * D, rows: B * H * T };
}

/** (query tile, key tile) pairs one (b, h) walks, and the longest block's tile count. */
function attnCorePairs(T: number) {
  let fwd = 0, fwdMax = 0, dkv = 0, dq = 0;
  for (let q0 = 0; q0 < T; q0 += 64) {
    const nkt = Math.floor((Math.min(q0 + 64, T) - 1) / 32) + 1; // forward: 64 rows x 32 keys
    fwd += nkt;
    fwdMax = Math.max(fwdMax, nkt);
  }
  const nt = cdiv(T, 32);
  for (let kt = 0; kt < nt; kt++) dkv += nt - kt; // dK/dV: query tiles from the key tile on
  for (let qt = 0; qt < nt; qt++) dq += qt + 1; // dQ: key tiles up to the diagonal
  return { fwd, fwdMax, dkv, dq, bwdMax: nt };
}

function attentionForward(a: Record<string, number>, inBytes: number): Launch[] {
  const s = attnShape(a);
  const p = attnCorePairs(s.T);
  const perPair = 64 * 32 * (4 * s.D + EXP + 4); // QK^T + PV + exp + softmax bookkeeping
  return [
    launch(
      "attention_forward_kernel",
      cdiv(s.T, 64) * s.H * s.B,
      256,
      3 * s.elems * inBytes,
      s.elems * F32 + s.rows * F32,
      s.B * s.H * p.fwd * perPair,
      0,
      p.fwdMax,
    ),
  ];
}
function attentionBackward(a: Record<string, number>, inBytes: number): Launch[] {
  const s = attnShape(a);
  const p = attnCorePairs(s.T);
  const qkv = 3 * s.elems * inBytes, act = s.elems * F32, vec = s.rows * F32;
  const grid = cdiv(s.T, 32) * s.H * s.B;
  return [
    launch("attention_delta_kernel", cdiv(s.rows, 8), 256, 2 * act, vec, 2 * s.elems),
    launch(
      "attention_backward_dkv_kernel",
      grid,
      256,
      qkv + act + 2 * vec + (acc(a, 1) + acc(a, 2)) * act, // q, k, v; dout; lse, Delta; dk, dv (+=)
      2 * act,
      s.B * s.H * p.dkv * 32 * 32 * (8 * s.D + EXP + 4),
      0,
      p.bwdMax,
    ),
    launch(
      "attention_backward_dq_kernel",
      grid,
      256,
      qkv + act + 2 * vec + acc(a, 0) * act, // q, k, v; dout; lse, Delta; dq (+=)
      act,
      s.B * s.H * p.dq * 32 * 32 * (6 * s.D + EXP + 4),
      0,
      p.bwdMax,
    ),
  ];
}

// ---- WKV-6 (wkv6.cu) ----------------------------------------------------------------------------
// Every kernel grid (H, B), block N, t walked in order (T serial steps); inputs r, k, v, w
// [B,T,H,N] in `inBytes`, u [H,N] fp32.
function wkv6Shape(a: Record<string, number>) {
  const B = need(a, "B"), T = need(a, "T"), H = need(a, "H"), N = need(a, "N");
  return { B, T, H, N, elems: B * T * H * N, u: H * N * F32 };
}
// wkv6_forward_kernel: per step and thread: bonus sum N, y dot 2N, state update 3N; 2 exps
function wkv6Forward(a: Record<string, number>, inBytes: number): Launch[] {
  const { B, T, H, N, elems, u } = wkv6Shape(a);
  return [
    launch(
      "wkv6_forward_kernel",
      H * B,
      N,
      4 * elems * inBytes + u,
      elems * F32,
      B * H * T * N * (6 * N + 2 * EXP),
      0,
      T,
    ),
  ];
}
// wkv6_backward: wkv6_backward_scan_kernel (forward scan: dr, c_t -> ws, du partials -> ws),
// wkv6_backward_dkdw_kernel (reverse: reads c_t; dk, dw), wkv6_backward_dv_kernel (reverse:
// dv), wkv6_du_reduce_kernel (grid (H), block N: sums the B partials in order; du). Each gradient
// += (read) or = by its bit of accumulate.
function wkv6Backward(a: Record<string, number>, inBytes: number): Launch[] {
  const { B, T, H, N, elems, u } = wkv6Shape(a);
  const act = elems * F32, part = B * H * N * F32, steps = B * H * T * N;
  // at N = 128 dk, dw (bits 1, 3) share one compile-time flag: when they differ the overwritten
  // one is zero-filled first and both are added into
  const mixed = N === 128 && acc(a, 1) !== acc(a, 3);
  const dkdwRead = mixed ? 2 : acc(a, 1) + acc(a, 3);
  return [
    ...(mixed ? [elementwise("ew_fill_kernel", elems, 0, act, 0)] : []),
    launch(
      "wkv6_backward_scan_kernel",
      H * B,
      N,
      act + 4 * elems * inBytes + u + acc(a, 0) * act, // dy; r, k, v, w; u; dr
      act + act + part, // dr; c_t; du partials
      steps * (7 * N + 2 * EXP),
      0,
      T,
    ),
    launch(
      "wkv6_backward_dkdw_kernel",
      H * B,
      N,
      act + act + 4 * elems * inBytes + u + dkdwRead * act, // c_t; dy; r, k, v, w; u; dk, dw
      2 * act,
      steps * (7 * N + 3 * EXP),
      0,
      T,
    ),
    launch(
      "wkv6_backward_dv_kernel",
      H * B,
      N,
      act + 3 * elems * inBytes + u + acc(a, 2) * act, // dy; r, k, w; u; dv
      act,
      steps * (6 * N + 2 * EXP),
      0,
      T,
    ),
    launch("wkv6_du_reduce_kernel", H, N, part + acc(a, 4) * u, u, B * H * N, 0, B),
  ];
}

// ---- rotary (rotary.cu) -------------------------------------------------------------------------
// rotary_kernel<false/true>: one thread per (row, i < D/2) pair, mn_blocks_for(B*T*H*D/2, 256);
// cos/sin recomputed per pair (powf, cosf, sinf: ~3 EXP). Backward: dx += (read) or = (not).
function rotary(a: Record<string, number>, backward: boolean): Launch[] {
  const B = need(a, "B"), T = need(a, "T"), H = need(a, "H"), D = need(a, "D");
  const pairs = B * T * H * Math.floor(D / 2);
  const act = B * T * H * D * F32;
  return [
    launch(
      "rotary_kernel",
      blocksFor(pairs, 256),
      256,
      backward ? (1 + acc(a, 0)) * act : act,
      act,
      pairs * (3 * EXP + 6),
    ),
  ];
}

// ---- tensor-core wrappers (mma.cu) --------------------------------------------------------------
// mma_selftest_kernel: grid (N/8, M/16), one warp per 16x8 tile of D
const mmaSelftest: Cost = (a) => {
  const M = need(a, "M"), N = need(a, "N"), K = need(a, "K");
  return [
    launch(
      "mma_selftest_kernel",
      Math.floor(N / 8) * Math.floor(M / 16),
      32,
      M * K * BF16 + K * N * BF16 + M * N * F32,
      M * N * F32,
      0,
      2 * M * N * K,
    ),
  ];
};
// mma_fragment_map_kernel: one warp; writes lane_rows, lane_cols int32 [32][4][2]
const mmaFragmentMap: Cost = () => [
  launch("mma_fragment_map_kernel", 1, 32, 0, 2 * 32 * 4 * 2 * F32, 0),
];

// ---- WKV-7 wind (wkv7_wind.cu): tensor-core chunk-16 --------------------------------------------
// wind_forward_kernel / wind_backward_kernel: grid (H, B), block 2N (N/16 warps); the chunks of a
// (b, h) are walked in order: T/16 serial steps. Tensor-core FLOPs per chunk, from the mm_acc
// calls: forward 4 products of 16*N*N multiply-adds each (As S0^T, Rs S0^T: [16 x N] outputs,
// K = N; U^T Be, V^T Ke: [N x N] outputs, K = 16: 4 x 32 N^2 FLOPs) and 7 of 16*16*N (AB, AK, QB,
// QK, AK V, QB U, QK V: 7 x 512 N); backward 8 of the first kind (256 N^2) and 19 of the second
// (19 x 512 N), counted from the mm_acc calls of wind_backward_kernel. CUDA-core work
// (the 16x16 solve, decays, element-wise scalings) is a rough estimate.
function windShape(a: Record<string, number>) {
  const s = wkv7Shape(a);
  return { ...s, nc: s.T / 16 };
}
const wkv7WindForward: Cost = (a) => {
  const { B, H, N, elems, ckpt, nc } = windShape(a);
  const chunks = B * H * nc;
  return [
    launch(
      "wind_forward_kernel",
      H * B,
      2 * N,
      6 * elems * BF16,
      2 * elems * F32 + ckpt, // y, sa, s_ckpt
      chunks * (N * N + 1000 * N),
      chunks * (128 * N * N + 3584 * N),
      nc,
    ),
  ];
};
const wkv7WindBackward: Cost = (a) => {
  const { B, H, N, elems, nc } = windShape(a);
  const chunks = B * H * nc;
  const ckptRead = B * H * Math.max(nc - 1, 0) * N * N * F32; // S0 of chunk c = s_ckpt[c-1]
  const grads = wkv7GradBytes(a, elems);
  return [
    launch(
      "wind_backward_kernel",
      H * B,
      2 * N,
      6 * elems * BF16 + 2 * elems * F32 + ckptRead + grads.added, // + grads +=
      grads.written,
      chunks * (2 * N * N + 3000 * N),
      chunks * (256 * N * N + 9728 * N),
      nc,
    ),
  ];
};

// ---- WKV-6 chunked (wkv6_chunked.cu) ------------------------------------------------------------
// NC = ceil(T/16) chunks. wkv6c_state_kernel / wkv6c_dstate_kernel: grid (H, B), block N, chunks
// in order (NC serial steps); wkv6c_output_kernel / wkv6c_grads_kernel: grid (NC, H, B), block N;
// du: col_sums<1, Wkv6cDuTerm> over the [B*NC, H*N] partials (colSums). CUDA-core FLOPs are
// estimates.
function wkv6cShape(a: Record<string, number>) {
  const s = wkv6Shape(a);
  const NC = cdiv(s.T, 16);
  const ckpt = s.B * s.H * NC * s.N * s.N * F32; // s_ckpt / ds_ckpt [B,H,NC,N,N]
  const lastLen = s.T - (NC - 1) * 16;
  return { ...s, NC, ckpt, lastLen };
}
// mn_wkv6_chunked_forward: wkv6c_state_kernel (reads k, v, w of every chunk but the last, writes
// all NC checkpoints), then wkv6c_output_kernel (reads checkpoints of chunks > 0, r, k, v, w, u;
// writes y).
const wkv6ChunkedForward: Cost = (a) => {
  const { B, T, H, N, NC, ckpt, lastLen, u, elems } = wkv6cShape(a);
  const scanned = B * (T - lastLen) * H * N; // elements of the chunks the state scan consumes
  const pair = 120 * N * (3 + EXP) + 16 * N * 2; // strict pairs with an exp, plus the diagonal
  return [
    launch(
      "wkv6c_state_kernel",
      H * B,
      N,
      3 * scanned * BF16,
      ckpt,
      B * H * (NC - 1) * N * (33 * N + 3 * 16 * EXP),
      0,
      NC,
    ),
    launch(
      "wkv6c_output_kernel",
      NC * H * B,
      N,
      ckpt * (NC - 1) / NC + 4 * elems * BF16 + u,
      elems * F32,
      B * H * NC * (pair + N * (32 * N + 272 + 16 * (2 + EXP))),
    ),
  ];
};
// mn_wkv6_chunked_backward: wkv6c_dstate_kernel (reads dy, r, w of chunks > 0, writes all NC
// state-gradient checkpoints into ws), wkv6c_grads_kernel (reads dy, r, k, v, w, u, s_ckpt of
// chunks > 0 and ds_ckpt of chunks < NC-1; dr, dk, dv, dw += or =; writes the du partials into
// ws), then du by the column sums of the B*NC partial rows (du += or =).
const wkv6ChunkedBackward: Cost = (a) => {
  const { B, T, H, N, NC, ckpt, u, elems } = wkv6cShape(a);
  const scanned = B * (T - Math.min(16, T)) * H * N; // chunks 1 .. NC-1
  const act = elems * F32, part = B * H * NC * N * F32;
  const pair = 120 * N * (3 + EXP) + 136 * 2 * N;
  return [
    launch(
      "wkv6c_dstate_kernel",
      H * B,
      N,
      scanned * F32 + 2 * scanned * BF16,
      ckpt,
      B * H * (NC - 1) * N * (33 * N + 3 * 16 * EXP),
      0,
      NC,
    ),
    launch(
      "wkv6c_grads_kernel",
      NC * H * B,
      N,
      // dy; r, k, v, w; u; S0, Gc; dr, dk, dv, dw (+=)
      act + 4 * elems * BF16 + u + 2 * ckpt * (NC - 1) / NC + accCount(a, 4) * act,
      4 * act + part,
      B * H * NC * (pair + N * (96 * N + 12000)),
    ),
    ...colSums("Wkv6cDuTerm", 1, B * NC, H * N, part, 0, B * H * NC * N, acc(a, 4)),
  ];
};

// ---- causal attention on tensor cores (attention_tc.cu) -----------------------------------------
// Forward and dQ: grid (ceil(T/64), H, B) x 128; dK/dV: grid (ceil(T/64), H, B) x 128;
// attention_tc_delta_kernel: ceil(B*T*H/4) x 128. Warps skip the 16-row blocks the causal mask
// empties, so per (b, h) the mma work is over the pairs (query block >= key block) of 16-blocks:
// nb (nb + 1) / 2 with nb = ceil(T/16), each pair a 16 x 16 x D product per matrix product: 2 in
// the forward (S, P V), 4 in dK/dV (S^T, dP^T, dV, dK), 3 in dQ (S, dP, dQ). Bytes as attention.cu.
function attnTcPairs(T: number) {
  const nb = cdiv(T, 16);
  return nb * (nb + 1) / 2;
}
// outBytes: out (forward) and dout, out (backward) are fp32, or bf16 in the _bf16 entry points
const attentionTcForward = (outBytes: number): Cost => (a) => {
  const s = attnShape(a);
  const pairs = s.B * s.H * attnTcPairs(s.T);
  const mm = 2 * 16 * 16 * s.D; // one 16x16xD product
  return [
    launch(
      "attention_tc_forward_kernel",
      cdiv(s.T, 64) * s.H * s.B,
      128,
      3 * s.elems * BF16,
      s.elems * outBytes + s.rows * F32,
      pairs * 256 * (EXP + 4),
      pairs * 2 * mm,
      cdiv(s.T, 64),
    ),
  ];
};
const attentionTcBackward = (outBytes: number): Cost => (a) => {
  const s = attnShape(a);
  const pairs = s.B * s.H * attnTcPairs(s.T);
  const mm = 2 * 16 * 16 * s.D;
  const qkv = 3 * s.elems * BF16, vec = s.rows * F32;
  const act = s.elems * (a.grads_bf16 ? BF16 : F32); // dq, dk, dv (bf16 only overwritten)
  const io = s.elems * outBytes; // dout, out
  const grid = cdiv(s.T, 64) * s.H * s.B;
  return [
    launch("attention_tc_delta_kernel", cdiv(s.rows, 4), 128, 2 * io, vec, 3 * s.elems),
    launch(
      "attention_tc_backward_dkv_kernel",
      grid,
      128,
      qkv + io + 2 * vec + (acc(a, 1) + acc(a, 2)) * act, // q, k, v; dout; lse, Delta; dk, dv
      2 * act,
      pairs * 256 * (EXP + 4),
      pairs * 4 * mm,
      cdiv(s.T, 64),
    ),
    launch(
      "attention_tc_backward_dq_kernel",
      grid,
      128,
      qkv + io + 2 * vec + acc(a, 0) * act, // q, k, v; dout; lse, Delta; dq (+=)
      act,
      pairs * 256 * (EXP + 4),
      pairs * 3 * mm,
      cdiv(s.T, 64),
    ),
  ];
};

// ---- the table ----------------------------------------------------------------------------------
const TABLE: Record<string, Cost> = {
  // runtime (runtime_cuda.cu): host-side calls; copies and syncs are in hostTransfer
  mn_backend_name: host,
  mn_last_error: host,
  mn_device_count: host,
  mn_device_name: host,
  mn_set_device: host,
  mn_malloc: host,
  mn_free: host,
  mn_memcpy_h2d: host,
  mn_memcpy_d2h: host,
  mn_memcpy_d2d: memcpyD2d,
  mn_memset: memset,
  mn_stream_create: host,
  mn_stream_destroy: host,
  mn_synchronize: host,
  mn_mem_get_info: host,
  mn_host_alloc: host,
  mn_host_free: host,
  mn_event_create: host,
  mn_event_destroy: host,
  mn_event_record: host,
  mn_event_synchronize: host,
  mn_stream_wait_event: host,
  mn_graph_begin_capture: host,
  mn_graph_end_capture: host,
  mn_graph_launch: host,
  mn_graph_destroy: host,
  // matmul (gemm.cu)
  mn_gemm_init: host,
  mn_gemm_provider: host,
  mn_gemm_bf16: gemmBf16,
  mn_gemm_f32: gemmF32,
  // cast.cu
  mn_cast_f32_to_bf16: castF32ToBf16,
  mn_cast_bf16_to_f32: castBf16ToF32,
  mn_copy_columns: copyColumns,
  // transpose.cu
  mn_transpose: transpose,
  // embedding.cu
  mn_embedding_forward: embeddingForward,
  mn_embedding_backward: embeddingBackward,
  // norm.cu
  mn_layernorm_forward: layernormForward(F32),
  mn_layernorm_forward_bf16: layernormForward(BF16),
  mn_add_layernorm_forward: addLayernormForward,
  mn_mix_layernorm_forward: mixLayernormForward,
  mn_layernorm_backward: layernormBackward(F32),
  mn_layernorm_backward_bf16: layernormBackward(BF16),
  mn_mix_layernorm_backward: mixLayernormBackward,
  mn_rmsnorm_forward: rmsnormForward,
  mn_rmsnorm_backward: rmsnormBackward,
  // elementwise.cu
  mn_relu2_forward: relu2Forward,
  mn_relu2_backward: relu2Backward,
  mn_axpby_forward: axpbyForward,
  mn_axpby_backward: axpbyBackward,
  mn_add: add,
  mn_axpy: axpy,
  mn_scale: scale,
  mn_fill: fill,
  mn_sum_squares: sumSquares,
  // crossentropy.cu
  mn_softcap_crossentropy: softcapCrossentropy(F32),
  mn_softcap_crossentropy_bf16: softcapCrossentropy(BF16),
  // adam.cu
  mn_adam_step: adamStep,
  mn_adam_multi_step: adamMultiStep,
  mn_adam_multi_step_dev: (a) =>
    adamMultiStep(a).map((l) => ({ ...l, kernel: "adam_multi_step_dev_kernel" })),
  // scalars.cu
  mn_sum_into: sumInto,
  mn_scale_by_inv_norm: scaleByInvNorm,
  // modelops.cu
  mn_unary_forward: unaryForward,
  mn_unary_backward: unaryBackward,
  mn_unary_forward_bf16: unaryForwardBf16,
  mn_unary_backward_bf16: unaryBackwardBf16,
  mn_mul_forward: mulForward,
  mn_mul_backward: mulBackward,
  mn_lerp_forward: lerpForward,
  mn_lerp_backward: lerpBackward,
  mn_add_row_vector_forward: rowVectorForward,
  mn_add_row_vector_backward: addRowVectorBackward,
  mn_mul_row_vector_forward: rowVectorForward,
  mn_mul_row_vector_backward: mulRowVectorBackward,
  mn_time_shift_forward: timeShiftForward,
  mn_time_shift_backward: timeShiftBackward,
  mn_l2norm_forward: l2normForward,
  mn_l2norm_backward: l2normBackward,
  mn_groupnorm_forward: groupnormForward,
  mn_groupnorm_backward: groupnormBackward,
  mn_rwkv7_bonus_forward: rwkv7BonusForward,
  mn_rwkv7_bonus_backward: rwkv7BonusBackward,
  // rwkv7_fused.cu
  mn_rwkv7_mix_x_forward: rwkv7MixXForward,
  mn_rwkv7_mix_x_backward: rwkv7MixXBackward,
  mn_rwkv7_mix4_forward: rwkv7Mix4Forward,
  mn_rwkv7_mix4_backward: rwkv7Mix4Backward,
  mn_rwkv7_wkv_inputs_forward: rwkv7WkvInputsForward,
  mn_rwkv7_wkv_inputs_backward: rwkv7WkvInputsBackward,
  mn_rwkv7_gn_bonus_gate_forward: rwkv7GnBonusGateForward,
  mn_rwkv7_gn_bonus_gate_backward: rwkv7GnBonusGateBackward,
  mn_rwkv7_value_mix_forward: rwkv7ValueMixForward,
  mn_rwkv7_value_mix_backward: rwkv7ValueMixBackward,
  mn_rwkv6_mix5_forward: rwkv6Mix5Forward,
  mn_rwkv6_mix5_backward: rwkv6Mix5Backward,
  mn_rwkv6_decay_k_forward: rwkv6DecayKForward,
  mn_rwkv6_decay_k_backward: rwkv6DecayKBackward,
  mn_rwkv6_gn_gate_forward: rwkv6GnGateForward,
  mn_rwkv6_gn_gate_backward: rwkv6GnGateBackward,
  // wkv7.cu
  mn_wkv7_forward: (a) => wkv7Forward(a, BF16, true),
  mn_wkv7_backward: wkv7Backward,
  mn_wkv7g_forward: (a) => wkv7Forward(a, BF16, false),
  mn_wkv7g_backward: (a) => wkv7gBackward(a, BF16),
  mn_wkv7g_forward_f32: (a) => wkv7Forward(a, F32, false),
  mn_wkv7g_backward_f32: (a) => wkv7gBackward(a, F32),
  // attention.cu
  mn_attention_forward: (a) => attentionForward(a, BF16),
  mn_attention_backward: (a) => attentionBackward(a, BF16),
  mn_attention_forward_f32: (a) => attentionForward(a, F32),
  mn_attention_backward_f32: (a) => attentionBackward(a, F32),
  // wkv6.cu
  mn_wkv6_forward: (a) => wkv6Forward(a, BF16),
  mn_wkv6_backward: (a) => wkv6Backward(a, BF16),
  mn_wkv6_forward_f32: (a) => wkv6Forward(a, F32),
  mn_wkv6_backward_f32: (a) => wkv6Backward(a, F32),
  // rotary.cu
  mn_rotary_forward: (a) => rotary(a, false),
  mn_rotary_backward: (a) => rotary(a, true),
  // mma.cu
  mn_mma_selftest: mmaSelftest,
  mn_mma_fragment_map: mmaFragmentMap,
  // wkv7_wind.cu
  mn_wkv7_wind_forward: wkv7WindForward,
  mn_wkv7_wind_backward: wkv7WindBackward,
  // wkv6_chunked.cu (mn_wkv6_chunked_sizes is host arithmetic)
  mn_wkv6_chunked_sizes: host,
  mn_wkv6_chunked_forward: wkv6ChunkedForward,
  mn_wkv6_chunked_backward: wkv6ChunkedBackward,
  // attention_tc.cu
  mn_attention_tc_forward: attentionTcForward(F32),
  mn_attention_tc_backward: attentionTcBackward(F32),
  mn_attention_tc_forward_bf16: attentionTcForward(BF16),
  mn_attention_tc_backward_bf16: attentionTcBackward(BF16),
  // gpt2_fused.cu
  mn_mix_rmsnorm_forward: mixRmsnormForward,
  mn_mix_rmsnorm_backward: mixRmsnormBackward,
  mn_qk_rmsnorm_rotary_forward: qkRmsnormRotary(false),
  mn_qk_rmsnorm_rotary_backward: qkRmsnormRotary(true),
  mn_value_mix_forward: valueMixForward,
  mn_value_mix_backward: valueMixBackward,
  mn_relu2_forward_bf16: (a) => {
    const n = need(a, "n");
    return [elementwise("relu2_forward_bf16_kernel", n, n * F32, n * BF16, 2)];
  },
  mn_relu2_forward_bf16io: (a) => {
    const n = need(a, "n");
    return [elementwise("relu2_forward_bf16io_kernel", n, n * BF16, n * BF16, 2)];
  },
  // accumulate must be 0 (a bf16 dinp is only overwritten)
  mn_relu2_backward_bf16io: (a) => {
    const n = need(a, "n");
    return [elementwise("relu2_backward_bf16io_kernel", n, 2 * n * BF16, n * BF16, 3)];
  },
};

/** The ABI functions this table covers; a test checks it equals every function of kernels.h. */
export const COSTED_FUNCTIONS: readonly string[] = Object.freeze(Object.keys(TABLE));

/** What an ABI call costs on the cuda backend; [] for host-only calls (names, sizes, errors,
 * stream/device management). `a` maps each parameter name of cuda/kernels.h to its value: numbers
 * for int/int64_t/float/double parameters, and for pointers the device address (0 = NULL). */
export function callLaunches(fn: string, a: Record<string, number>): Launch[] {
  const cost = TABLE[fn];
  if (!cost) throw new Error(`cost_model: no cost for ${fn} (add it to cuda/cost_model.ts)`);
  return cost(a);
}

/** Host<->device copies and synchronizations of a call, counted by the tool separately; null for
 * calls with neither. */
export function hostTransfer(
  fn: string,
  a: Record<string, number>,
): { h2d: number; d2h: number; sync: boolean } | null {
  switch (fn) {
    // cudaMemcpyAsync: from pinned memory (a step's inputs, cuda/step.ts) a DMA the host does not
    // wait for; from pageable memory (uploads outside the step) it returns once the source has been
    // staged. Neither waits for earlier work on the stream: sync = false.
    case "mn_memcpy_h2d":
      return { h2d: need(a, "bytes"), d2h: 0, sync: false };
    // cudaMemcpyAsync + cudaStreamSynchronize
    case "mn_memcpy_d2h":
      return { h2d: 0, d2h: need(a, "bytes"), sync: true };
    // cudaStreamSynchronize / cudaDeviceSynchronize. (Not mn_event_synchronize: StepInputs waits
    // there for the copy of two steps before, which bounds the host's lead to a step and does not
    // drain the queue.)
    case "mn_synchronize":
      return { h2d: 0, d2h: 0, sync: true };
    // cudaFree synchronizes the device implicitly (CUDA runtime documentation)
    case "mn_free":
      return { h2d: 0, d2h: 0, sync: true };
    default:
      return null;
  }
}
