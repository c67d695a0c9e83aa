// Measures the trainer tests' random-input bounds over many seeds and OpenBLAS kernels, so that each
// bound can be set from data with a stated margin (the figures go into the comments next to the
// bounds). For every whole-model check (FD_CHECK, BACKEND_CHECKS of train_*_test.ts):
//   - emu vs cpu: the worst normwise relative gradient difference and the loss difference, per
//     seed and per OPENBLAS_CORETYPE (the cpu side runs in a child process per core type, since
//     OpenBLAS picks its kernels once at load; the emu side does not use BLAS and runs once);
//   - finite differences (cpu only): the worst |FD - analytic| / bound, per seed and core type.
// Prints one line per check: the worst over everything, where, its ratio to the test's bound, and
// the seeds at which the check itself (compareBackends) would have failed; per seed, on stderr.
//
//   deno run -A tools/tolerance_sweep.ts [--seeds 1-20] [--coretypes default,Haswell] [--only TEXT]
//     [--no-fd]   (--only: checks whose "<trainer> <label>" contains TEXT; "fd": the FD checks)
//
// Slow (the emu side of a seed is 5-20 s per check on 2 cores): the default sweep takes about half
// an hour. Not a test; the tests themselves run one fresh seed each.
import { parseArgs } from "node:util";
import {
  type BackendCheck,
  backendDifference,
  checkGradientsByFiniteDifferences,
  type LossAndGrads,
  SMALL_TENSOR,
  tinyLossAndGrads,
  type TrainerModule,
} from "../cuda/test/trainer_harness.ts";
import { seedList } from "../cuda/test/harness.ts";

interface FdCheck {
  flags: string[];
  h: number;
  tol: { abs: number; rel: number };
}
interface TestTables {
  FD_CHECK: FdCheck;
  BACKEND_CHECKS: BackendCheck[];
}
// deno-lint-ignore no-explicit-any
type AnyTrainer = TrainerModule<any, any>;
const TRAINERS: Record<string, () => Promise<[AnyTrainer, TestTables]>> = {
  gpt2: async () => [await import("../train_gpt2.ts"), await import("../train_gpt2_test.ts")],
  rwkv6: async () => [await import("../train_rwkv6.ts"), await import("../train_rwkv6_test.ts")],
  rwkv7: async () => [await import("../train_rwkv7.ts"), await import("../train_rwkv7_test.ts")],
};

// ---- child modes: the cpu side under the core type of this process's environment
function encode(r: LossAndGrads): Uint8Array {
  const names = [...r.grads.keys()];
  const head = new TextEncoder().encode(
    JSON.stringify({ loss: r.loss, names, sizes: names.map((n) => r.grads.get(n)!.length) }),
  );
  const total = names.reduce((s, n) => s + r.grads.get(n)!.length, 0);
  const out = new Uint8Array(8 + head.length + 4 * total + 4);
  new DataView(out.buffer).setUint32(0, head.length, true);
  out.set(head, 8);
  const body = new Float32Array(out.buffer, (8 + head.length + 3) & ~3, total);
  let o = 0;
  for (const n of names) {
    const g = r.grads.get(n)!;
    body.set(g, o);
    o += g.length;
  }
  return out;
}
function decode(bytes: Uint8Array): LossAndGrads {
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  const head = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len)));
  const start = (8 + len + 3) & ~3;
  const grads = new Map<string, Float32Array>();
  let o = start;
  head.names.forEach((n: string, i: number) => {
    grads.set(n, new Float32Array(bytes.slice(o, o + 4 * head.sizes[i]).buffer));
    o += 4 * head.sizes[i];
  });
  return { loss: head.loss, grads };
}

async function child(args: string[]) {
  const [mode, trainer, index, seeds, out] = args;
  const [mod, tables] = await TRAINERS[trainer]();
  if (mode === "--cpu") {
    const check = tables.BACKEND_CHECKS[Number(index)];
    for (const seed of seedList(seeds)) {
      const r = tinyLossAndGrads(mod, check.flags, "cpu", seed, check.precision);
      Deno.writeFileSync(`${out}/${seed}.bin`, encode(r));
    }
  } else {
    const fd = tables.FD_CHECK;
    const rows = seedList(seeds).map((seed) => ({
      seed,
      ...checkGradientsByFiniteDifferences(mod, fd.flags, fd.h, fd.tol, seed, true),
    }));
    Deno.writeTextFileSync(`${out}/fd.json`, JSON.stringify(rows));
  }
}

// ---- the sweep
function runChild(args: string[], coretype: string) {
  const env = { ...Deno.env.toObject() };
  if (coretype === "default") delete env.OPENBLAS_CORETYPE;
  else env.OPENBLAS_CORETYPE = coretype;
  const out = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(import.meta.url).pathname, ...args],
    env,
    clearEnv: true,
    stdout: "inherit",
    stderr: "inherit",
  }).outputSync();
  if (out.code !== 0) throw new Error(`child ${args.join(" ")} (${coretype}) failed`);
}

async function sweep() {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      seeds: { type: "string", default: "1-20" },
      coretypes: { type: "string", default: "default,Haswell" },
      only: { type: "string", default: "" },
      "no-fd": { type: "boolean", default: false },
    },
    strict: true,
  });
  const seeds = seedList(values.seeds!);
  const coretypes = values.coretypes!.split(",");
  const tmp = Deno.makeTempDirSync({ prefix: "mn-sweep-" });
  const fmt = (x: number) => x.toExponential(2);
  console.log(
    `seeds ${values.seeds} (${seeds.length}); OpenBLAS core types ${coretypes.join(", ")}`,
  );
  for (const [trainer, load] of Object.entries(TRAINERS)) {
    const [mod, tables] = await load();
    if (!values["no-fd"] && (!values.only || `${trainer} fd`.includes(values.only))) {
      let worst = { ratio: 0, where: "", seed: 0, coretype: "" };
      for (const ct of coretypes) {
        const dir = `${tmp}/${trainer}-fd-${ct}`;
        Deno.mkdirSync(dir);
        runChild(["--fd", trainer, "0", values.seeds!, dir], ct);
        for (const r of JSON.parse(Deno.readTextFileSync(`${dir}/fd.json`))) {
          if (r.worst > worst.ratio) {
            worst = { ratio: r.worst, where: r.where, seed: r.seed, coretype: ct };
          }
        }
      }
      console.log(
        `${trainer} finite differences: worst ${(100 * worst.ratio).toFixed(0)}% of the bound ` +
          `(${worst.where}, seed ${worst.seed}, ${worst.coretype})`,
      );
    }
    for (const [index, check] of tables.BACKEND_CHECKS.entries()) {
      if (values.only && !`${trainer} ${check.label}`.includes(values.only)) continue;
      const dirs = coretypes.map((ct) => `${tmp}/${trainer}-${index}-${ct}`);
      coretypes.forEach((ct, i) => {
        Deno.mkdirSync(dirs[i]);
        runChild(["--cpu", trainer, String(index), values.seeds!, dirs[i]], ct);
      });
      // the worst normwise difference per seed, separately for tensors of <= SMALL_TENSOR
      // elements (bound: smallTol) and the others (bound: tol)
      const classes = ["large", "small"] as const;
      const worst = {
        large: { rel: 0, name: "", seed: 0, coretype: "", perSeed: [] as number[] },
        small: { rel: 0, name: "", seed: 0, coretype: "", perSeed: [] as number[] },
      };
      let loss = 0, smallAbs = 0; // and the small tensors' largest absolute difference
      const lossTol = check.lossTol ?? check.tol;
      const [smallTol, smallAtol] = [check.smallTol ?? check.tol, check.smallAtol ?? 0];
      const failed: string[] = []; // "seed (what)" where compareBackends would have failed
      for (const seed of seeds) {
        const emu = tinyLossAndGrads(mod, check.flags, "emu", seed, check.precision);
        const seedWorst = { large: 0, small: 0 };
        coretypes.forEach((ct, i) => {
          const cpu = decode(Deno.readFileSync(`${dirs[i]}/${seed}.bin`));
          const d = backendDifference(cpu, emu);
          loss = Math.max(loss, d.loss);
          const why = d.loss > lossTol ? ["loss"] : [];
          for (const [name, rel] of d.perTensor) {
            const want = cpu.grads.get(name)!, got = emu.grads.get(name)!;
            const c = want.length <= SMALL_TENSOR ? "small" : "large";
            seedWorst[c] = Math.max(seedWorst[c], rel);
            let abs = 0;
            want.forEach((v, i) => abs = Math.max(abs, Math.abs(v - got[i])));
            if (c === "small") smallAbs = Math.max(smallAbs, abs);
            if (c === "small" ? rel > smallTol && abs > smallAtol : rel > check.tol) why.push(name);
            if (rel > worst[c].rel) Object.assign(worst[c], { rel, name, seed, coretype: ct });
          }
          if (why.length) failed.push(`${seed} (${ct}: ${why.join(", ")})`);
        });
        for (const c of classes) worst[c].perSeed.push(seedWorst[c]);
        console.error(
          `${trainer} ${check.label} seed ${seed}: tensors ${fmt(seedWorst.large)}, small ${
            fmt(seedWorst.small)
          }`,
        );
      }
      const parts = classes.filter((c) => worst[c].name).map((c) => {
        const w = worst[c], bound = c === "small" ? smallTol : check.tol;
        const sorted = [...w.perSeed].sort((a, b) => a - b);
        return `${c === "small" ? `<= ${SMALL_TENSOR} elements` : "tensors"} worst ${fmt(w.rel)} ` +
          `(${w.name}, seed ${w.seed}, ${w.coretype}), median ${
            fmt(sorted[sorted.length >> 1])
          }, ` +
          `bound ${bound} = ${(bound / w.rel).toFixed(1)}x`;
      });
      console.log(
        `${trainer} emu vs cpu (${check.label}): ${parts.join("; ")}` +
          (worst.small.name
            ? ` (absolute ${fmt(smallAbs)}, smallAtol ${check.smallAtol ?? 0})`
            : "") +
          `; loss worst ${fmt(loss)}, ` +
          `bound ${lossTol} = ${(lossTol / loss).toFixed(0)}x; ` +
          (failed.length ? `FAILED at ${failed.join("; ")}` : "the check held at every seed"),
      );
    }
  }
  Deno.removeSync(tmp, { recursive: true });
}

if (import.meta.main) {
  if (Deno.args[0] === "--cpu" || Deno.args[0] === "--fd") await child(Deno.args);
  else await sweep();
}
