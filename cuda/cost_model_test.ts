// Tests of the cost model table (cuda/cost_model.ts): it covers every ABI function, and at record
// shapes a handful of calls give the grids and bytes derived by hand below from the .cu launch
// code, so a change to a kernel's launch shape has to update the model with it.
import assert from "node:assert/strict";
import { kernelsHeaderFunctions } from "./abi.ts";
import { callLaunches, COSTED_FUNCTIONS, hostTransfer, type Launch } from "./cost_model.ts";

const ROWS = 32768; // B*T of the RWKV record (32 x 1024)
const C = 768;

Deno.test("cost model: COSTED_FUNCTIONS is exactly the functions of kernels.h", () => {
  const header = kernelsHeaderFunctions().map((f) => f.name).sort();
  assert.deepEqual([...COSTED_FUNCTIONS].sort(), header);
  assert.equal(new Set(COSTED_FUNCTIONS).size, COSTED_FUNCTIONS.length);
});

// Small valid arguments for every parameter name of the header: pointers non-NULL (1).
const SMALL: Record<string, number> = {
  B: 2,
  T: 64,
  H: 2,
  N: 64,
  D: 64,
  C: 64,
  G: 2,
  V: 128,
  M: 64,
  K: 64,
  R: 32,
  n: 4096,
  accumulate: -1,
  count: 3,
  total_n: 4096,
  bytes: 1024,
  batch: 2,
  op: 1,
  which: 0,
  step: 1,
  len: 16,
  device: 0,
  byte_value: 0,
  trans_a: 0,
  trans_b: 0,
  lda: 64,
  ldb: 64,
  ldc: 64,
  stride_a: 4096,
  stride_b: 4096,
  stride_c: 4096,
  c_bf16: 0,
  alpha: 1,
  beta: 0,
  eps: 1e-5,
  lr: 1e-3,
  beta1: 0.9,
  beta2: 0.95,
  weight_decay: 0,
  softcap: 30,
  dloss: 1,
  value: 0,
  out_bf16: 1,
  m_bf16: 1,
  dm_bf16: 1,
  in_bf16: 1,
  grad_bf16: 1,
  gate_bf16: 1,
  dgate_bf16: 1,
  mv_bf16: 1,
  dmv_bf16: 1,
  x_bf16: 1,
  dx_bf16: 1,
  v_bf16: 1,
  dv_bf16: 1,
  dout_bf16: 1,
  grads_bf16: 1,
  ld_x: 256,
  ld_v: 96,
  ld_dv: 96,
  branch_bf16: 1,
  r_bf16: 1,
  y_bf16: 1,
  dr_bf16: 1,
  dy_bf16: 1,
  dnorm_bf16: 1,
  dwab_bf16: 1,
  dk_bf16: 1,
  drkv_bf16: 1,
  rows: 64,
  cols: 16,
  ld_dst: 96,
  ld_src: 16,
  dst_bf16: 0,
  src_bf16: 0,
};

function argsFor(params: { type: string; name: string }[]): Record<string, number> {
  const a: Record<string, number> = {};
  for (const p of params) {
    if (p.type === "pointer" || p.type === "buffer") a[p.name] = 1;
    else {
      assert.ok(p.name in SMALL, `test: no small value for parameter ${p.name}`);
      a[p.name] = SMALL[p.name];
    }
  }
  return a;
}

function checkLaunch(fn: string, l: Launch) {
  assert.ok(l.kernel.length > 0, fn);
  assert.ok(Number.isInteger(l.blocks) && l.blocks >= 1, `${fn} ${l.kernel}: blocks ${l.blocks}`);
  assert.ok(
    Number.isInteger(l.threads) && l.threads >= 1 && l.threads <= 1024,
    `${fn} ${l.kernel}: threads ${l.threads}`,
  );
  for (const k of ["bytesRead", "bytesWritten", "tcFlops", "fp32Flops"] as const) {
    assert.ok(Number.isFinite(l[k]) && l[k] >= 0, `${fn} ${l.kernel}: ${k} = ${l[k]}`);
  }
  if (l.serialSteps !== undefined) assert.ok(l.serialSteps >= 1, `${fn}: serialSteps`);
}

Deno.test("cost model: every function gives well-formed launches at small shapes", () => {
  const hostOnly = new Set([
    "mn_backend_name",
    "mn_last_error",
    "mn_device_count",
    "mn_device_name",
    "mn_set_device",
    "mn_malloc",
    "mn_free",
    "mn_memcpy_h2d",
    "mn_memcpy_d2h",
    "mn_stream_create",
    "mn_stream_destroy",
    "mn_synchronize",
    "mn_mem_get_info",
    "mn_host_alloc",
    "mn_host_free",
    "mn_event_create",
    "mn_event_destroy",
    "mn_event_record",
    "mn_event_synchronize",
    "mn_stream_wait_event",
    "mn_graph_begin_capture",
    "mn_graph_end_capture",
    // a replay's kernels are the captured calls, priced where the trace recorded them
    "mn_graph_launch",
    "mn_graph_destroy",
    "mn_gemm_init",
    "mn_gemm_provider",
    "mn_wkv6_chunked_sizes",
  ]);
  for (const f of kernelsHeaderFunctions()) {
    const launches = callLaunches(f.name, argsFor(f.params));
    if (hostOnly.has(f.name)) assert.deepEqual(launches, [], f.name);
    else assert.ok(launches.length >= 1, `${f.name}: no launch`);
    for (const l of launches) checkLaunch(f.name, l);
  }
  assert.throws(() => callLaunches("mn_no_such_function", {}), /no cost/);
});

Deno.test("cost model: host transfers and syncs", () => {
  assert.deepEqual(hostTransfer("mn_memcpy_h2d", { bytes: 1000 }), {
    h2d: 1000,
    d2h: 0,
    sync: false,
  });
  assert.deepEqual(hostTransfer("mn_memcpy_d2h", { bytes: 64 }), { h2d: 0, d2h: 64, sync: true });
  assert.deepEqual(hostTransfer("mn_synchronize", { stream: 0 }), { h2d: 0, d2h: 0, sync: true });
  assert.equal(hostTransfer("mn_add", { n: 10 }), null);
  assert.deepEqual(callLaunches("mn_memcpy_d2h", { bytes: 64 }), []);
  const [set] = callLaunches("mn_memset", { bytes: 4096, byte_value: 0 });
  assert.equal(set.kernel, "memset");
  assert.equal(set.bytesWritten, 4096);
  assert.equal(set.bytesRead, 0);
  const [cp] = callLaunches("mn_memcpy_d2d", { bytes: 4096 });
  assert.deepEqual([cp.bytesRead, cp.bytesWritten], [4096, 4096]);
});

Deno.test("cost model: mn_add at 32768 x 768", () => {
  // elementwise.cu EW_LAUNCH: mn_blocks_for(n, 256) x 256; n = 25,165,824 -> 98,304 blocks (below
  // the 65535*16 clamp). Reads x and y (2 * 4n = 201,326,592), writes out (4n = 100,663,296).
  const n = ROWS * C;
  const [l] = callLaunches("mn_add", { n, out: 1, x: 2, y: 3 });
  assert.equal(l.kernel, "ew_add_kernel");
  assert.equal(l.blocks, 98304);
  assert.equal(l.threads, 256);
  assert.equal(l.bytesRead, 201326592);
  assert.equal(l.bytesWritten, 100663296);
});

Deno.test("cost model: mn_copy_columns, matmulShared's blocks at 32768 rows", () => {
  // cast.cu copy_columns_launch: mn_blocks_for(rows * cols, 256) x 256 over the block only.
  // The decay LoRA's gradient gathered into the bf16 [N, 96] operand: 32768 x 64 = 2,097,152
  // elements -> 8192 blocks; reads 4 bytes, writes 2 per element (the row stride is free).
  const gather = { dst: 1, ld_dst: 96, dst_bf16: 1, src: 2, ld_src: 64, src_bf16: 0 };
  const [l] = callLaunches("mn_copy_columns", { ...gather, rows: ROWS, cols: 64, accumulate: 0 });
  assert.equal(l.kernel, "copy_columns_kernel");
  assert.equal(l.blocks, 8192);
  assert.equal(l.bytesRead, 8388608);
  assert.equal(l.bytesWritten, 4194304);
  // a weight's block of dW [768, 96] added into its fp32 gradient [768, 16]: dst read as well
  const add = { dst: 1, ld_dst: 16, dst_bf16: 0, src: 2, ld_src: 96, src_bf16: 0 };
  const [a] = callLaunches("mn_copy_columns", { ...add, rows: C, cols: 16, accumulate: 1 });
  assert.equal(a.blocks, 48);
  assert.equal(a.bytesRead, 2 * C * 16 * 4);
  assert.equal(a.bytesWritten, C * 16 * 4);
  // overwritten (bit clear): written only; an empty block launches nothing
  const [o] = callLaunches("mn_copy_columns", { ...add, rows: C, cols: 16, accumulate: 0 });
  assert.equal(o.bytesRead, C * 16 * 4);
  assert.deepEqual(
    callLaunches("mn_copy_columns", { ...add, rows: 0, cols: 16, accumulate: 0 }),
    [],
  );
});

Deno.test("cost model: mn_gemm_bf16, the qkv linear 768 -> 2304 at 32768 rows", () => {
  // One cublasGemmStridedBatchedEx. Assumed 128x128 tiles: ceil(32768/128) * ceil(2304/128) =
  // 256 * 18 = 4608 blocks. A [32768, 768] bf16 = 50,331,648 bytes, B [768, 2304] bf16 =
  // 3,538,944: read 53,870,592. C fp32 (c_bf16 = 0) [32768, 2304] = 301,989,888 written, not read
  // (beta = 0). tcFlops = 2 * 32768 * 2304 * 768 = 115,964,116,992.
  const a = {
    trans_a: 0,
    trans_b: 0,
    M: ROWS,
    N: 3 * C,
    K: C,
    alpha: 1,
    lda: C,
    stride_a: 0,
    ldb: 3 * C,
    stride_b: 0,
    beta: 0,
    ldc: 3 * C,
    stride_c: 0,
    c_bf16: 0,
    batch: 1,
  };
  const [l] = callLaunches("mn_gemm_bf16", a);
  assert.equal(l.kernel, "cublas_gemm");
  assert.equal(l.blocks, 4608);
  assert.equal(l.threads, 256);
  assert.equal(l.bytesRead, 53870592);
  assert.equal(l.bytesWritten, 301989888);
  assert.equal(l.tcFlops, 115964116992);
  assert.equal(l.fp32Flops, 0);
  // beta != 0 reads C as well; a bf16 C is half the bytes
  const [acc] = callLaunches("mn_gemm_bf16", { ...a, beta: 1 });
  assert.equal(acc.bytesRead, 53870592 + 301989888);
  const [half] = callLaunches("mn_gemm_bf16", { ...a, c_bf16: 1 });
  assert.equal(half.bytesWritten, 150994944);
  // batched: blocks and bytes per item (strides non-zero)
  const [bat] = callLaunches("mn_gemm_bf16", {
    ...a,
    M: 64,
    N: 64,
    K: 64,
    stride_a: 4096,
    stride_b: 4096,
    stride_c: 4096,
    batch: 8,
  });
  assert.equal(bat.blocks, 8);
  assert.equal(bat.bytesRead, 8 * 2 * 64 * 64 * 2);
  // fp32 GEMM: CUDA-core FLOPs, fp32 operands
  const [f] = callLaunches("mn_gemm_f32", a); // (c_bf16 is not a parameter of mn_gemm_f32: ignored)
  assert.equal(f.tcFlops, 0);
  assert.equal(f.fp32Flops, 115964116992);
  assert.equal(f.bytesRead, 2 * 53870592);
});

Deno.test("cost model: mn_layernorm_forward and backward at N = 32768, C = 768", () => {
  // norm.cu: one block per row (32,768), norm_threads(768) = min(32 * 24, 256) = 256.
  // Reads inp [N, C] fp32 (100,663,296) + weight, bias (2 * 3072 = 6144): 100,669,440.
  // Writes out (100,663,296) + mean, rstd [N] (2 * 131,072): 100,925,440.
  const [f] = callLaunches("mn_layernorm_forward", { N: ROWS, C, eps: 1e-5 });
  assert.equal(f.kernel, "layernorm_forward_kernel");
  assert.deepEqual([f.blocks, f.threads], [32768, 256]);
  assert.equal(f.bytesRead, 100669440);
  assert.equal(f.bytesWritten, 100925440);
  // Backward, C = 768 <= 24 * 32: the fused row pass, then col_sums_finish<2>. row_tile_plan(32768,
  // 1): tiles = min(ceil(1024/1) = 1024, ceil(32768/64) = 512, 256) = 256; tile_rows = 32768/256 =
  // 128 (a multiple of 8*4): 256 blocks of 8 warps, a warp walks 128/8 = 16 rows. Reads dout, inp,
  // dinp (+=) (3 * 100,663,296) + weight 3072 + mean, rstd 262,144; writes dinp (100,663,296) + the
  // partials [256][2][768] floats (1,572,864). Stage 2 ("column_sums_finish", grid (24, 1)) reads
  // the partials and dweight, dbias (6144): 1,579,008, writes 6144; its thread walks 256/8 = 32
  // tile rows in 8 rounds of 4. 406,076,416 bytes in all (the unfused 605,047,808 less the column
  // sums' second read of dout and inp).
  const [fused, finish] = callLaunches("mn_layernorm_backward", { N: ROWS, C });
  assert.equal(fused.kernel, "layernorm_backward_fused_kernel");
  assert.deepEqual([fused.blocks, fused.threads, fused.serialSteps], [256, 256, 16]);
  assert.equal(fused.bytesRead, 3 * 100663296 + 3072 + 262144);
  assert.equal(fused.bytesWritten, 100663296 + 1572864);
  assert.equal(finish.kernel, "col_sums_kernel<2,PartialsTerm>");
  assert.deepEqual([finish.blocks, finish.threads, finish.serialSteps], [24, 256, 8]);
  assert.equal(finish.bytesRead, 1579008);
  assert.equal(finish.bytesWritten, 6144);
  const total = [fused, finish].reduce((t, l) => t + l.bytesRead + l.bytesWritten, 0);
  assert.equal(total, 406076416);
  // bf16 dout with dinp, dweight overwritten (accumulate = 4: dbias added): dout 50,331,648 read
  // instead of 100,663,296, dinp not read; stage 2 reads dbias only.
  const [f16, fin16] = callLaunches("mn_layernorm_backward_bf16", { N: ROWS, C, accumulate: 4 });
  assert.equal(f16.bytesRead, 50331648 + 100663296 + 3072 + 262144);
  assert.equal(fin16.bytesRead, 1572864 + 3072);
  // C = 1000 > 768: the block-per-row dinp kernel and the two-stage column sums, as before.
  const wide = callLaunches("mn_layernorm_backward", { N: ROWS, C: 1000 });
  assert.deepEqual(wide.map((l) => l.kernel), [
    "layernorm_backward_dinp_kernel",
    "col_sums_kernel<2,LayerNormParamTerm>",
    "col_sums_kernel<2,PartialsTerm>",
  ]);
  // one row tile (N <= 64): the fused kernel writes dweight, dbias itself (reading them: +=)
  const small = callLaunches("mn_layernorm_backward", { N: 64, C });
  assert.deepEqual(small.map((l) => [l.kernel, l.blocks, l.serialSteps]), [
    ["layernorm_backward_fused_kernel", 1, 8],
  ]);
  assert.equal(small[0].bytesRead, 3 * 64 * C * 4 + C * 4 + 2 * 64 * 4 + 2 * C * 4);
  assert.equal(small[0].bytesWritten, 64 * C * 4 + 2 * C * 4);
});

Deno.test("cost model: mn_mix_layernorm_backward at N = 32768, C = 768", () => {
  // norm.cu: row_tile_plan(32768, 1): tiles = min(1024, ceil(32768/64) = 512, 256) = 256,
  // tile_rows = 128 (a multiple of 32), so 256 blocks of 8 warps; a warp walks 128/8 = 16 rows,
  // two load rounds each: 32 serial steps. As the tape calls it (a later block): ds in place over
  // g_in, ds_bf16 for the branch, dx0 and the parameter gradients added into (accumulate 0x7c).
  // Reads dout, g_in, x_out, x, branch, x0 and dx0 (7 * 100,663,296 = 704,643,072) + weight 3072
  // + mean, rstd 262,144 + a, b 8 = 704,908,296. Writes ds, dx0 (2 * 100,663,296), ds_bf16
  // (50,331,648) and the partials 256 * 2 * 769 floats (1,574,912): 253,233,152.
  const a = { N: ROWS, C, ds: 5, g_in: 5, dx0: 6, x: 7, x0: 8, accumulate: 0x7c };
  const [k, wb, ab] = callLaunches("mn_mix_layernorm_backward", a);
  assert.equal(k.kernel, "mix_layernorm_backward_kernel");
  assert.deepEqual([k.blocks, k.threads, k.serialSteps], [256, 256, 32]);
  assert.equal(k.bytesRead, 704908296);
  assert.equal(k.bytesWritten, 253233152);
  // col_sums_finish<2> over C: grid (24, 1), reads [256][2][768] partials (1,572,864) and
  // dweight, dbias (6144), writes 6144; a thread walks 256/8 = 32 tiles, 4 at a time: 8 rounds.
  assert.equal(wb.kernel, "col_sums_kernel<2,PartialsTerm>");
  assert.deepEqual([wb.blocks, wb.threads, wb.serialSteps], [24, 256, 8]);
  assert.equal(wb.bytesRead, 1572864 + 6144);
  assert.equal(wb.bytesWritten, 6144);
  // and over the one column of da, db: [256][2] partials (2048) and da, db (8)
  assert.deepEqual([ab.blocks, ab.bytesRead, ab.bytesWritten], [1, 2056, 8]);
  // the first block: no branch, x is x0 and ds is dx0 (its term added after ds's), no g_in,
  // nothing bf16: dout, x_out, x (3 * 100,663,296) and ds = dx0 read once, written once
  const [f] = callLaunches("mn_mix_layernorm_backward", {
    ...a,
    ds: 6,
    ds_bf16: 0,
    g_in: 0,
    branch: 0,
    x0: 7,
    accumulate: 0x7d,
  });
  assert.equal(f.bytesRead, 4 * 100663296 + 3072 + 262144 + 8);
  assert.equal(f.bytesWritten, 100663296 + 1574912);
});

Deno.test("cost model: mn_wkv7_forward at B = 32, T = 1024, H = 12, N = 64", () => {
  // wkv7.cu: grid (H, B) = 384 blocks of N = 64 threads, t walked in order (1024 steps).
  // B*T*H*N = 25,165,824 elements. Reads r, w, k, v, a, b bf16: 6 * 2 * 25,165,824 = 301,989,888.
  // Writes y and sa fp32 (2 * 100,663,296) and s_ckpt [B, H, T/16, N, N] fp32 =
  // 384 * 64 * 4096 * 4 = 402,653,184: 603,979,776.
  const a = { B: 32, T: 1024, H: 12, N: 64 };
  const [l] = callLaunches("mn_wkv7_forward", a);
  assert.equal(l.kernel, "wkv7_forward_kernel");
  assert.deepEqual([l.blocks, l.threads, l.serialSteps], [384, 64, 1024]);
  assert.equal(l.bytesRead, 301989888);
  assert.equal(l.bytesWritten, 603979776);
  // the recompute forward writes no sa
  const [g] = callLaunches("mn_wkv7g_forward", a);
  assert.equal(g.bytesWritten, 603979776 - 100663296);
  // backward: block N * P with P = 64/32 = 2 lanes per row
  const [bw] = callLaunches("mn_wkv7_backward", a);
  assert.deepEqual([bw.blocks, bw.threads], [384, 128]);
  // dy, sa fp32 (2 * 100,663,296); 6 bf16 inputs (301,989,888); s_ckpt (402,653,184);
  // 6 accumulated gradients read (603,979,776) and written
  assert.equal(bw.bytesRead, 201326592 + 301989888 + 402653184 + 603979776);
  assert.equal(bw.bytesWritten, 603979776);
  // the model's call: dr, dk, dv added into, dw, da, db written, all six bf16: the three added
  // read (3 * 50,331,648) and all written (6 * 50,331,648)
  for (const fn of ["mn_wkv7_backward", "mn_wkv7_wind_backward"]) {
    const m = { ...a, accumulate: 0x0d, drkv_bf16: 1, dwab_bf16: 1 };
    assert.equal(callLaunches(fn, m)[0].bytesWritten, 6 * 50331648, fn);
  }
  const [m] = callLaunches("mn_wkv7_backward", { ...a, accumulate: 0x0d, dwab_bf16: 1 });
  // dw, da, db bf16 only: dr, dk, dv fp32 added (3 * 100,663,296 read and written)
  assert.equal(m.bytesRead, 201326592 + 301989888 + 402653184 + 301989888);
  assert.equal(m.bytesWritten, 301989888 + 150994944);
});

Deno.test("cost model: the row-vector backwards at N = 32768, C = 768", () => {
  // modelops.cu row_vector_backward: dv by col_sums<1, RowVecTerm> with dx fused in; the plan of
  // [32768, 768] as for LayerNorm's parameters: grid (24, 43) = 1032 blocks of (32, 8), 24 load
  // rounds a thread, partials [43][768] floats = 132,096 bytes.
  // add, with dx: stage 1 reads dout and dx (2 * 100,663,296) = 201,326,592; writes dx and the
  // partials: 100,663,296 + 132,096 = 100,795,392. Stage 2 (grid (24, 1)) reads the partials and
  // dv [C] (3072): 135,168; writes dv: 3072.
  const [l, fin] = callLaunches("mn_add_row_vector_backward", {
    dx: 1,
    dv: 2,
    dout: 3,
    N: ROWS,
    C,
  });
  assert.equal(l.kernel, "col_sums_kernel<1,RowVecTerm>");
  assert.deepEqual([l.blocks, l.threads, l.serialSteps], [1032, 256, 24]);
  assert.equal(l.bytesRead, 201326592);
  assert.equal(l.bytesWritten, 100795392);
  assert.equal(fin.kernel, "col_sums_kernel<1,PartialsTerm>");
  assert.deepEqual([fin.blocks, fin.threads, fin.serialSteps], [24, 256, 3]);
  assert.equal(fin.bytesRead, 135168);
  assert.equal(fin.bytesWritten, 3072);
  // without dx (NULL): stage 1 reads dout only (100,663,296), writes the partials (132,096)
  const [nodx] = callLaunches("mn_add_row_vector_backward", { dx: 0, dv: 2, dout: 3, N: ROWS, C });
  assert.equal(nodx.bytesRead, 100663296);
  assert.equal(nodx.bytesWritten, 132096);
  // mul, dx and dv: stage 1 reads dout, x, dx (3 * 100,663,296) and v [C] (3072, the dx factor):
  // 301,992,960; writes dx and the partials as add: 100,795,392
  const mul = { dx: 1, dv: 2, dout: 3, x: 4, v: 5, N: ROWS, C };
  const [m] = callLaunches("mn_mul_row_vector_backward", mul);
  assert.equal(m.bytesRead, 301992960);
  assert.equal(m.bytesWritten, 100795392);
  // mul with dv NULL: row_vector_dx_kernel alone, mn_blocks_for(25,165,824, 256) = 98,304 blocks;
  // reads dout, dx and v: 201,329,664; writes dx: 100,663,296
  const dxOnly = callLaunches("mn_mul_row_vector_backward", { ...mul, dv: 0 });
  assert.deepEqual(dxOnly.map((x) => [x.kernel, x.blocks, x.bytesRead, x.bytesWritten]), [
    ["row_vector_dx_kernel", 98304, 201329664, 100663296],
  ]);
  // N = 64: ceil(64/64) = 1 tile, stage 1 adds into dv (read and written) and there is no stage 2
  const one = callLaunches("mn_add_row_vector_backward", { dx: 0, dv: 2, dout: 3, N: 64, C });
  assert.deepEqual(one.map((x) => [x.blocks, x.bytesRead, x.bytesWritten]), [
    [24, 64 * 768 * 4 + 3072, 3072],
  ]);
});

Deno.test("cost model: the GPT-2 mix + RMSNorm (gpt2_fused.cu) at N = 32768, C = 768", () => {
  const act = ROWS * C * 4; // 100,663,296 bytes of one fp32 activation
  // forward: one block of 256 per row; reads x, y and ab; writes x_out, the bf16 normed rows and
  // rstd [N]: 1.5 act + 131,072
  const fwd = { x: 1, r: 0, y: 2, out_f32: 0, out_bf16: 3, r_bf16: 0, y_bf16: 0, N: ROWS, C };
  const [f] = callLaunches("mn_mix_rmsnorm_forward", fwd);
  assert.deepEqual([f.kernel, f.blocks, f.threads, f.bytesRead, f.bytesWritten], [
    "mix_rmsnorm_forward_kernel",
    32768,
    256,
    2 * act + 8,
    1.5 * act + 131072,
  ]);
  // backward, every gradient accumulated: 1024 blocks of 32 rows read dnorm, x_out, dx_out, x, y,
  // dx, dy (7 act), rstd and ab; write dx, dy and 1024 x 2 partials; one finishing block reads
  // the partials and dab, writes dab
  const bwd = {
    ...{ dx: 4, dr: 0, dy: 5, dab: 6, dx_out: 7, x: 1, r: 0, y: 2, N: ROWS, C, accumulate: -1 },
    ...{ r_bf16: 0, y_bf16: 0, dr_bf16: 0, dy_bf16: 0, dnorm_bf16: 0 },
  };
  const b = callLaunches("mn_mix_rmsnorm_backward", bwd);
  assert.deepEqual(b.map((l) => [l.kernel, l.blocks, l.bytesRead, l.bytesWritten]), [
    ["mix_rmsnorm_backward_kernel", 1024, 7 * act + 131072 + 8, 2 * act + 8192],
    ["full_sums_kernel<2,FullPartialsTerm>", 1, 8192 + 8, 8],
  ]);
  // the residual add (no dab: x, y not read) with dx and dy overwritten (accumulate 0: not read)
  const res = callLaunches("mn_mix_rmsnorm_backward", { ...bwd, dab: 0, accumulate: 0 });
  assert.deepEqual(res.map((l) => [l.blocks, l.bytesRead, l.bytesWritten]), [
    [1024, 3 * act + 131072 + 8, 2 * act],
  ]);
  // the next block's mix with the residual add folded in: x + r (a bf16 MLP output) mixed with
  // x0; forward reads x, x0 (act each) and r (act/2)
  const folded = { ...fwd, r: 8, r_bf16: 1 };
  const [ff] = callLaunches("mn_mix_rmsnorm_forward", folded);
  assert.deepEqual([ff.bytesRead, ff.bytesWritten], [2.5 * act + 8, 1.5 * act + 131072]);
  // its backward: dr written bf16 (act/2, overwritten, not read), dx and dy overwritten; dab
  // reads x, r, y: 2.5 act beside dnorm, x_out, dx_out
  const fb = callLaunches("mn_mix_rmsnorm_backward", {
    ...bwd,
    ...{ dr: 9, r: 8, r_bf16: 1, dr_bf16: 1, accumulate: 8 },
  });
  assert.deepEqual(fb.map((l) => [l.bytesRead, l.bytesWritten]), [
    [5.5 * act + 131072 + 8, 2.5 * act + 8192],
    [8192 + 8, 8],
  ]);
  // x + att with att bf16 (y_bf16) and its gradient written bf16, dnorm bf16 (the MLP's input
  // gradient): reads dnorm (act/2), x_out, dx_out; writes dx (fp32) and dy (bf16)
  const att = callLaunches("mn_mix_rmsnorm_backward", {
    ...bwd,
    ...{ dab: 0, y_bf16: 1, dy_bf16: 1, dnorm_bf16: 1, accumulate: 0 },
  });
  assert.deepEqual(att.map((l) => [l.bytesRead, l.bytesWritten]), [
    [2.5 * act + 131072 + 8, 1.5 * act],
  ]);
});

Deno.test("cost model: full sums (axpby_backward, sum_squares) and launches that depend on NULL pointers", () => {
  // reduce.cuh full_plan(n = 32768 * 768 = 25,165,824): chunk = max(4096, ceil(n/1024) = 24,576)
  // rounded up to a multiple of 256*4 = 24,576; blocks = n / 24,576 = 1024 of 256 threads; a thread
  // walks 24,576/256 = 96 elements, 4 loads at a time: 24 rounds. Stage 2 ("full_sums_finish"):
  // one block of 256 over the 1024 partials (4 a thread: 1 round).
  const n = ROWS * C;
  // da only: axpby_backward_dadb = full_sums<1, DotTerm>: reads dout and x (2 * 100,663,296),
  // writes 1024 partials (4096); stage 2 reads them and da (+=): 4100, writes da: 4
  const only = callLaunches("mn_axpby_backward", { dx: 0, dy: 0, da: 1, db: 0, n });
  assert.deepEqual(only.map((l) => [l.kernel, l.blocks, l.threads, l.serialSteps]), [
    ["full_sums_kernel<1,DotTerm>", 1024, 256, 24],
    ["full_sums_kernel<1,FullPartialsTerm>", 1, 256, 1],
  ]);
  const onlyBytes = only.map((l) => [l.bytesRead, l.bytesWritten]);
  assert.deepEqual(onlyBytes, [[201326592, 4096], [4100, 4]]);
  // all four gradients (distinct tensors): the fused pass full_sums<2, AxpbyAllTerm> reads dout,
  // x, y, dx, dy (5 * 100,663,296) and a, b (8): 503,316,488; writes dx, dy (2 * 100,663,296) and
  // 1024 * 2 partials (8192): 201,334,784. Stage 2 reads 8192 + da, db (8), writes da, db (8).
  const all = { dx: 1, dy: 2, da: 3, db: 4, x: 5, y: 6, n };
  const fused = callLaunches("mn_axpby_backward", all);
  assert.deepEqual(fused.map((l) => [l.kernel, l.blocks, l.bytesRead, l.bytesWritten]), [
    ["full_sums_kernel<2,AxpbyAllTerm>", 1024, 503316488, 201334784],
    ["full_sums_kernel<2,FullPartialsTerm>", 1, 8200, 8],
  ]);
  // dx == dy and x == y (the first block, x = x0): AxpbyAllTerm<true> loads dout, x, dx (3 *
  // 100,663,296) + a, b and stores dx once: 301,989,896 read, 100,663,296 + 8192 written
  const [same] = callLaunches("mn_axpby_backward", { ...all, dy: 1, y: 5 });
  assert.deepEqual([same.bytesRead, same.bytesWritten], [301989896, 100671488]);
  // dx without dy, da and db: the dx/dy kernel (98,304 blocks), then full_sums<2, Dot2Term>
  // (dout, x, y: 3 * 100,663,296 read) and its finish
  const split = callLaunches("mn_axpby_backward", { ...all, dy: 0 });
  assert.deepEqual(split.map((l) => [l.kernel, l.blocks, l.bytesRead]), [
    ["axpby_backward_dxdy_kernel", 98304, 201326596],
    ["full_sums_kernel<2,Dot2Term>", 1024, 301989888],
    ["full_sums_kernel<2,FullPartialsTerm>", 1, 8200],
  ]);
  // sum_squares of a 768 x 768 matrix (589,824): chunk = max(576, 4096) = 4096, 144 blocks (16
  // elements a thread: 4 rounds), reading 2,359,296 and writing 144 partials (576); stage 2 reads
  // them and writes out (4; out =, not +=, so out is not read)
  const ss = callLaunches("mn_sum_squares", { out: 1, x: 2, n: 768 * 768 });
  assert.deepEqual(
    ss.map((l) => [l.kernel, l.blocks, l.bytesRead, l.bytesWritten, l.serialSteps]),
    [
      ["full_sums_kernel<1,SquareTerm>", 144, 2359296, 576, 4],
      ["full_sums_kernel<1,FullPartialsTerm>", 1, 576, 4, 1],
    ],
  );
  // up to 4096 elements: one block, no stage 2
  assert.equal(callLaunches("mn_sum_squares", { out: 1, x: 2, n: 4096 }).length, 1);
  assert.deepEqual(callLaunches("mn_mul_backward", { dx: 0, dy: 0, n }), []);
  // attention backward: Delta, dK/dV and dQ kernels
  const att = callLaunches("mn_attention_backward", { B: 32, T: 1024, H: 12, D: 64 });
  assert.deepEqual(att.map((l) => l.kernel), [
    "attention_delta_kernel",
    "attention_backward_dkv_kernel",
    "attention_backward_dq_kernel",
  ]);
  // Delta: ceil(32*1024*12 / 8) = 49,152 blocks; dK/dV, dQ: grid (1024/32, 12, 32) = 12,288
  assert.deepEqual(att.map((l) => l.blocks), [49152, 12288, 12288]);
  // the tensor-core version: Delta 4 rows per 128-thread block, dK/dV and dQ (1024/64, 12, 32)
  const tc = callLaunches("mn_attention_tc_backward", { B: 32, T: 1024, H: 12, D: 64 });
  assert.deepEqual(tc.map((l) => l.blocks), [98304, 6144, 6144]);
  // pairs of 16-blocks per head: 64 * 65 / 2 = 2080; dK/dV does 4 products of 2*16*16*64 each
  assert.equal(tc[1].tcFlops, 32 * 12 * 2080 * 4 * 32768);
});

Deno.test("cost model: GroupNorm and bonus backwards at N = 32768, H = G = 12, D = 64", () => {
  // modelops.cu: both end in column sums over [32768, 12 * 64 = 768]: grid (24, 43), then the
  // finish. GroupNorm's stage 1 reads dout, x (2 * 100,663,296) and mean, rstd [N, G] (2 * 4 *
  // 393,216 = 3,145,728): 204,472,320; writes [43][2][768] partials: 264,192.
  const gn = callLaunches("mn_groupnorm_backward", { N: ROWS, G: 12, D: 64 });
  assert.deepEqual(gn.map((l) => [l.kernel, l.blocks]), [
    ["groupnorm_backward_dx_kernel", 49152],
    ["col_sums_kernel<2,GroupNormParamTerm>", 1032],
    ["col_sums_kernel<2,PartialsTerm>", 24],
  ]);
  assert.deepEqual([gn[1].bytesRead, gn[1].bytesWritten], [204472320, 264192]);
  // bonus: the rkv kernel also writes ds [N, H] (1,572,864) after dr, dk, dv (3 * 100,663,296);
  // du's stage 1 reads ds and r, k: 1,572,864 + 2 * 100,663,296 = 202,899,456, writes 132,096
  const bo = callLaunches("mn_rwkv7_bonus_backward", { N: ROWS, H: 12, D: 64 });
  assert.deepEqual(bo.map((l) => [l.kernel, l.blocks, l.bytesRead, l.bytesWritten]), [
    ["bonus_backward_rkv_kernel", 49152, 7 * 100663296 + 3072, 3 * 100663296 + 1572864],
    ["col_sums_kernel<1,BonusDuTerm>", 1032, 202899456, 132096],
    ["col_sums_kernel<1,PartialsTerm>", 24, 135168, 3072],
  ]);
});

Deno.test("cost model: mn_rwkv7_wkv_inputs_backward sums its parameter terms in its own pass", () => {
  // rwkv7_fused.cu: grid (H, tiles) of row_tile_plan(N, H). The trainer's call at the record shape
  // N = 32768, H = 12, D = 64 (C = 768): bf16 inputs and gradients, bits 0-5 clear. want =
  // ceil(1024/12) = 86 tiles (< ceil(32768/64) = 512, < 256); tile_rows = ceil(32768/86) = 382
  // rounded up to 384; tiles = ceil(32768/384) = 86: grid (12, 86) = 1032 blocks of 256; a warp
  // walks 384/8 = 48 rows, two dependent rounds each: 96 serial steps.
  // Reads dw, dk, da, db fp32 (4 * 100,663,296) + six bf16 inputs (6 * 50,331,648) + four [C]
  // parameter vectors (12,288) = 704,655,360; writes six bf16 gradients (301,989,888) + partials
  // [86][4][768] floats (1,056,768) = 303,046,656. The finish (grid (24, 1)) reads the partials and
  // the four outputs (12,288), writes the outputs; ceil(86/8) = 11 tile rows a thread: 2 rounds of
  // 4 and 3 single loads = 5.
  const rec = callLaunches("mn_rwkv7_wkv_inputs_backward", {
    N: ROWS,
    H: 12,
    D: 64,
    in_bf16: 1,
    grad_bf16: 1,
    accumulate: 0x3c0,
  });
  assert.deepEqual(
    rec.map((l) => [l.kernel, l.blocks, l.threads, l.bytesRead, l.bytesWritten, l.serialSteps]),
    [
      ["wkv_inputs_backward_kernel", 1032, 256, 704655360, 303046656, 96],
      ["col_sums_kernel<4,PartialsTerm>", 24, 256, 1069056, 12288, 5],
    ],
  );
  // The trainer's --fast_cuda call reads WKV's bf16 dw, da, db (3 * 50,331,648 instead of
  // 3 * 100,663,296) and an fp32 dk
  const wab = callLaunches("mn_rwkv7_wkv_inputs_backward", {
    N: ROWS,
    H: 12,
    D: 64,
    in_bf16: 1,
    grad_bf16: 1,
    dwab_bf16: 1,
    dk_bf16: 0,
    accumulate: 0x3c0,
  });
  assert.equal(wab[0].bytesRead, 704655360 - 150994944);
  // One tile (N = 64, H = 2, D = 64, fp32, every bit set): no finish; the kernel reads the four
  // output gradients (4 * 32,768), six inputs (6 * 32,768), four parameter vectors (4 * 512), the
  // six accumulated gradients (6 * 32,768) and the four parameter gradients it adds into (2048):
  // 528,384; writes the six gradients and the four parameter gradients: 198,656. 64/8 = 8 rows a
  // warp: 16 serial steps.
  const one = callLaunches("mn_rwkv7_wkv_inputs_backward", {
    N: 64,
    H: 2,
    D: 64,
    in_bf16: 0,
    grad_bf16: 0,
    accumulate: -1,
  });
  assert.deepEqual(
    one.map((l) => [l.kernel, l.blocks, l.bytesRead, l.bytesWritten, l.serialSteps]),
    [["wkv_inputs_backward_kernel", 2, 528384, 198656, 16]],
  );
});

Deno.test("cost model: the fused GroupNorm (+ bonus) * gate backwards at N = 32768, H = 12, D = 64", () => {
  // rwkv7_fused.cu gn_backward: one pass over grid (H * ceil(64 / 128) = 12, tiles), tiles from
  // row_tile_plan(32768, 12): ceil(1024 / 12) = 86 wanted, ceil(ceil(32768 / 86) / 32) * 32 = 384
  // rows a tile, 86 tiles: 1032 blocks of 256, a warp's 384 / 8 = 48 rows one round trip each.
  // act = 32768 * 768 * 4 = 100,663,296; the bf16 gate and dgate 50,331,648 each; mean, rstd
  // [N, H]: 3,145,728. RWKV-7, activations overwritten (0xe0): reads dout, y, r, k, v (5 act),
  // the gate, mean, rstd and weight, bias, u (3 * 3,072): 556,803,072; writes dy, dr, dk, dv
  // (4 act), dgate and the partials [86][3][768] (792,576): 453,777,408. The finish: 24 blocks
  // over the partials, adding into dweight, dbias, du (read and written, 9,216); a thread's 86 / 8
  // -> 11 rows: 2 groups of 4 and 3 single loads = 5 round trips.
  const a = { N: ROWS, H: 12, D: 64, gate_bf16: 1, dgate_bf16: 1 };
  const r7 = callLaunches("mn_rwkv7_gn_bonus_gate_backward", { ...a, accumulate: 0xe0 });
  assert.deepEqual(
    r7.map((l) => [l.kernel, l.blocks, l.threads, l.bytesRead, l.bytesWritten, l.serialSteps]),
    [
      ["gn_bonus_gate_backward_kernel", 1032, 256, 556803072, 453777408, 48],
      ["col_sums_kernel<3,PartialsTerm>", 24, 256, 801792, 9216, 5],
    ],
  );
  // RWKV-6 (0xc): reads dout, y (2 act), the gate, mean, rstd, weight, bias (6,144): 254,810,112;
  // writes dy, dgate and [86][2][768] partials (528,384): 151,523,328
  const r6 = callLaunches("mn_rwkv6_gn_gate_backward", { ...a, accumulate: 0xc });
  assert.deepEqual(r6.map((l) => [l.kernel, l.blocks, l.bytesRead, l.bytesWritten]), [
    ["gn_bonus_gate_backward_kernel", 1032, 254810112, 151523328],
    ["col_sums_kernel<2,PartialsTerm>", 24, 528384 + 6144, 6144],
  ]);
  // a head over 128 channels: ceil(200 / 128) = 2 blocks per head, 6 per row tile; 100 rows:
  // min(ceil(1024 / 6), ceil(100 / 64)) = 2 tiles of 64 rows; the finish over 600 columns
  const wide = callLaunches("mn_rwkv6_gn_gate_backward", {
    ...a,
    N: 100,
    H: 3,
    D: 200,
    accumulate: 0xc,
  });
  assert.deepEqual(wide.map((l) => l.blocks), [3 * 2 * 2, Math.ceil(600 / 32)]);
});

Deno.test("cost model: mn_embedding_backward at N = 32768, C = 768, V = 50304", () => {
  // embedding.cu: bitlen(50304) = 16 -> 4 radix passes; tiles = 32768/1024 = 32; hist 16 * 32 =
  // 512 ints (2048 bytes). Per pass: sort_count_kernel 32 x 256 (reads the keys, pass 0 idx:
  // 131,072; writes hist 2048), exclusive_scan_kernel 1 x scan_threads(512) = 32 (hist read and
  // written; 16 elements a thread), sort_scatter_kernel 32 x 256 (reads the keys, from pass 1 the
  // rows too, and hist; writes keys, rows: 262,144). Then segment_starts_kernel 1 x
  // scan_threads(32768) = min(64 * 32, 1024) = 1024 (reads the keys 131,072; writes seg [S + 1]
  // and nseg) and embedding_segments_kernel grid (min(ceil(4096/24) = 171, 32768/8), 24) = 4104
  // blocks of 256.
  const ls = callLaunches("mn_embedding_backward", {
    dwte: 1,
    idx: 2,
    dout: 3,
    N: ROWS,
    C,
    V: 50304,
  });
  const pass = ["sort_count_kernel", "exclusive_scan_kernel", "sort_scatter_kernel"];
  assert.deepEqual(ls.map((l) => l.kernel), [
    ...pass,
    ...pass,
    ...pass,
    ...pass,
    "segment_starts_kernel",
    "embedding_segments_kernel",
  ]);
  const grids = ls.slice(0, 3).map((l) => [l.blocks, l.threads]);
  assert.deepEqual(grids, [[32, 256], [1, 32], [32, 256]]);
  assert.deepEqual([ls[0].bytesRead, ls[0].bytesWritten], [131072, 2048]);
  assert.deepEqual([ls[2].bytesRead, ls[2].bytesWritten], [131072 + 2048, 262144]);
  assert.deepEqual([ls[5].bytesRead, ls[5].bytesWritten], [262144 + 2048, 262144]);
  const [starts, seg] = ls.slice(12);
  assert.deepEqual([starts.blocks, starts.threads, starts.bytesRead], [1, 1024, 131072]);
  // S (distinct ids) estimated as min(N, V) = 32768: seg 32,769 ints + nseg = 131,080 written.
  // The segments kernel reads dout (100,663,296), rows (131,072), seg (131,076), keys at the
  // segment starts (131,072), nseg (4) and the S dwte rows (100,663,296): 201,719,816; writes the
  // S dwte rows: 100,663,296.
  assert.equal(starts.bytesWritten, 131080);
  assert.deepEqual([seg.blocks, seg.threads, seg.bytesRead, seg.bytesWritten], [
    4104,
    256,
    201719816,
    100663296,
  ]);
});

Deno.test("cost model: mn_softcap_crossentropy, 8192 rows of V = 50304", () => {
  // crossentropy.cu: one block of 256 per row; an online-softmax pass, then the gradient pass when
  // dlogits is given. A row is 201,216 bytes; 8 * 132 = 1056 rows in flight = 212 MB > L2, so the
  // gradient pass reads the logits again: 2 * 8192 * 201,216 = 3,296,722,944 + targets and
  // x[target] (2 * 32,768): 3,296,788,480. Writes losses (32,768) and dlogits (1,648,361,472).
  const a = { losses: 1, dlogits: 2, logits: 3, targets: 4, N: 8192, V: 50304, softcap: 30 };
  const [g] = callLaunches("mn_softcap_crossentropy", a);
  assert.deepEqual([g.kernel, g.blocks, g.threads], ["softcap_crossentropy_kernel", 8192, 256]);
  assert.deepEqual([g.bytesRead, g.bytesWritten], [3296788480, 1648394240]);
  // without dlogits: one pass (1,648,361,472 + 65,536 read), only the losses written
  const [f] = callLaunches("mn_softcap_crossentropy", { ...a, dlogits: 0 });
  assert.deepEqual([f.bytesRead, f.bytesWritten], [1648427008, 32768]);
});

Deno.test("cost model: mn_softcap_crossentropy_bf16 reads a staged row once", () => {
  // crossentropy.cu: bf16 with dlogits and a row of at most 160 KB: the row is copied into shared
  // memory and both passes read it there (still one block of 256 per row). A row is 100,608 bytes:
  // 8192 * 100,608 = 824,180,736 read once, + targets (32,768; x[target] comes from the copy):
  // 824,213,504. Writes losses (32,768) and dlogits (824,180,736).
  const a = { losses: 1, dlogits: 2, logits: 3, targets: 4, N: 8192, V: 50304, softcap: 30 };
  const [g] = callLaunches("mn_softcap_crossentropy_bf16", a);
  assert.deepEqual([g.kernel, g.blocks, g.threads], ["softcap_crossentropy_kernel", 8192, 256]);
  assert.deepEqual([g.bytesRead, g.bytesWritten], [824213504, 824213504]);
  // without dlogits: the direct kernel's one pass, + targets and x[target] (16,384)
  const [f] = callLaunches("mn_softcap_crossentropy_bf16", { ...a, dlogits: 0 });
  assert.deepEqual([f.bytesRead, f.bytesWritten], [824229888, 32768]);
  // V = 81921 (163,842-byte rows) is above the limit: the direct kernel reads the rows twice
  // (1056 * 163,842 = 173 MB in flight > L2): 2 * 8192 * 163,842 + 32,768 + 16,384 read; losses
  // and 8192 * 163,842 written
  const [d] = callLaunches("mn_softcap_crossentropy_bf16", { ...a, V: 81921 });
  assert.deepEqual([d.bytesRead, d.bytesWritten], [2684436480, 1342226432]);
});

Deno.test("cost model: an overwritten gradient (its accumulate bit clear) is written, not read", () => {
  const n = 1 << 20, act = 4 * n;
  const bytes = (fn: string, a: Record<string, number>) =>
    callLaunches(fn, a).reduce((s, l) => [s[0] + l.bytesRead, s[1] + l.bytesWritten], [0, 0]);
  // mul_backward: dout, x, y always; dx, dy read only when added into
  assert.deepEqual(bytes("mn_mul_backward", { n, accumulate: -1 }), [5 * act, 2 * act]);
  assert.deepEqual(bytes("mn_mul_backward", { n, accumulate: 0 }), [3 * act, 2 * act]);
  assert.deepEqual(bytes("mn_mul_backward", { n, accumulate: 0b10 }), [4 * act, 2 * act]);
  // time_shift_backward overwriting also writes the last step's zeros (B*T*C in all)
  const ts = { B: 2, T: 4, C: 8 };
  assert.deepEqual(bytes("mn_time_shift_backward", { ...ts, accumulate: 0 }), [192, 256]);
  assert.deepEqual(bytes("mn_time_shift_backward", { ...ts, accumulate: 1 }), [384, 192]);
  // embedding_backward overwriting zero-fills all of dwte first
  const emb = callLaunches("mn_embedding_backward", { N: 64, C: 32, V: 100, accumulate: 0 });
  assert.deepEqual([emb[0].kernel, emb[0].bytesWritten], ["ew_fill_kernel", 100 * 32 * 4]);
  // the chunked WKV-6 du: column sums over B*NC partial rows, a full grid at the record shape
  const w = callLaunches("mn_wkv6_chunked_backward", { B: 32, T: 1024, H: 12, N: 64 });
  const du = w.filter((l) => l.kernel.startsWith("col_sums_kernel"));
  assert.equal(du.length, 2);
  assert.ok(du[0].blocks >= 132, `du stage 1: ${du[0].blocks} blocks`);
});
