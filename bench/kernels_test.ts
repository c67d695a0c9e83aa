// bench/kernels.ts is what a GPU session runs to calibrate the step-cost model (measured vs
// estimated per family): its estimate column must exist for every case, and its flags must parse.
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;
function kernels(...args: string[]) {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "bench/kernels.ts", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  const d = new TextDecoder();
  return { code: out.code, text: d.decode(out.stdout) + d.decode(out.stderr) };
}

Deno.test("bench/kernels.ts: every case is timed and has the cost model's estimate", () => {
  const { code, text } = kernels("--backends", "cpu", "--reps", "1", "--hw", "H100");
  assert.equal(code, 0, text);
  assert.match(text, /est: H100 SXM model/);
  const rows = text.split("\n").filter((l) => l.startsWith("cpu "));
  assert.ok(rows.length >= 15, text);
  for (const r of rows) {
    // ... ms  est ms: the last two numbers of a cpu row (no GB/s or ratio columns off cuda)
    const nums = r.trim().split(/\s+/).slice(-2).map(Number);
    assert.ok(nums.every((x) => Number.isFinite(x) && x > 0), `no measured/estimated ms in: ${r}`);
  }
  // the model prices each case by its own calls: the big GEMM-free reductions are not all equal
  assert.ok(new Set(rows.map((r) => r.trim().split(/\s+/).at(-1))).size > 3, text);
});

Deno.test("bench/kernels.ts: a bad --hw, --size, --reps or an unknown flag is a one-line error", () => {
  for (
    const [flag, v, what] of [
      ["--hw", "B300", "is not one of"],
      ["--size", "huge", "is not one of"],
      ["--reps", "0", "is not a positive integer"],
    ]
  ) {
    const { code, text } = kernels(flag, v, "--backends", "cpu");
    assert.equal(code, 2, text);
    assert.match(text.trim(), new RegExp(`^error: ${flag}: '${v}' ${what}[^\n]*$`));
  }
  const { code, text } = kernels("--bogus");
  assert.equal(code, 2, text);
  assert.match(text.trim(), /^error: Unknown option '--bogus'[^\n]*$/);
});
