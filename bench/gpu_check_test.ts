// bench/gpu_check.sh must not rot between the rare GPU sessions: CI runs its dry run, which does
// every stage that needs no GPU and stops, saying so, where one is required.
import assert from "node:assert/strict";
import { gpuVisible } from "../cuda/backend.ts";

Deno.test({
  name: "gpu_check.sh --dry-run: builds, reports registers/spills, stops where a GPU is needed",
  ignore: gpuVisible(), // with a GPU the real run is the check
  fn() {
    const logs = Deno.makeTempDirSync();
    const out = new Deno.Command("bash", {
      args: ["bench/gpu_check.sh", "--dry-run", "--logs", logs],
      cwd: new URL("..", import.meta.url).pathname,
      stdout: "piped",
      stderr: "piped",
    }).outputSync();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.match(text, /== gpu_check summary/);
    assert.match(text, /^deno\s+ok\s+deno 2\./m);
    assert.match(text, /^build cuda\+cpu\s+ok/m);
    assert.match(
      text,
      /^stop\s+info\s+no GPU: the cuda-vs-cpu tests, trainer timing and kernel benchmarks need one/m,
    );
    const ptxas = Deno.readTextFileSync(`${logs}/ptxas.txt`).trim().split("\n");
    for (const file of ["wkv7", "gemm", "norm", "modelops", "crossentropy"]) {
      assert.ok(
        ptxas.some((l) => l.startsWith(file + " sm_90 ")),
        `ptxas report lacks ${file} for sm_90`,
      );
      assert.ok(
        ptxas.some((l) => l.startsWith(file + " sm_80 ")),
        `ptxas report lacks ${file} for sm_80`,
      );
    }
    // No WKV or attention kernel may spill registers (they keep fp32 state in registers; a spill
    // is a silent slowdown): the build report is the check, and the exit code follows it.
    assert.match(text, /^spills \(wkv\/attention\)\s+ok\s+none/m, "a WKV/attention kernel spills");
    assert.equal(out.code, 0, text);
    console.log(
      text.split("== gpu_check summary")[1].split("\n").filter((l) => l.trim()).slice(1).map((l) =>
        "  " + l
      ).join("\n"),
    );
  },
});
