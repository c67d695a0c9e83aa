// One "nccl" collective over the cpu backend and the stand-in libnccl (cuda/test/fake_nccl.cpp,
// chosen by MN_NCCL; its failures by FAKE_NCCL_* variables): an all-reduce, then destroy() as a
// trainer's teardown would call it. Prints what each step did; started by cuda/collectives_test.ts.
import { Backend } from "../backend.ts";
import { openCollective } from "../collectives.ts";

const be = Backend.open({ name: "cpu" });
const port = String(20000 + Math.floor(Math.random() * 30000));
const c = openCollective(be, { RANK: "0", WORLD_SIZE: "1", MASTER_PORT: port }, {
  kind: "nccl",
  ncclOnHost: true,
});
const t = be.upload(new Float32Array([1, 2, 3]));
try {
  c.allReduceSum(t);
  console.log("allReduceSum: ok");
} catch (e) {
  console.log(`allReduceSum: ${(e as Error).message}`);
}
try {
  c.destroy();
  console.log("destroy: ok");
} catch (e) {
  console.log(`destroy: ${(e as Error).message}`);
}
be.close();
