// run_rwkv7.sh: flag passing, process layout, the no-GPU default, errors.
import assert from "node:assert/strict";
import { gpuVisible } from "./cuda/backend.ts";

const ROOT = new URL(".", import.meta.url).pathname;

function launch(args: string[], env: Record<string, string> = {}) {
  const out = new Deno.Command("bash", {
    args: ["run_rwkv7.sh", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).outputSync();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

Deno.test({
  name: "launcher: without a GPU, one line says so and the cpu demo config runs on Brown",
  ignore: gpuVisible(),
  fn() {
    const r = launch(["--dry_run", "--fast_cuda"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /^no GPU visible: running the small CPU demo on the Brown corpus/m);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 1, "one process");
    assert.match(lines[0], /^RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 /);
    assert.match(
      lines[0],
      /train_rwkv7\.ts --backend cpu --input_bin data\/brown\/brown_train_\\\*\.bin/,
    );
    assert.match(lines[0], /--fast_cuda\s*$/);
  },
});

Deno.test({
  name: "launcher: without a GPU, the cpu demo splits its global batch over --nproc_per_node",
  ignore: gpuVisible(),
  fn() {
    const r = launch(["--dry_run", "--fast_cuda", "--nproc_per_node", "2"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stderr,
      /^CPU demo over 2 processes: --device_bsz 4 each \(global --bsz 8 unchanged\)$/m,
    );
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 2);
    for (const l of lines) assert.match(l, / --device_bsz 4 --bsz 8 /);
    // a batch set on the command line is left alone (the trainer checks it)
    const own = launch(["--dry_run", "--nproc_per_node", "3", "--bsz", "6", "--device_bsz", "2"]);
    assert.equal(own.code, 0, own.stderr);
    assert.match(own.stdout, / --device_bsz 8 --bsz 8 .* --bsz 6 --device_bsz 2\s*$/m);
    const odd = launch(["--dry_run", "--nproc_per_node", "3"]);
    assert.equal(odd.code, 2);
    assert.match(
      odd.stderr,
      /^error: the CPU demo's --bsz 8 does not split over 3 processes: choose a process count that divides it, or pass --bsz and --device_bsz$/m,
    );
  },
});

Deno.test("launcher: trainer flags pass through after the defaults (so they override them)", () => {
  const r = launch(["--dry_run", "--num_iterations", "7", "--headsz", "16", "--bsz=16"]);
  assert.equal(r.code, 0, r.stderr);
  const cmd = r.stdout.trim();
  assert.ok(cmd.indexOf("--num_iterations 7") > cmd.indexOf("--num_iterations 200"), cmd);
  assert.match(cmd, /--headsz 16 --bsz=16\s*$/);
});

Deno.test("launcher: --nproc_per_node and multi-node flags give torchrun's ranks and env", () => {
  const r = launch([
    "--dry_run",
    "--nproc_per_node",
    "3",
    "--nnodes",
    "2",
    "--node_rank",
    "1",
    "--master_addr",
    "10.1.2.3",
    "--master_port=4000",
    // without a GPU the cpu demo runs; its global batch of 8 does not split over 6 processes
    ...["--bsz", "12", "--device_bsz", "2"],
  ]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assert.equal(lines.length, 3);
  lines.forEach((l, i) => {
    assert.match(
      l,
      new RegExp(
        `^RANK=${3 + i} LOCAL_RANK=${i} WORLD_SIZE=6 MASTER_ADDR=10\\.1\\.2\\.3 MASTER_PORT=4000 `,
      ),
    );
  });
});

Deno.test("launcher: one rank per GPU, counting only those CUDA_VISIBLE_DEVICES leaves visible", () => {
  // a stand-in nvidia-smi that lists 8 GPUs, as on the record machines
  const bin = Deno.makeTempDirSync();
  const gpus = Array.from({ length: 8 }, (_, i) => `GPU ${i}: NVIDIA H100 (UUID: GPU-${i})`);
  Deno.writeTextFileSync(
    `${bin}/nvidia-smi`,
    `#!/bin/sh\nprintf '%s\\n' ${gpus.map((g) => `'${g}'`).join(" ")}\n`,
  );
  Deno.chmodSync(`${bin}/nvidia-smi`, 0o755);
  const path = `${bin}:${Deno.env.get("PATH")}`;
  const ranks = (env: Record<string, string>) => {
    const r = launch(["--dry_run"], { PATH: path, ...env });
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    for (const l of lines) assert.match(l, /train_rwkv7\.ts --backend cuda\s*$/);
    return lines.length;
  };
  assert.equal(ranks({}), 8);
  assert.equal(ranks({ CUDA_VISIBLE_DEVICES: "2,5" }), 2);
  assert.equal(ranks({ CUDA_VISIBLE_DEVICES: "0,1,2,3,4,5,6,7,8,9" }), 8, "never more than exist");
  Deno.removeSync(bin, { recursive: true });
});

Deno.test("launcher: bad launcher flags are one-line errors", () => {
  const cases: [string[], RegExp][] = [
    [["--nproc_per_node"], /--nproc_per_node needs a value/],
    [["--nproc_per_node", "two"], /launcher flags take non-negative integers, got 'two'/],
    [["--nnodes", "2", "--node_rank", "2"], /--node_rank 2 must be below --nnodes 2/],
    [["--nproc_per_node", "0"], /--nproc_per_node must be at least 1/],
  ];
  for (const [args, re] of cases) {
    const r = launch(["--dry_run", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
});

Deno.test("launcher: a trainer error comes back as the launcher's exit code with the message", () => {
  const r = launch(["--sequence_length", "40"]);
  assert.equal(r.code, 2, r.stdout + r.stderr);
  assert.match(r.stderr, /error: --sequence_length 40: must be a positive multiple of 16/);
});

const TINY_BROWN = [
  "--backend",
  "cpu",
  "--input_bin",
  "data/brown/brown_train_*.bin",
  "--input_val_bin",
  "data/brown/brown_val_*.bin",
  "--n_layer",
  "2",
  "--n_embd",
  "64",
  "--headsz",
  "16",
  "--sequence_length",
  "32",
  "--device_bsz",
  "2",
  "--random_seed",
  "3",
  "--warmdown_iters",
  "1",
  "--val_tokens",
  "1024",
];
const freePort = () => 20000 + Math.floor(Math.random() * 30000);

function ensureBrown() {
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "data/brown.ts"],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).outputSync();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
}

Deno.test("multi-process: 2 and 3 ranks (tcp collective, bucketed all-reduce) train bit-identically to 1 process with gradient accumulation", async () => {
  ensureBrown();
  // bsz 2 x world: `world` micro-steps of 2 x 32 on 1 process, one on each of `world` ranks: the
  // same batches, and the same per-batch gradients (the 1/world is in the loss scale), summed in the
  // same order: micro-step gradients are added whole, in micro-step order (GradAccumulator), as the
  // all-reduce adds the ranks' in rank order, each addition rounded to float32. So the weights and
  // the optimizer state must be bit-identical, on any BLAS, in the default bf16 path (where Muon's
  // bf16-rounded update would turn any last-bit difference into a visible one). val_tokens 1152:
  // 18, 9 or 6 val batches per rank, the same tokens every way; the val losses sum them in another
  // order (one process: all in turn; several: per rank, then all-reduced) and print 4 decimals:
  // one unit in the last printed place. Buckets of at most 0.25 MiB: the tiny model's blocks (~50 KB
  // each) make several, the 12.9 MB wte and lm_head one each.
  const common = [
    ...TINY_BROWN,
    ...["--num_iterations", "4", "--val_loss_every", "1", "--val_tokens", "1152"],
  ];
  const run = (world: number, bsz: number, extra: string[]) => {
    const port = String(freePort());
    return Promise.all(Array.from({ length: world }, (_, r) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "train_rwkv7.ts", ...common, "--bsz", String(bsz), ...extra],
        cwd: ROOT,
        env: { RANK: String(r), WORLD_SIZE: String(world), MASTER_PORT: port },
        stdout: "piped",
        stderr: "piped",
      }).output().then((o) => {
        assert.equal(o.code, 0, new TextDecoder().decode(o.stderr));
        return new TextDecoder().decode(o.stdout);
      })));
  };
  const vals = (out: string) => [...out.matchAll(/val_loss:([\d.]+)/g)].map((m) => Number(m[1]));
  const { readSafetensors } = await import("./cuda/safetensors.ts");
  const ck = (dir: string, suffix: string) => {
    const run = [...Deno.readDirSync(dir)].find((e) => e.isDirectory)!.name;
    return readSafetensors(`${dir}/${run}/state_step000004${suffix}`).tensors;
  };
  for (const world of [2, 3] as const) {
    const d1 = Deno.makeTempDirSync(), d = Deno.makeTempDirSync();
    const [one] = await run(1, 2 * world, ["--log_dir", d1]);
    const outs = await run(world, 2 * world, ["--log_dir", d, "--bucket_cap_mb", "0.25"]);
    assert.doesNotMatch(one, /gradient all-reduce/, "one process has no buckets");
    // the bucket layout, logged once by rank 0: lm_head first (backward's order), wte last
    const lines = outs[0].split("\n").filter((l) => l.startsWith("gradient all-reduce"));
    assert.equal(lines.length, 1, outs[0]);
    const m =
      /^gradient all-reduce: (\d+) bucket\(s\) of <= 0.25 MiB, in this order: #0 [\d.]+ MiB lm_head\.weight; .*transformer\.wte\.weight$/
        .exec(lines[0]);
    assert.ok(m && Number(m[1]) >= 4, lines[0]);
    for (const o of outs.slice(1)) assert.doesNotMatch(o, /gradient all-reduce/);
    // every other rank names its own device
    outs.slice(1).forEach((o, i) =>
      assert.match(
        o,
        new RegExp(`^rank ${i + 1}: device host CPU \\(cpu backend\\) \\(LOCAL_RANK 0\\)$`, "m"),
      )
    );
    const v1 = vals(one), v = vals(outs[0]);
    assert.equal(v1.length, 5);
    v1.forEach((x, i) =>
      assert.ok(
        Math.abs(x - v[i]) <= 1e-4 + 1e-9,
        `val loss at eval ${i}: 1 process ${x}, ${world} processes ${v[i]}`,
      )
    );
    let compared = 0;
    for (const suffix of [".safetensors", ".opt.safetensors"]) {
      const w1 = ck(d1, suffix), w = ck(d, suffix);
      assert.deepEqual([...w.keys()], [...w1.keys()]);
      for (const [name, t] of w1) {
        const a = t.data as Float32Array, b = w.get(name)!.data as Float32Array;
        const diff = a.findIndex((x, i) => !Object.is(x, b[i]));
        assert.equal(
          diff,
          -1,
          `${name}${suffix === ".safetensors" ? "" : " (optimizer state)"} after 4 steps: ` +
            `element ${diff} is ${a[diff]} with 1 process, ${b[diff]} with ${world}`,
        );
        compared += a.length;
      }
    }
    console.log(
      `  ${world} ranks, ${m![1]} buckets: val loss ${v.join(" ")} (1 process: ${v1.join(" ")}); ` +
        `${compared} weights and optimizer values bit-identical`,
    );
  }
});

Deno.test({
  name: "multi-process: ./run_rwkv7.sh --fast_cuda --nproc_per_node 2 runs the cpu demo on 2 ranks",
  ignore: gpuVisible(),
  fn() {
    ensureBrown();
    // the demo config, cut to one step and a small val set
    const r = launch(
      [
        "--fast_cuda",
        "--nproc_per_node",
        "2",
        ...["--num_iterations", "1", "--warmdown_iters", "1", "--val_tokens", "512"],
      ],
      { MASTER_PORT: String(freePort()) },
    );
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stderr, /^started ranks 0 1 of 2 /m);
    assert.doesNotMatch(r.stderr, /no such job/);
    assert.match(r.stdout, /^seed 1337; 1 micro-step\(s\) of 4x64 per step; backend cpu;/m);
    assert.match(r.stdout, /^summary: 1 steps in .* over 2 process\(es\)\); val loss /m);
  },
});

Deno.test("multi-process: a rank killed mid-run takes the whole launch down quickly, naming it", async () => {
  ensureBrown();
  const tag = crypto.randomUUID();
  const child = new Deno.Command("bash", {
    args: [
      "run_rwkv7.sh",
      "--nproc_per_node",
      "2",
      ...TINY_BROWN,
      "--bsz",
      "4",
      "--num_iterations",
      "200",
      "--val_loss_every",
      "0",
      "--bucket_cap_mb", // many buckets a step: the kill lands in or between all-reduces
      "0.25",
    ],
    cwd: ROOT,
    env: { MASTER_PORT: String(freePort()), NO_COLOR: "1", MN_TEST_LAUNCH: tag },
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // find rank 1 (a child of this launcher: its environment has our tag, and RANK=1) once training
  // runs; the tag keeps a concurrent test run's ranks on the same machine out of it
  let victim = 0;
  for (let i = 0; i < 300 && !victim; i++) {
    await new Promise((r) => setTimeout(r, 100));
    for (const e of Deno.readDirSync("/proc")) {
      if (!/^\d+$/.test(e.name)) continue;
      try {
        const env = Deno.readTextFileSync(`/proc/${e.name}/environ`).split("\0");
        const cmd = Deno.readTextFileSync(`/proc/${e.name}/cmdline`);
        if (
          env.includes(`MN_TEST_LAUNCH=${tag}`) && env.includes("RANK=1") &&
          cmd.includes("train_rwkv7.ts")
        ) victim = Number(e.name);
      } catch { /* gone or not ours */ }
    }
  }
  assert.ok(victim, "rank 1 never started");
  await new Promise((r) => setTimeout(r, 2000));
  const t0 = performance.now();
  Deno.kill(victim, "SIGKILL");
  const out = await child.output();
  const secs = (performance.now() - t0) / 1000;
  const err = new TextDecoder().decode(out.stderr);
  assert.notEqual(out.code, 0);
  assert.match(err, /error: rank [01] exited with code \d+; stopping the other ranks/);
  assert.ok(secs < 15, `launcher took ${secs.toFixed(1)} s to stop`);
  console.log(
    `  launcher exited ${out.code} ${secs.toFixed(1)} s after rank 1 was killed: ${
      err.split("\n").find((l) => l.startsWith("error: rank"))
    }`,
  );
});
