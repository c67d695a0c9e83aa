// One rank of a multi-process collectives test (cuda/collectives_test.ts starts 1-3 of these with
// RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). MN_TEST_SCENARIO picks what it does:
//   ops    allReduceSum (f32 and bf16), allReduceMean, broadcast (f32 and i32), agree, barrier;
//          prints one JSON line
//   agree  agree() on "cfg-A", except rank $MN_TEST_BAD_RANK, which says "cfg-B"
//   crash  one allReduceSum, then rank $MN_TEST_CRASH_RANK exits (code 3) and the others reduce again
//   join   the rendezvous only
//   mismatch  rank 1 broadcasts while the others all-reduce
//   slow   rank 1 sleeps $MN_TEST_SLEEP_MS before its allReduceSum
// Errors go to stderr as one line, "worker rank R: <message>", with exit code 1.
import { f32ToBf16, openBackend } from "../backend.ts";
import { openCollective } from "../collectives.ts";

/** Elements per rank: 1 MiB of float32, more than a socket buffer holds, so transfers are partial. */
export const N = 1 << 18;

/**
 * Rank r's data. Elements 0 and 1 are order-sensitive in float32: rank 0, 1, 2 contribute
 * (1e8, 1, -1e8) and (1, 1e8, -1e8): summed in rank order both give 0, since 1e8 + 1 rounds to 1e8
 * (float32 spacing there is 8), while (1e8 + -1e8) + 1 would give 1.
 */
export function rankData(rank: number, n = N): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.sin(i * 0.37 + rank * 1.3) * (rank + 1) * 1000 + i % 7;
  a[0] = [1e8, 1, -1e8][rank] ?? rank;
  a[1] = [1, 1e8, -1e8][rank] ?? rank;
  return a;
}

/** FNV-1a over the bytes of a typed array, as 8 hex digits. */
export function fnv1a(a: ArrayBufferView): string {
  const b = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  let h = 0x811c9dc5;
  for (let i = 0; i < b.length; i++) {
    h ^= b[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}

function main() {
  const env = Deno.env.toObject();
  const scenario = env.MN_TEST_SCENARIO ?? "ops";
  const be = openBackend({ name: env.MN_TEST_BACKEND ?? "cpu" });
  const comm = openCollective(be, env);
  const { rank, world } = comm;
  if (scenario === "join") {
    console.log(JSON.stringify({ rank, world, kind: comm.kind }));
  } else if (scenario === "agree") {
    const bad = Number(env.MN_TEST_BAD_RANK);
    comm.agree(rank === bad ? "cfg-B" : "cfg-A", "config hash");
    console.log(JSON.stringify({ rank, agreed: true }));
  } else if (scenario === "crash") {
    const t = be.upload(rankData(rank, 1024));
    comm.allReduceSum(t);
    if (rank === Number(env.MN_TEST_CRASH_RANK)) Deno.exit(3);
    comm.allReduceSum(t);
    console.log(JSON.stringify({ rank, survived: true }));
  } else if (scenario === "mismatch") {
    const t = be.upload(rankData(rank, 16));
    if (rank === 1) comm.broadcast(t, 0);
    else comm.allReduceSum(t);
  } else if (scenario === "slow") {
    const t = be.upload(rankData(rank, 16));
    if (rank === 1) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(env.MN_TEST_SLEEP_MS));
    }
    comm.allReduceSum(t);
  } else if (scenario === "ops") {
    const t = be.upload(rankData(rank));
    comm.allReduceSum(t);
    const sum = be.download(t) as Float32Array;
    const m = be.upload(rankData(rank));
    comm.allReduceMean(m);
    const mean = be.download(m) as Float32Array;
    const h = be.upload(f32ToBf16(rankData(rank)), [N], "bf16");
    comm.allReduceSum(h);
    const bf16Sum = be.download(h) as Uint16Array;
    const root = world - 1;
    const b = be.upload(rankData(100 + rank));
    comm.broadcast(b, root);
    const bi = be.upload(new Int32Array([rank, -rank, 1 << 30, rank * 7]));
    comm.broadcast(bi, 0);
    const agreed = comm.agree(`cfg-${world}`, "config hash");
    comm.barrier();
    console.log(JSON.stringify({
      rank,
      world,
      kind: comm.kind,
      sumHead: Array.from(sum.subarray(0, 4)),
      sumHash: fnv1a(sum),
      meanHead: Array.from(mean.subarray(0, 4)),
      meanHash: fnv1a(mean),
      bf16Hash: fnv1a(bf16Sum),
      bcastHash: fnv1a(be.download(b)),
      bcastI32: Array.from(be.download(bi)),
      agreed,
    }));
  } else {
    throw new Error(`MN_TEST_SCENARIO=${scenario}: unknown`);
  }
  comm.destroy();
  be.close();
}

if (import.meta.main) {
  try {
    main();
  } catch (e) {
    console.error(`worker rank ${Deno.env.get("RANK") ?? "?"}: ${(e as Error).message}`);
    Deno.exit(1);
  }
}
