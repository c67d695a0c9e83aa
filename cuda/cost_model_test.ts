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
  // Backward: dinp kernel (N blocks x 256) then the params kernel: ceil(768/32) = 24 blocks of
  // (32, 8) threads, each thread walking rows ty, ty+8, ...: 4096 serial steps. The params kernel
  // reads dout, inp (2 * 100,663,296), mean, rstd (262,144), dweight, dbias (6144): 201,594,880;
  // writes dweight, dbias: 6144.
  const [dinp, params] = callLaunches("mn_layernorm_backward", { N: ROWS, C });
  assert.equal(dinp.kernel, "layernorm_backward_dinp_kernel");
  assert.deepEqual([dinp.blocks, dinp.threads], [32768, 256]);
  // dout, inp, dinp (3 * 100,663,296) + weight 3072 + mean, rstd 262,144
  assert.equal(dinp.bytesRead, 3 * 100663296 + 3072 + 262144);
  assert.equal(dinp.bytesWritten, 100663296);
  assert.equal(params.kernel, "layernorm_backward_params_kernel");
  assert.deepEqual([params.blocks, params.threads, params.serialSteps], [24, 256, 4096]);
  assert.equal(params.bytesRead, 201594880);
  assert.equal(params.bytesWritten, 6144);
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
});

Deno.test("cost model: mn_add_row_vector_backward at N = 32768, C = 768", () => {
  // modelops.cu row_vector_backward_kernel: grid ceil(768/32) = 24 blocks of (32, 8) = 256
  // threads, each thread summing rows ty, ty+8, ...: ceil(32768/8) = 4096 serial steps.
  // With dx: reads dout and dx (2 * 100,663,296) and dv [C] (3072): 201,329,664; writes dx and dv:
  // 100,666,368. Without dx (NULL): reads dout + dv 100,666,368, writes dv 3072.
  const [l] = callLaunches("mn_add_row_vector_backward", { dx: 1, dv: 2, dout: 3, N: ROWS, C });
  assert.equal(l.kernel, "row_vector_backward_kernel");
  assert.deepEqual([l.blocks, l.threads, l.serialSteps], [24, 256, 4096]);
  assert.equal(l.bytesRead, 201329664);
  assert.equal(l.bytesWritten, 100666368);
  const [nodx] = callLaunches("mn_add_row_vector_backward", { dx: 0, dv: 2, dout: 3, N: ROWS, C });
  assert.equal(nodx.bytesRead, 100666368);
  assert.equal(nodx.bytesWritten, 3072);
});

Deno.test("cost model: one-block reductions and launch counts that depend on NULL pointers", () => {
  // elementwise.cu mn_axpby_backward: the dxdy kernel only with dx or dy, the one-block dadb
  // kernel (reduce_threads(n) = 1024 for n > 16384) only with da or db.
  const n = ROWS * C;
  const only = callLaunches("mn_axpby_backward", { dx: 0, dy: 0, da: 1, db: 0, n });
  assert.equal(only.length, 1);
  assert.deepEqual([only[0].kernel, only[0].blocks, only[0].threads], [
    "axpby_backward_dadb_kernel",
    1,
    1024,
  ]);
  // reads dout and x (2 * 100,663,296) and da (4); 24,576 elements per thread in sequence
  assert.equal(only[0].bytesRead, 201326596);
  assert.equal(only[0].serialSteps, 24576);
  assert.equal(callLaunches("mn_axpby_backward", { dx: 1, dy: 1, da: 1, db: 1, n }).length, 2);
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
