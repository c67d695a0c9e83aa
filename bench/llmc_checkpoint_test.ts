import assert from "node:assert/strict";
import { llmcCheckpoint, llmcParameters } from "./llmc_checkpoint.ts";

Deno.test("llmc_checkpoint: GPT-2 124M has llm.c's parameter count", () => {
  // train_gpt2.c prints num_parameters: 124475904 for gpt2_124M.bin (maxT 1024, Vp 50304)
  const n = llmcParameters(1024, 50304, 12, 768).reduce((s, [k]) => s + k, 0);
  assert.equal(n, 124475904);
});

Deno.test("llmc_checkpoint: header, size and initialisation of a small file", () => {
  const dims = { maxT: 8, V: 60, Vp: 64, L: 2, NH: 2, C: 16 };
  const bytes = llmcCheckpoint(dims);
  const header = new Int32Array(bytes.buffer, 0, 256);
  assert.deepEqual([...header.subarray(0, 8)], [20240326, 3, 8, 60, 2, 2, 16, 64]);
  const params = llmcParameters(8, 64, 2, 16);
  const n = params.reduce((s, [k]) => s + k, 0);
  assert.equal(bytes.length, 1024 + 4 * n);
  const w = new Float32Array(bytes.buffer, 1024, n);
  let off = 0;
  for (const [k, kind] of params) {
    const t = w.subarray(off, off + k);
    if (kind === "ones") assert.ok(t.every((x) => x === 1));
    else if (kind === "zeros") assert.ok(t.every((x) => x === 0));
    else {
      const rms = Math.sqrt(t.reduce((s, x) => s + x * x, 0) / k);
      assert.ok(rms > 0.01 && rms < 0.04, `rms ${rms} of a N(0, 0.02) tensor of ${k}`);
    }
    off += k;
  }
});
