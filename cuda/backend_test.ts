// The ABI table, the three libraries against it, and the bindings' errors on bad input.
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { kernelsHeaderFunctions, kernelsHeaderSymbols, parseKernelsHeader } from "./abi.ts";
import {
  Backend,
  defaultBackend,
  type GpuProbe,
  libraryPath,
  resolveBackendName,
} from "./backend.ts";
import { HAS_GPU } from "./test/harness.ts";

function exists(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

Deno.test("abi: kernels.h parses into a symbol table with only supported types", () => {
  const fns = kernelsHeaderFunctions();
  assert.ok(fns.length >= 30, `only ${fns.length} functions parsed`);
  const names = new Set(fns.map((f) => f.name));
  assert.equal(names.size, fns.length, "duplicate declarations in kernels.h");
  for (const f of fns) assert.match(f.name, /^mn_[a-z0-9_]+$/);
  const gemm = fns.find((f) => f.name === "mn_gemm_bf16")!;
  assert.deepEqual(gemm.params.slice(0, 6).map((p) => p.type), [
    "i32",
    "i32",
    "i32",
    "i32",
    "i32",
    "f32",
  ]);
  assert.equal(fns.find((f) => f.name === "mn_malloc")!.params[0].type, "buffer");
});

Deno.test("abi: an unsupported parameter type is a clear error naming the function", () => {
  assert.throws(
    () => parseKernelsHeader("MN_API int mn_bad(float* x, size_t n);", "test.h"),
    /test\.h: mn_bad: parameter n has unsupported type size_t/,
  );
  assert.throws(
    () => parseKernelsHeader("int nothing;", "empty.h"),
    /empty\.h: no MN_API declarations/,
  );
});

const libs: [string, string][] = [
  ["cpu", libraryPath("cpu")],
  ["emu", libraryPath("emu")],
  ["emu-tsan", libraryPath("emu", "tsan")],
  ["emu-asan", libraryPath("emu", "asan")],
  ["cuda", libraryPath("cuda")],
];
for (const [name, path] of libs) {
  // The cuda library links against libcudart, which this machine has without a GPU, so loading it
  // checks that the nvcc build exports every entry point even where nothing can run.
  Deno.test({
    name: `abi: lib for ${name} exports every function of kernels.h`,
    ignore: !exists(path) && name === "cuda",
    fn() {
      assert.ok(exists(path), `${path} not built`);
      // Sanitized libraries need their runtime preloaded to load; check their symbols with nm.
      if (name.includes("san")) {
        const out = new Deno.Command("nm", { args: ["-D", "--defined-only", path] }).outputSync();
        const syms = new Set(
          new TextDecoder().decode(out.stdout).split("\n").map((l) => l.split(" ").pop()),
        );
        const missing = kernelsHeaderFunctions().map((f) => f.name).filter((n) => !syms.has(n));
        assert.deepEqual(missing, [], `${path} lacks ${missing.join(", ")}`);
        return;
      }
      const syms = kernelsHeaderSymbols();
      for (const f of Object.values(syms)) (f as { optional?: boolean }).optional = true;
      const lib = Deno.dlopen(path, syms);
      const missing = Object.entries(lib.symbols).filter(([, f]) => f === null).map(([n]) => n);
      lib.close();
      assert.deepEqual(missing, [], `${path} lacks ${missing.join(", ")}`);
    },
  });
}

/** The GPU code in a CUDA fat binary: "sass <arch>" / "ptx <arch>" per entry. Layout (as nvcc
 * writes it): a 16-byte header (u32 magic 0xBA55ED50, u16 version, u16 header size 16, u64 size of
 * the entries), then entries of u16 kind (1 PTX, 2 ELF/SASS), u16, u32 entry header size, u64
 * payload size, ..., u32 sm arch at byte 28 of the entry header. */
function fatbinCode(bytes: Uint8Array): string[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const code: string[] = [];
  for (let i = 0; i + 16 <= bytes.length; i += 8) { // fat binaries are 8-byte aligned
    if (dv.getUint32(i, true) !== 0xba55ed50 || dv.getUint16(i + 6, true) !== 16) continue;
    const end = i + 16 + Number(dv.getBigUint64(i + 8, true));
    for (let p = i + 16; p + 32 <= end;) {
      const kind = dv.getUint16(p, true), headerSize = dv.getUint32(p + 4, true);
      code.push(
        `${kind === 1 ? "ptx" : kind === 2 ? "sass" : `kind${kind}`} ${dv.getUint32(p + 28, true)}`,
      );
      p += headerSize + Number(dv.getBigUint64(p + 8, true));
    }
    i = end - 8;
  }
  return code;
}

Deno.test({
  name: "abi: the cuda library carries sm_80 and sm_90 SASS and compute_90 PTX (JIT on newer GPUs)",
  ignore: !exists(libraryPath("cuda")),
  fn() {
    const code = fatbinCode(Deno.readFileSync(libraryPath("cuda")));
    assert.deepEqual([...new Set(code)].sort(), ["ptx 90", "sass 80", "sass 90"]);
    const count = (c: string) => code.filter((x) => x === c).length;
    // every .cu file's object brings its PTX and both SASS builds (the link adds one SASS pair)
    const files = [...Deno.readDirSync(dirname(dirname(libraryPath("cuda"))))]
      .filter((e) => e.name.endsWith(".cu")).length;
    assert.equal(count("ptx 90"), files);
    assert.ok(count("sass 80") >= files && count("sass 90") >= files, code.join(", "));
  },
});

Deno.test("backend: a wrong backend name is a one-line error listing the choices", () => {
  assert.throws(
    () => resolveBackendName("rocm"),
    /^Error: --backend rocm: expected one of cuda, emu, cpu, dry$/,
  );
  assert.throws(
    () => Backend.open({ name: "gpu" }),
    /--backend gpu: expected one of cuda, emu, cpu, dry/,
  );
});

Deno.test("backend: a missing library says which file and how to build it", () => {
  assert.throws(
    () => Backend.open({ name: "emu", libPath: "/nonexistent/libmn_emu.so" }),
    /\/nonexistent\/libmn_emu\.so not found: build the emu backend first \(make -C cuda emu/,
  );
});

Deno.test("backend: a sanitizer variant other than on emu is refused", () => {
  assert.throws(() => Backend.open({ name: "cpu", variant: "tsan" }), /exists only for emu/);
});

Deno.test({
  name: "backend: cuda without a GPU is a clear error, not a crash",
  ignore: HAS_GPU || !exists(libraryPath("cuda")),
  fn() {
    assert.throws(
      () => Backend.open({ name: "cuda" }),
      /backend cuda: no GPU visible \(use --backend cpu or emu\)/,
    );
  },
});

// libmn_cuda.so's GPU count under driver states this machine does not have: cudaGetDeviceCount and
// cudaDriverGetVersion are answered by cuda/test/fake_cudart.cpp, preloaded ahead of libcudart.
const FAKE_CUDART = `${dirname(libraryPath("cuda"))}/libfake_cudart.so`;
Deno.test({
  name: "backend: only 'no device' or 'no driver' count as 0 GPUs; a too-old driver is an error",
  ignore: !exists(libraryPath("cuda")) || !exists(FAKE_CUDART),
  fn() {
    const probe = (error: number, driver: number, devices = 0): GpuProbe => {
      const script = `import { probeGpus } from "${new URL("./backend.ts", import.meta.url)}";
        console.log(JSON.stringify(probeGpus(undefined, "/dev/null")));`;
      const out = new Deno.Command(Deno.execPath(), {
        args: ["eval", script],
        env: {
          LD_PRELOAD: FAKE_CUDART,
          MN_FAKE_CUDA_ERROR: String(error),
          MN_FAKE_CUDA_DRIVER: String(driver),
          MN_FAKE_CUDA_DEVICES: String(devices),
        },
      }).outputSync();
      assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
      return JSON.parse(new TextDecoder().decode(out.stdout));
    };
    // cudaSuccess, cudaErrorNoDevice (100), cudaErrorInsufficientDriver (35) without a driver
    assert.deepEqual(probe(0, 13000, 2), { count: 2, error: "" });
    assert.deepEqual(probe(100, 13000), { count: 0, error: "" });
    assert.deepEqual(probe(35, 0), { count: 0, error: "" });
    // a driver for CUDA 12.2 under this build's CUDA 13 runtime
    const old = probe(35, 12020);
    assert.equal(old.count, 0);
    assert.match(
      old.error,
      /^cudaGetDeviceCount: the NVIDIA driver supports CUDA 12\.2, older than this build's CUDA runtime \d+\.\d+: update the driver/,
    );
    // any other failure keeps the runtime's own words (cudaErrorInitializationError = 3)
    assert.match(probe(3, 13000).error, /^cudaGetDeviceCount: .*initiali[sz]ation error/i);
    // and choosing a backend from a failed check is that error, not a quiet cpu run
    assert.equal(defaultBackend({ count: 0, error: "" }), "cpu");
    assert.equal(defaultBackend({ count: 1, error: "" }), "cuda");
    assert.throws(
      () => defaultBackend(old),
      /^Error: the GPU check failed: cudaGetDeviceCount: the NVIDIA driver supports CUDA 12\.2.*\(fix it, or choose --backend cpu to run without a GPU\)$/,
    );
  },
});

Deno.test("backend: library errors come back as exceptions carrying the library's message", () => {
  for (const name of ["cpu", "emu"] as const) {
    const be = Backend.open({ name });
    assert.throws(
      () => be.k.mn_cast_f32_to_bf16(null, null, -5n, null),
      /mn_cast_f32_to_bf16 \(.+\): cast_f32_to_bf16: n = -5 \[code 1\]/,
    );
    assert.throws(() => be.k.mn_set_device(3), /device 3 does not exist/);
  }
});

Deno.test("backend: memory accounting, views and host round trips", () => {
  const be = Backend.open({ name: "cpu" });
  const before = be.bytesInUse;
  const t = be.upload(new Float32Array([1, 2, 3, 4, 5, 6]), [3, 2]);
  assert.equal(be.bytesInUse - before, 24);
  assert.deepEqual([...be.download(t.rows(1, 2))], [3, 4, 5, 6]);
  assert.throws(() => t.view([4, 2]), /has 8 elements, not 6/);
  assert.throws(() => be.write(t, new Float32Array(5)), /host data has 20 bytes, tensor has 24/);
  assert.throws(() => be.free(t.rows(1, 1)), /not an allocation of this backend/);
  be.free(t);
  assert.equal(be.bytesInUse, before);
});
