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
