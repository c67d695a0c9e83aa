// Runs one planted kernel bug (cuda/test/planted_bugs.cu) in a sanitizer build; started by
// cuda/sanitizers_test.ts with the sanitizer runtime preloaded.
// Usage: run_planted.ts race|race-fixed|oob
const which = Deno.args[0];
const san = which === "oob" ? "asan" : "tsan";
const lib = Deno.dlopen(new URL(`../build/libplanted_${san}.so`, import.meta.url).pathname, {
  planted_reverse_blocks: { parameters: ["buffer", "buffer", "i32", "i32"], result: "i32" },
  planted_off_by_one: { parameters: ["i32"], result: "i32" },
});
if (which === "oob") {
  console.log(`rc=${lib.symbols.planted_off_by_one(100)}`);
} else {
  const nblocks = 4;
  const inp = new Float32Array(64 * nblocks).map((_, i) => i);
  const out = new Float32Array(64 * nblocks);
  const rc = lib.symbols.planted_reverse_blocks(out, inp, nblocks, which === "race" ? 0 : 1);
  const wrong = out.filter((v, i) => v !== Math.floor(i / 64) * 64 + 63 - (i % 64)).length;
  console.log(`rc=${rc} wrong=${wrong}`);
}
