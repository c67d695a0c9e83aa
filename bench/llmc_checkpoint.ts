// Writes a randomly initialised GPT-2 checkpoint in the file format karpathy/llm.c's train_gpt2.c
// reads (header of 256 int32: magic 20240326, version 3, maxT, V, L, NH, C, Vp; then every
// parameter as fp32 in its order), so bench/cpu_step.sh can time llm.c's CPU trainer at the shape
// ours runs without downloading GPT-2's weights. Weights ~ N(0, 0.02), layernorm scales 1, biases 0
// (the values do not change the step time; llm.c's own init is the same scheme).
//
//   deno run -A bench/llmc_checkpoint.ts OUT.bin --maxT 64 --V 50257 --Vp 50304 --L 4 --NH 2 --C 128

/** The parameter tensors of llm.c's GPT-2 in file order: [element count, "normal" | "ones" | "zeros"]. */
export function llmcParameters(
  maxT: number,
  Vp: number,
  L: number,
  C: number,
): [number, "normal" | "ones" | "zeros"][] {
  return [
    [Vp * C, "normal"], // wte
    [maxT * C, "normal"], // wpe
    [L * C, "ones"], // ln1w
    [L * C, "zeros"], // ln1b
    [L * 3 * C * C, "normal"], // qkvw
    [L * 3 * C, "zeros"], // qkvb
    [L * C * C, "normal"], // attprojw
    [L * C, "zeros"], // attprojb
    [L * C, "ones"], // ln2w
    [L * C, "zeros"], // ln2b
    [L * 4 * C * C, "normal"], // fcw
    [L * 4 * C, "zeros"], // fcb
    [L * C * 4 * C, "normal"], // fcprojw
    [L * C, "zeros"], // fcprojb
    [C, "ones"], // lnfw
    [C, "zeros"], // lnfb
  ];
}

export function llmcCheckpoint(
  dims: { maxT: number; V: number; Vp: number; L: number; NH: number; C: number },
  seed = 1,
): Uint8Array {
  const { maxT, V, Vp, L, NH, C } = dims;
  const params = llmcParameters(maxT, Vp, L, C);
  const n = params.reduce((s, [k]) => s + k, 0);
  const out = new Uint8Array(256 * 4 + n * 4);
  const header = new Int32Array(out.buffer, 0, 256);
  header.set([20240326, 3, maxT, V, L, NH, C, Vp]);
  const w = new Float32Array(out.buffer, 256 * 4, n);
  let s = seed >>> 0 || 1;
  const uniform = () => { // xorshift32, in (0, 1)
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return (s + 0.5) / 4294967296;
  };
  let off = 0;
  for (const [k, kind] of params) {
    for (let i = 0; i < k; i++) {
      w[off + i] = kind === "ones" ? 1 : kind === "zeros" ? 0 : 0.02 *
        Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
    }
    off += k;
  }
  return out;
}

if (import.meta.main) {
  const [out, ...rest] = Deno.args;
  const dims = { maxT: 64, V: 50257, Vp: 50304, L: 4, NH: 2, C: 128 };
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i].replace(/^--/, "") as keyof typeof dims;
    if (!(key in dims) || !/^\d+$/.test(rest[i + 1] ?? "")) {
      console.error(`usage: llmc_checkpoint.ts OUT.bin [--maxT N --V N --Vp N --L N --NH N --C N]`);
      Deno.exit(2);
    }
    dims[key] = Number(rest[i + 1]);
  }
  if (!out) {
    console.error("usage: llmc_checkpoint.ts OUT.bin [--maxT N --V N --Vp N --L N --NH N --C N]");
    Deno.exit(2);
  }
  Deno.writeFileSync(out, llmcCheckpoint(dims));
}
