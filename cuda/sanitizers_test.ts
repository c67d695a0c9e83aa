// The emu build under ThreadSanitizer and AddressSanitizer: the kernel checks run again against
// the sanitized libraries, and two planted bugs prove the sanitizers are live.
// Deno itself is not instrumented: the sanitizer runtime is preloaded (LD_PRELOAD) and Deno's own
// threads are suppressed (cuda/test/tsan.supp); the emulator's CUDA threads are fully checked.
import assert from "node:assert/strict";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { SINGLE_THREADED_REFERENCE } from "./test/harness.ts";

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const CUDA_DIR = `${ROOT}/cuda`;

function runtimePath(name: "libtsan.so" | "libasan.so"): string {
  const out = new Deno.Command("g++", { args: [`-print-file-name=${name}`] }).outputSync();
  return new TextDecoder().decode(out.stdout).trim();
}

// Single-threaded BLAS and OpenMP in the sanitized process (SINGLE_THREADED_REFERENCE): the only
// threads besides Deno's are then the emulator's, which are instrumented.
function sanitizerEnv(kind: "tsan" | "asan"): Record<string, string> {
  return kind === "tsan"
    ? {
      ...SINGLE_THREADED_REFERENCE,
      LD_PRELOAD: runtimePath("libtsan.so"),
      TSAN_OPTIONS: `suppressions=${CUDA_DIR}/test/tsan.supp report_signal_unsafe=0`,
    }
    : {
      ...SINGLE_THREADED_REFERENCE,
      LD_PRELOAD: runtimePath("libasan.so"),
      ASAN_OPTIONS: "detect_leaks=0",
    };
}

function run(args: string[], env: Record<string, string>) {
  const out = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  return { code: out.code, text };
}

Deno.test("sanitizers: planted missing __syncthreads is reported by ThreadSanitizer", () => {
  const r = run(["run", "-A", "cuda/test/run_planted.ts", "race"], sanitizerEnv("tsan"));
  assert(r.text.includes("WARNING: ThreadSanitizer: data race"), r.text.slice(-3000));
  assert(
    r.text.includes("reverse_block_kernel"),
    "the report names the kernel:\n" + r.text.slice(-3000),
  );
  console.log("  TSan caught the planted race in reverse_block_kernel");
});

Deno.test("sanitizers: the same kernel with its __syncthreads runs clean under ThreadSanitizer", () => {
  const r = run(["run", "-A", "cuda/test/run_planted.ts", "race-fixed"], sanitizerEnv("tsan"));
  assert.equal(r.code, 0, r.text.slice(-3000));
  assert(!r.text.includes("ThreadSanitizer"), r.text.slice(-3000));
  assert(r.text.includes("wrong=0"), r.text);
});

Deno.test("sanitizers: planted off-by-one write is reported by AddressSanitizer", () => {
  const r = run(["run", "-A", "cuda/test/run_planted.ts", "oob"], sanitizerEnv("asan"));
  assert(r.text.includes("ERROR: AddressSanitizer: heap-buffer-overflow"), r.text.slice(-3000));
  assert(r.text.includes("off_by_one_kernel"), r.text.slice(-3000));
  console.log("  ASan caught the planted out-of-bounds write in off_by_one_kernel");
});

for (const kind of ["tsan", "asan"] as const) {
  Deno.test(`sanitizers: kernel checks on emu-${kind} pass with no sanitizer report`, () => {
    const files = [...Deno.readDirSync(CUDA_DIR)]
      .map((e) => e.name)
      .filter((n) => n.endsWith("_test.ts") && n !== "sanitizers_test.ts")
      .sort()
      .map((n) => `cuda/${n}`);
    const r = run(
      ["test", "-A", "--no-check", "--filter", `emu-${kind} vs cpu`, ...files],
      { ...sanitizerEnv(kind), MN_TEST_VARIANT: kind },
    );
    const summary = r.text.split("\n").filter((l) => /passed \|/.test(l)).pop() ?? "(no summary)";
    assert(!/WARNING: ThreadSanitizer|ERROR: AddressSanitizer/.test(r.text), r.text.slice(-4000));
    assert.equal(r.code, 0, r.text.slice(-4000));
    const passed = Number(/(\d+) passed/.exec(summary)?.[1] ?? 0);
    assert(passed > 0, `no kernel check ran under ${kind}: ${summary}`);
    console.log(`  emu-${kind}: ${summary.trim()} over ${files.length} files`);
  });
}
