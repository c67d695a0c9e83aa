// Collectives: the "tcp" kind across 2 and 3 real processes (cuda/test/collective_worker.ts on the
// cpu backend), its failure modes (a mismatching agree(), a rank that never arrives, a rank 0 that
// is not there, a rank that dies mid-run), the "single" kind, and, with a GPU, "nccl" at world 1.
import assert from "node:assert/strict";
import { Backend, bf16ToF32, f32ToBf16, gpuVisible } from "./backend.ts";
import { findNccl, ncclInfo, openCollective, parseDistEnv } from "./collectives.ts";
import { fnv1a, N, rankData } from "./test/collective_worker.ts";

const WORKER = new URL("./test/collective_worker.ts", import.meta.url).pathname;
/** No test may take longer than this: a hang is killed and fails the test. */
const WATCHDOG_MS = 15_000;

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

interface RankResult {
  rank: number;
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Starts ranks `ranks` of a WORLD_SIZE=world job and collects their output. */
async function runRanks(
  world: number,
  extraEnv: Record<string, string>,
  ranks: number[] = [...Array(world).keys()],
): Promise<RankResult[]> {
  const port = String(freePort());
  const t0 = performance.now();
  const procs = ranks.map((rank) => {
    const cmd = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", WORKER],
      env: {
        RANK: String(rank),
        WORLD_SIZE: String(world),
        LOCAL_RANK: String(rank),
        MASTER_ADDR: "127.0.0.1",
        MASTER_PORT: port,
        MN_COLLECTIVE_TIMEOUT_MS: "10000",
        MN_COLLECTIVE: "",
        ...extraEnv,
      },
      stdout: "piped",
      stderr: "piped",
    });
    return cmd.spawn();
  });
  const timer = setTimeout(() => {
    for (const p of procs) {
      try {
        p.kill("SIGKILL");
      } catch { /* already exited */ }
    }
  }, WATCHDOG_MS);
  try {
    const outs = await Promise.all(procs.map((p) => p.output()));
    const ms = performance.now() - t0;
    const dec = new TextDecoder();
    return outs.map((o, i) => ({
      rank: ranks[i],
      code: o.code,
      stdout: dec.decode(o.stdout),
      stderr: dec.decode(o.stderr),
      ms,
    }));
  } finally {
    clearTimeout(timer);
  }
}

function describe(rs: RankResult[]): string {
  return rs.map((r) => `--- rank ${r.rank} (exit ${r.code})\n${r.stdout}${r.stderr}`).join("\n");
}

/** float32 sum over ranks in rank order, ((x0 + x1) + x2) ... */
function rankOrderSum(world: number, order = [...Array(world).keys()]): Float32Array {
  const acc = new Float32Array(N);
  const first = rankData(order[0]);
  acc.set(first);
  for (const r of order.slice(1)) {
    const x = rankData(r);
    for (let i = 0; i < N; i++) acc[i] += x[i];
  }
  return acc;
}

/** bf16 sum over ranks in rank order, each addition in float32 rounded to bf16 (as NCCL's) */
function rankOrderSumBf16(world: number): Uint16Array {
  let acc = f32ToBf16(rankData(0));
  for (let r = 1; r < world; r++) {
    const a = bf16ToF32(acc), x = bf16ToF32(f32ToBf16(rankData(r)));
    acc = f32ToBf16(a.map((v, i) => v + x[i]));
  }
  return acc;
}

for (const world of [2, 3]) {
  Deno.test(`collectives tcp: ${world} processes reduce, broadcast and agree identically`, async () => {
    const rs = await runRanks(world, { MN_TEST_SCENARIO: "ops" });
    for (const r of rs) assert.equal(r.code, 0, describe(rs));
    const outs = rs.map((r) => JSON.parse(r.stdout.trim().split("\n").pop()!));
    const sum = rankOrderSum(world);
    const alpha = Math.fround(1 / world);
    const mean = sum.map((v) => Math.fround(alpha * v));
    for (const o of outs) {
      assert.equal(o.kind, "tcp");
      assert.equal(o.world, world);
      assert.deepEqual(o.sumHead, Array.from(sum.subarray(0, 4)), `rank ${o.rank} sum head`);
      assert.equal(o.sumHash, fnv1a(sum), `rank ${o.rank} sum differs from the rank-order sum`);
      assert.deepEqual(o.meanHead, Array.from(mean.subarray(0, 4)));
      assert.equal(o.meanHash, fnv1a(mean), `rank ${o.rank} mean`);
      assert.equal(o.bf16Hash, fnv1a(rankOrderSumBf16(world)), `rank ${o.rank} bf16 sum`);
      assert.equal(o.bcastHash, fnv1a(rankData(100 + world - 1)), `rank ${o.rank} broadcast`);
      assert.deepEqual(o.bcastI32, [0, 0, 1 << 30, 0]);
      assert.equal(o.agreed, `cfg-${world}`);
      // bit-identical on every rank
      assert.equal(o.sumHash, outs[0].sumHash);
      assert.equal(o.meanHash, outs[0].meanHash);
    }
    if (world === 3) {
      // Rank order is what makes elements 0 and 1 exactly 0; another order gives 1.
      assert.deepEqual(outs[0].sumHead.slice(0, 2), [0, 0]);
      assert.equal(rankOrderSum(3, [0, 2, 1])[0], 1);
      assert.equal(rankOrderSum(3, [1, 2, 0])[1], 1);
    }
  });
}

Deno.test("collectives tcp: agree() with a differing rank fails on every rank, naming it", async () => {
  const rs = await runRanks(3, { MN_TEST_SCENARIO: "agree", MN_TEST_BAD_RANK: "2" });
  for (const r of rs) {
    assert.equal(r.code, 1, describe(rs));
    assert.match(
      r.stderr,
      /agree\(config hash\): rank 2 differs from rank 0 \(rank 0: "cfg-A"; rank 2: "cfg-B"\)/,
      describe(rs),
    );
  }
});

Deno.test("collectives tcp: a rank that never connects fails rank 0 after the timeout", async () => {
  const rs = await runRanks(3, { MN_TEST_SCENARIO: "join", MN_COLLECTIVE_TIMEOUT_MS: "1200" }, [
    0,
    1,
  ]);
  const [r0, r1] = rs;
  assert.equal(r0.code, 1, describe(rs));
  assert.match(
    r0.stderr,
    /rank 0\/3\): timed out after 1200 ms waiting for rank\(s\) 2 of WORLD_SIZE=3 to connect to port \d+ \(MASTER_ADDR:MASTER_PORT=127\.0\.0\.1:\d+\)/,
  );
  assert.equal(r0.stderr.trim().split("\n").length, 1, "one line");
  // The rank that did arrive learns why.
  assert.equal(r1.code, 1, describe(rs));
  assert.match(r1.stderr, /rank 1\/3\): aborted by rank 0: timed out .* rank\(s\) 2 /);
  assert.ok(r0.ms < 8000, `took ${r0.ms} ms`);
});

Deno.test("collectives tcp: a rank that cannot reach rank 0 names MASTER_ADDR:MASTER_PORT", async () => {
  const rs = await runRanks(2, { MN_TEST_SCENARIO: "join", MN_COLLECTIVE_TIMEOUT_MS: "800" }, [1]);
  assert.equal(rs[0].code, 1, describe(rs));
  assert.match(
    rs[0].stderr,
    /rank 1\/2\): cannot connect to rank 0 at MASTER_ADDR:MASTER_PORT=127\.0\.0\.1:\d+ within 800 ms \(last error: Connection refused\)/,
  );
  assert.ok(rs[0].ms < 8000, `took ${rs[0].ms} ms`);
});

Deno.test("collectives tcp: a rank that dies mid-run fails the others, no hang", async () => {
  const rs = await runRanks(3, { MN_TEST_SCENARIO: "crash", MN_TEST_CRASH_RANK: "2" });
  const [r0, r1, r2] = rs;
  assert.equal(r2.code, 3, describe(rs));
  assert.equal(r0.code, 1, describe(rs));
  assert.match(r0.stderr, /rank 0\/3\): rank 2 disconnected during allReduceSum #2/);
  assert.equal(r1.code, 1, describe(rs));
  assert.match(
    r1.stderr,
    /rank 1\/3\): aborted by rank 0: rank 2 disconnected during allReduceSum #2/,
  );
  assert.ok(r0.ms < 8000, `took ${r0.ms} ms`);
});

Deno.test("collectives tcp: rank 0 dying is seen by the other rank", async () => {
  const rs = await runRanks(2, { MN_TEST_SCENARIO: "crash", MN_TEST_CRASH_RANK: "0" });
  assert.equal(rs[0].code, 3, describe(rs));
  assert.equal(rs[1].code, 1, describe(rs));
  assert.match(rs[1].stderr, /rank 1\/2\): rank 0 disconnected during allReduceSum #2/);
});

Deno.test("collectives tcp: ranks calling different collectives fail with both names", async () => {
  const rs = await runRanks(2, { MN_TEST_SCENARIO: "mismatch" });
  for (const r of rs) {
    assert.equal(r.code, 1, describe(rs));
    assert.match(r.stderr, /rank 1 called broadcast #1 while rank 0 called allReduceSum #1/);
  }
});

Deno.test("collectives tcp: a silent peer fails after MN_COLLECTIVE_OP_TIMEOUT_MS", async () => {
  const rs = await runRanks(2, {
    MN_TEST_SCENARIO: "slow",
    MN_TEST_SLEEP_MS: "2500",
    MN_COLLECTIVE_OP_TIMEOUT_MS: "400",
  });
  assert.equal(rs[0].code, 1, describe(rs));
  assert.match(rs[0].stderr, /rank 1 did not respond for 400 ms during allReduceSum #1/);
  // The sleeper wakes to find rank 0 gone, with its reason.
  assert.equal(rs[1].code, 1, describe(rs));
  assert.match(rs[1].stderr, /rank 1\/2\): (aborted by rank 0|rank 0 disconnected)/);
});

Deno.test({
  name: "collectives nccl: the library's bindings load (where libnccl is found)",
  ignore: findNccl() === null,
  fn() {
    const { path, version } = ncclInfo();
    assert.match(path, /libnccl\.so/);
    assert.ok(version >= 20000, `ncclGetVersion ${version}`);
  },
});

function cpuBackend(): Backend {
  return Backend.open({ name: "cpu" });
}

Deno.test("collectives: world 1 is a no-op 'single' collective", () => {
  const be = cpuBackend();
  try {
    const c = openCollective(be, { WORLD_SIZE: "1" });
    assert.equal(c.kind, "single");
    assert.equal(c.rank, 0);
    assert.equal(c.world, 1);
    const x = new Float32Array([1.5, -2, 3e-7, 1e8]);
    const t = be.upload(x);
    c.allReduceSum(t);
    c.allReduceMean(t);
    c.broadcast(t, 0);
    c.barrier();
    assert.deepEqual(be.download(t), x);
    assert.equal(c.agree("anything", "config hash"), "anything");
    assert.throws(() => c.broadcast(t, 1), /root 1 is not a rank of WORLD_SIZE=1/);
    assert.throws(() => c.allReduceSum(be.upload(new Int32Array(2))), /only f32/);
    c.destroy();
    // A forced "tcp" collective of one rank needs no network and changes nothing either.
    const tcp = openCollective(be, { WORLD_SIZE: "1" }, { kind: "tcp" });
    assert.equal(tcp.kind, "tcp");
    tcp.allReduceMean(t);
    tcp.broadcast(t, 0);
    assert.deepEqual(be.download(t), x);
    assert.equal(tcp.agree("v", "w"), "v");
    tcp.destroy();
  } finally {
    be.close();
  }
});

Deno.test("collectives: the launch environment is checked", () => {
  assert.deepEqual(parseDistEnv({}), {
    rank: 0,
    world: 1,
    localRank: 0,
    masterAddr: "127.0.0.1",
    masterPort: 29500,
  });
  assert.deepEqual(
    parseDistEnv({
      RANK: "3",
      WORLD_SIZE: "4",
      LOCAL_RANK: "1",
      MASTER_ADDR: "node7",
      MASTER_PORT: "1234",
    }),
    { rank: 3, world: 4, localRank: 1, masterAddr: "node7", masterPort: 1234 },
  );
  assert.throws(() => parseDistEnv({ RANK: "2", WORLD_SIZE: "2" }), /RANK=2 is out of range/);
  assert.throws(() => parseDistEnv({ WORLD_SIZE: "two" }), /WORLD_SIZE=two: expected an integer/);
  assert.throws(() => parseDistEnv({ MASTER_PORT: "70000" }), /not a TCP port/);
  const be = cpuBackend();
  try {
    assert.throws(
      () => openCollective(be, { WORLD_SIZE: "1" }, { kind: "nccl" }),
      /"nccl" needs the cuda backend/,
    );
    assert.throws(() => openCollective(be, { MN_COLLECTIVE: "mpi" }), /MN_COLLECTIVE=mpi/);
  } finally {
    be.close();
  }
});

// The "nccl" kind's teardown on error paths, against a stand-in libnccl whose ncclCommDestroy never
// returns (as NCCL's waits for a peer rank that died): each failure must end in ncclCommAbort.
const FAKE_NCCL = new URL("./build/libfake_nccl.so", import.meta.url).pathname;
Deno.test("collectives nccl: an error aborts the communicator (ncclCommAbort), never waits in ncclCommDestroy", async () => {
  const run = async (env: Record<string, string>) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./test/fake_nccl_run.ts", import.meta.url).pathname],
      env: { MN_NCCL: FAKE_NCCL, FAKE_NCCL_PEER_DEAD: "1", ...env },
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    const calls = new TextDecoder().decode(out.stderr).split("\n")
      .filter((l) => l.startsWith("fake-nccl: ")).map((l) => l.slice(11));
    assert.equal(out.code, 0, text + new TextDecoder().decode(out.stderr));
    return { text, calls };
  };
  // no failure: the ordinary teardown
  const ok = await run({ FAKE_NCCL_PEER_DEAD: "0" });
  assert.match(ok.text, /^allReduceSum: ok\ndestroy: ok$/m);
  assert.deepEqual(ok.calls, ["ncclCommInitRank", "ncclAllReduce", "ncclCommDestroy"]);
  const remote =
    /ncclAllReduce\(.*\) failed: remote process exited or there was a network error \[ncclResult_t 6\]/;
  // the call itself fails; the teardown after it has nothing left to do
  const failed = await run({ FAKE_NCCL_ALLREDUCE_RESULT: "6" });
  assert.match(
    failed.text,
    new RegExp(`^allReduceSum: collective \\(rank 0/1\\): ${remote.source}`, "m"),
  );
  assert.match(failed.text, /^destroy: ok$/m);
  assert.deepEqual(failed.calls, ["ncclCommInitRank", "ncclAllReduce", "ncclCommAbort"]);
  // an enqueued operation fails later (a peer died): reported by the call's own check
  const async = await run({ FAKE_NCCL_ASYNC_ERROR: "6" });
  assert.match(
    async.text,
    new RegExp(`^allReduceSum: collective \\(rank 0/1\\): ${remote.source}`, "m"),
  );
  assert.deepEqual(async.calls, ["ncclCommInitRank", "ncclAllReduce", "ncclCommAbort"]);
  // ... or only seen at destroy()
  const late = await run({ FAKE_NCCL_ASYNC_ERROR: "6", FAKE_NCCL_ASYNC_FROM: "2" });
  assert.match(late.text, /^allReduceSum: ok$/m);
  assert.match(
    late.text,
    /^destroy: collective \(rank 0\/1\): destroy failed: remote process exited/m,
  );
  assert.deepEqual(late.calls, ["ncclCommInitRank", "ncclAllReduce", "ncclCommAbort"]);
});

const HAS_NCCL = gpuVisible() && findNccl() !== null;
Deno.test({
  name: "collectives nccl (GPU): world-1 communicator all-reduces and broadcasts in place",
  ignore: !HAS_NCCL,
  fn() {
    const be = Backend.open({ name: "cuda" });
    try {
      const c = openCollective(be, { RANK: "0", WORLD_SIZE: "1" }, { kind: "nccl" });
      assert.equal(c.kind, "nccl");
      const x = rankData(0, 1 << 20);
      const t = be.upload(x);
      c.allReduceSum(t);
      c.allReduceMean(t);
      const y = be.upload(new Int32Array([7, -1, 1 << 30]));
      c.broadcast(y, 0);
      c.barrier();
      assert.equal(fnv1a(be.download(t)), fnv1a(x));
      assert.deepEqual(be.download(y), new Int32Array([7, -1, 1 << 30]));
      assert.match(c.agree("h", "config hash"), /^h$/);
      c.destroy();
      assert.throws(() => c.allReduceSum(t), /after destroy/);
    } finally {
      be.close();
    }
  },
});
