// The step-cost tool is only as good as its trace: the dry backend must make exactly the calls a real
// run makes (same functions, integer arguments and allocation sizes, in order), and its allocator
// count must be the real one. Also: the record configs' peak device memory stays under the budgets
// below, so a change cannot grow it silently (lower them as the memory issues land).
import assert from "node:assert/strict";
import { kernelsHeaderFunctions } from "../cuda/abi.ts";
import { Backend } from "../cuda/backend.ts";
import { hostTransfer } from "../cuda/cost_model.ts";
import type { TraceEvent, TraceFile } from "../cuda/dry.ts";
import { dryTrace, RECORD_RUNS, stepCalls, syntheticShards } from "./step_cost.ts";

const ROOT = new URL("../", import.meta.url).pathname;

// Peak device memory of one rank at the record configs (bytes, our allocator = what the cuda
// backend allocates; the H200 run of 2026-12-04 measured 117,880 MiB for RWKV-7 --fast_cuda at
// device_bsz 32, the dry run gives the same count). Today's figures + ~1%.
export const PEAK_BUDGET: Record<string, number> = {
  // 43.9 GB: the fused time mix with bf16 LoRA/projection/gate/mv outputs and gradients,
  // first-write gradients, backward scratch back to the pool, the bf16 MLP and ln2, bf16 logits,
  // bf16 LoRA hidden layers, the mix + ln1 backward fused (no saved sum) (123.6 GB at first)
  "rwkv7 --fast_cuda": 44.4e9,
  // 36.8 GB with the fused blocks, bf16 logits, the bf16 MLP, bf16 q/k/v as one GEMM, bf16
  // attention in/out and gradients, bf16 projections into the folded residual (85.1 GB --unfused)
  "gpt2": 37.2e9,
  "rwkv6": 35e9, // 34.6 GB with the fused time mix, bf16 gate and the bf16 MLP (76.9 GB --unfused)
};

// runtime calls whose arguments or presence differ by backend (device setup, names, errors)
const RUNTIME = new Set([
  "mn_backend_name",
  "mn_last_error",
  "mn_device_count",
  "mn_device_name",
  "mn_set_device",
  "mn_gemm_init",
  "mn_gemm_provider",
  "mn_stream_create",
  "mn_stream_destroy",
  "mn_mem_get_info",
]);

/** "fn(int args)" per call up to the mark `until`, pointers and floats left out. */
function callSignatures(t: TraceFile, until: string): string[] {
  const abi = new Map(kernelsHeaderFunctions().map((f) => [f.name, f]));
  const out: string[] = [];
  for (const e of t.events as TraceEvent[]) {
    if ("mark" in e) {
      if (e.mark === until) return out;
      out.push(`mark ${e.mark}`);
      continue;
    }
    if ("coll" in e) {
      out.push(`${e.coll}(${e.bytes})`);
      continue;
    }
    const fn = t.functions[e.c];
    if (RUNTIME.has(fn)) continue;
    const params = abi.get(fn)!.params;
    const ints = e.a.filter((_, j) => params[j].type === "i32" || params[j].type === "i64");
    out.push(`${fn}(${ints.join(",")})`);
  }
  throw new Error(`trace has no mark "${until}"`);
}

const TINY_RWKV = [
  "--n_layer",
  "2",
  "--n_embd",
  "64",
  "--headsz",
  "16",
  "--vocab_size",
  "512",
];
const TINY_GPT = ["--n_layer", "2", "--n_embd", "64", "--n_head", "2", "--vocab_size", "512"];
const VARIANTS: [string, string[]][] = [
  ["train_rwkv7.ts", [...TINY_RWKV, "--fast_cuda"]],
  ["train_rwkv7.ts", [...TINY_RWKV, "--wind_cuda"]],
  ["train_rwkv7.ts", TINY_RWKV],
  ["train_rwkv6.ts", TINY_RWKV],
  ["train_rwkv6.ts", [...TINY_RWKV, "--fla_cuda"]],
  ["train_rwkv6.ts", [...TINY_RWKV, "--unfused"]],
  ["train_gpt2.ts", TINY_GPT],
  ["train_gpt2.ts", [...TINY_GPT, "--cuda_core_attention"]],
  ["train_gpt2.ts", [...TINY_GPT, "--unfused"]],
];

function run(script: string, args: string[], env: Record<string, string>) {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    env: { WORLD_SIZE: "1", RANK: "0", LOCAL_RANK: "0", ...env },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, `${script} ${args.join(" ")}: exit ${out.code}\n${text.slice(-2000)}`);
}

Deno.test("step_cost: the dry backend makes the same calls as a cpu run (every trainer and kernel variant, tiny configs)", () => {
  const tmp = Deno.makeTempDirSync({ prefix: "dry_vs_cpu_" });
  try {
    const shards = syntheticShards(`${tmp}/shards`, 40_000, 4_000, 512);
    for (const [script, flags] of VARIANTS) {
      // 2 micro-steps of 2 x 32 per step; the steps 0 and 1 and the val pass before them compared
      const args = [
        ...flags,
        "--sequence_length",
        "32",
        "--device_bsz",
        "2",
        "--bsz",
        "4",
        "--num_iterations",
        "2",
        "--warmdown_iters",
        "1",
        "--val_loss_every",
        "0",
        "--val_tokens",
        "128",
        "--random_seed",
        "3",
        "--input_bin",
        shards.train,
        "--input_val_bin",
        shards.val,
        "--log_dir",
        `${tmp}/logs`,
      ];
      run(script, [...args, "--backend", "cpu"], { MN_TRACE: `${tmp}/cpu.json` });
      run(script, [...args, "--backend", "dry"], {
        MN_TRACE: `${tmp}/dry.json`,
        MN_DRY_STOP_AT: "step 2",
      });
      const cpu = callSignatures(JSON.parse(Deno.readTextFileSync(`${tmp}/cpu.json`)), "step 2");
      const dry = callSignatures(JSON.parse(Deno.readTextFileSync(`${tmp}/dry.json`)), "step 2");
      const first = cpu.findIndex((s, i) => s !== dry[i]);
      assert.ok(cpu.length > 100, `${script}: only ${cpu.length} calls traced`);
      assert.equal(
        first === -1 && cpu.length === dry.length ? -1 : first,
        -1,
        `${script} ${flags.join(" ")}: call ${first} differs: cpu ${cpu[first]} vs dry ${
          dry[first]
        } ` +
          `(${cpu.length} vs ${dry.length} calls)`,
      );
    }
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
});

Deno.test("step_cost: dry allocator counts like a real one; host-only size queries are answered", () => {
  const be = Backend.open({ name: "dry" });
  const a = be.alloc([1000], "f32");
  const b = be.alloc([10, 10], "bf16");
  assert.notEqual(Deno.UnsafePointer.value(a.ptr), Deno.UnsafePointer.value(b.ptr));
  be.free(a);
  const c = be.alloc([2000], "f32");
  assert.equal(be.peakBytes, 200 + 8000);
  assert.equal(be.bytesInUse, 200 + 8000);
  be.k.mn_add(c.ptr, c.ptr, c.ptr, c.n, be.stream);
  const calls = be.trace!.events.filter((e) => "c" in e).map((e) =>
    be.trace!.functions[(e as { c: number }).c]
  );
  assert.deepEqual(calls.filter((f) => f === "mn_malloc" || f === "mn_add"), [
    "mn_malloc",
    "mn_malloc",
    "mn_malloc",
    "mn_add",
  ]);
  // the chunked WKV-6 workspace sizes come from the cpu reference, as a real run gets them
  const cpu = Backend.open({ name: "cpu" });
  const [x, y] = [new BigInt64Array(1), new BigInt64Array(1)];
  const [u, v] = [new BigInt64Array(1), new BigInt64Array(1)];
  be.k.mn_wkv6_chunked_sizes(x, y, 2, 64, 3, 16);
  cpu.k.mn_wkv6_chunked_sizes(u, v, 2, 64, 3, 16);
  assert.deepEqual([x[0], y[0]], [u[0], v[0]]);
  assert.ok(x[0] > 0n);
  cpu.close();
});

// Issue #16: a step the host never waits on (the one wait: the logged loss) and whose multi-GPU
// traffic is a few bucketed all-reduces plus Muon's one, not one collective per tensor.
const MAX_SYNCS_PER_STEP = 1;
const MAX_COLLECTIVES_PER_STEP = 10;
// Issue #14: backward overwrites each activation gradient on its first write, so a step zeroes no
// activation gradient; its memsets are the flat parameter gradients, the second micro-step's
// parameter gradients (GradAccumulator) and Muon's flat update buffer.
const MAX_MEMSETS_PER_STEP = 3;

Deno.test("step_cost: record configs (dry runs, rank 0 of 8): peak memory within the budget, at most one host sync and 10 collectives a step, one Adam launch per group, no activation-gradient memset", () => {
  const tmp = Deno.makeTempDirSync({ prefix: "peak_" });
  try {
    const shards = syntheticShards(`${tmp}/shards`);
    for (const [name, budget] of Object.entries(PEAK_BUDGET)) {
      const spec = RECORD_RUNS.find((r) => r.name === name)!;
      const { peak, calls, colls, gradMemsets } = stepCalls(dryTrace(spec, shards, tmp));
      const memsets = calls.filter(({ fn }) => fn === "mn_memset").length;
      const syncs = calls.filter(({ fn, a }) => hostTransfer(fn, a)?.sync).length;
      const adam = calls.filter(({ fn }) =>
        fn === "mn_adam_step" || fn.startsWith("mn_adam_multi_step")
      );
      console.log(
        `  ${name}: ${syncs} host sync(s), ${colls.length} collectives, ${adam.length} Adam launches`,
      );
      assert.ok(syncs <= MAX_SYNCS_PER_STEP, `${name}: ${syncs} host syncs in a step`);
      assert.ok(colls.length <= MAX_COLLECTIVES_PER_STEP, `${name}: ${colls.length} collectives`);
      assert.ok(adam.every(({ fn }) => fn === "mn_adam_multi_step_dev") && adam.length <= 5, name);
      console.log(`  ${name}: ${memsets} memsets, ${gradMemsets} of activation gradients`);
      assert.equal(gradMemsets, 0, `${name}: activation gradients zeroed in a step`);
      assert.ok(memsets <= MAX_MEMSETS_PER_STEP, `${name}: ${memsets} memsets in a step`);
      console.log(
        `  ${name}: peak ${(peak / 1e9).toFixed(2)} GB (budget ${(budget / 1e9).toFixed(0)} GB)`,
      );
      assert.ok(peak <= budget, `${name}: peak ${peak} bytes exceeds the budget ${budget}`);
      assert.ok(
        peak > budget / 4,
        `${name}: peak ${peak} implausibly small (is the trace complete?)`,
      );
    }
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
});

Deno.test("step_cost --peak: the pools' allocation sites fit in the peak (the rest, outside the tape, is not negative) and name the model's lines", () => {
  const tmp = Deno.makeTempDirSync({ prefix: "peak_sites_" });
  try {
    const shards = syntheticShards(`${tmp}/shards`);
    const spec = RECORD_RUNS.find((r) => r.name === "rwkv7 --fast_cuda")!;
    const t = dryTrace(spec, shards, tmp, true);
    const sites = t.peakSites ?? [];
    const sum = sites.reduce((a, [, b]) => a + b, 0);
    assert.equal(sum, t.peakBytes, "the sites (live, idle, the rest) sum to the peak");
    assert.ok(sites.length > 10 && sites.every(([, b]) => b >= 0), "no negative share");
    // WKV-7's saved states are the largest activation of the fast kernel (fp32, every 16 steps)
    assert.match(sites[0][0], /^train_rwkv7\.ts:\d+ wkv7\.s \(f32\)$/);
    assert.equal(dryTrace(spec, shards, tmp).peakSites, undefined, "sites only when asked");
  } finally {
    Deno.removeSync(tmp, { recursive: true });
  }
});

Deno.test("step_cost: bad flags and files end in one error line naming the flag, without a dry run", () => {
  const bad = Deno.makeTempFileSync({ suffix: ".json" });
  try {
    Deno.writeTextFileSync(bad, "not json\n");
    const cases: [string[], number, RegExp][] = [
      [["--device_bsz", "48"], 2, /^error: --device_bsz 48: expected a divisor of 64 /],
      [["--device_bsz=-1"], 2, /^error: --device_bsz -1: expected a positive integer/],
      [["--device_bsz"], 2, /^error: Option '--device_bsz <value>' argument missing/],
      [["--bogus"], 2, /^error: Unknown option '--bogus'/],
      [["--peak", "0"], 2, /^error: --peak 0: expected a positive integer/],
      [["--top", "x"], 2, /^error: --top x: expected a positive integer/],
      [["--hw", "V100"], 2, /^error: --hw V100: expected one of H100, /],
      [["--only", "nosuch"], 2, /^error: --only nosuch: no config matches /],
      [["--measured", `${bad}.missing`], 1, /^error: --measured .*: cannot read the profile/],
      [["--measured", bad], 1, /^error: --measured .*: not a MN_PROFILE_JSON file/],
    ];
    for (const [args, code, msg] of cases) {
      const out = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "bench/step_cost.ts", ...args],
        cwd: ROOT,
        env: { NO_COLOR: "1" },
        stdout: "piped",
        stderr: "piped",
      }).outputSync();
      const err = new TextDecoder().decode(out.stderr).trim();
      assert.equal(out.code, code, `${args.join(" ")}: exit ${out.code}: ${err}`);
      assert.match(err, msg, args.join(" "));
      assert.equal(err.split("\n").length, 1, `${args.join(" ")}: more than one line: ${err}`);
    }
  } finally {
    Deno.removeSync(bad);
  }
});
