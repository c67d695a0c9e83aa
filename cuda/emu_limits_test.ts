// The emulator's launch limits: dynamic shared memory is held to sm_80's 163 KB per block (A100),
// not sm_90's 227 KB, so a kernel configuration the emu tests pass also launches on an A100.
import assert from "node:assert/strict";

const LIB = new URL("./build/libemu_limits.so", import.meta.url).pathname;

Deno.test("emu: dynamic shared memory above sm_80's 163 KB per block is a launch error", () => {
  const lib = Deno.dlopen(LIB, {
    limits_smem_fill: { parameters: ["buffer", "i32"], result: "i32" },
    limits_last_error: { parameters: ["buffer", "i32"], result: "i32" },
  });
  try {
    const error = () => {
      const buf = new Uint8Array(512);
      lib.symbols.limits_last_error(buf, buf.length);
      return new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    };
    const limit = 163 * 1024;
    const out = new Float32Array(limit / 4 + 1).fill(-1);
    // exactly the limit: launches, and every slot of the shared memory is there
    assert.equal(lib.symbols.limits_smem_fill(out, limit), 0, error());
    assert.ok(out.subarray(0, limit / 4).every((v, i) => v === i));
    // one float more (sm_90 would allow up to 227 KB): refused, naming the limit
    for (const bytes of [limit + 4, 227 * 1024]) {
      assert.equal(lib.symbols.limits_smem_fill(out, bytes), 9, `${bytes} bytes launched`);
      assert.equal(
        error(),
        `smem_fill: dynamic shared memory ${bytes} bytes is above sm_80's ${limit} (163 KB) per block: an A100 could not launch this (the emulator holds every kernel to sm_80's limit)`,
      );
    }
  } finally {
    lib.close();
  }
});
