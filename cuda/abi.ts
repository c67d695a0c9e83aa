// Builds the Deno.dlopen symbol table from cuda/kernels.h, the one list of entry points.
// Types: int -> i32, int64_t -> i64 (pass a bigint), float -> f32, double -> f64,
// pointers -> "pointer" (device memory), except parameters named host_* -> "buffer" (a host
// TypedArray: out-params, strings).

type Native = "i32" | "i64" | "f32" | "f64" | "pointer" | "buffer";
export interface AbiFunction {
  name: string;
  params: { type: Native; name: string }[];
}

const HEADER_URL = new URL("./kernels.h", import.meta.url);

export function parseKernelsHeader(text: string, file = "cuda/kernels.h"): AbiFunction[] {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, " ").replace(/\/\/.*$/gm, " ");
  const out: AbiFunction[] = [];
  const re = /MN_API\s+int\s+(\w+)\s*\(([^)]*)\)\s*;/g;
  for (const m of code.matchAll(re)) {
    const [, name, rawParams] = m;
    const params = rawParams.trim() === "" || rawParams.trim() === "void"
      ? []
      : rawParams.split(",").map((p) => parseParam(p.trim(), name, file));
    out.push({ name, params });
  }
  if (out.length === 0) throw new Error(`${file}: no MN_API declarations found`);
  return out;
}

function parseParam(p: string, fn: string, file: string): { type: Native; name: string } {
  const m = /^(?:const\s+)?([A-Za-z_][\w]*)\s*(\**)\s*([A-Za-z_]\w*)$/.exec(p.replace(/\s+/g, " "));
  if (!m) throw new Error(`${file}: cannot parse parameter "${p}" of ${fn}`);
  const [, base, stars, name] = m;
  if (stars) return { type: name.startsWith("host_") ? "buffer" : "pointer", name };
  const map: Record<string, Native> = { int: "i32", int64_t: "i64", float: "f32", double: "f64" };
  const type = map[base];
  if (!type) throw new Error(`${file}: ${fn}: parameter ${name} has unsupported type ${base}`);
  return { type, name };
}

export function kernelsHeaderSymbols(): Record<string, Deno.ForeignFunction> {
  const fns = parseKernelsHeader(Deno.readTextFileSync(HEADER_URL));
  const syms: Record<string, Deno.ForeignFunction> = {};
  for (const f of fns) syms[f.name] = { parameters: f.params.map((p) => p.type), result: "i32" };
  return syms;
}

export function kernelsHeaderFunctions(): AbiFunction[] {
  return parseKernelsHeader(Deno.readTextFileSync(HEADER_URL));
}

/** Integer constants of a header: every `#define NAME <int>` line (e.g. the MN_OP_* op codes). */
export function parseHeaderConstants(
  text: string,
  file = "cuda/kernels.h",
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^[ \t]*#define[ \t]+([A-Za-z_]\w*)[ \t]+(-?\d+)\b(?![.\w])/gm)) {
    const [, name, value] = m;
    if (name in out) throw new Error(`${file}: ${name} is defined twice`);
    out[name] = Number(value);
  }
  return out;
}

/** The `#define NAME <int>` constants of cuda/kernels.h, so TS never repeats their numbers. */
export function kernelsHeaderConstants(): Record<string, number> {
  return parseHeaderConstants(Deno.readTextFileSync(HEADER_URL));
}
