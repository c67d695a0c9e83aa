// Where the NVIDIA libraries are found: a CUDA 13 wheel (nvidia/cu13/lib) of the venv whose
// python3 is on PATH, as on the project's GPU machine (/opt/torch/.venv), with no VIRTUAL_ENV set.
import assert from "node:assert/strict";
import { findNvidiaLibrary, pythonSitePackages } from "./libsearch.ts";

Deno.test("libsearch: finds a library in the cu13 wheel folder of the python3 on PATH", () => {
  const root = Deno.makeTempDirSync();
  const sp = `${root}/lib/python3.12/site-packages`;
  Deno.mkdirSync(`${root}/bin`, { recursive: true });
  Deno.writeTextFileSync(`${root}/bin/python3`, "");
  Deno.mkdirSync(`${sp}/nvidia/cu13/lib`, { recursive: true });
  Deno.mkdirSync(`${sp}/nvidia/nccl/lib`, { recursive: true });
  Deno.writeTextFileSync(`${sp}/nvidia/cu13/lib/libmn_probe_a.so.13`, "");
  Deno.writeTextFileSync(`${sp}/nvidia/nccl/lib/libmn_probe_b.so.2`, "");
  const saved = { path: Deno.env.get("PATH") ?? "", venv: Deno.env.get("VIRTUAL_ENV") };
  try {
    Deno.env.set("PATH", `${root}/bin:${saved.path}`);
    Deno.env.delete("VIRTUAL_ENV");
    assert.equal(pythonSitePackages()[0], sp);
    assert.equal(
      findNvidiaLibrary("libmn_probe_a.so", "MN_PROBE_UNSET", "cublas"),
      `${sp}/nvidia/cu13/lib/libmn_probe_a.so.13`,
    );
    assert.equal(
      findNvidiaLibrary("libmn_probe_b.so", "MN_PROBE_UNSET", "nccl"),
      `${sp}/nvidia/nccl/lib/libmn_probe_b.so.2`,
    );
    assert.equal(findNvidiaLibrary("libmn_probe_c.so", "MN_PROBE_UNSET", "cublas"), null);
  } finally {
    Deno.env.set("PATH", saved.path);
    if (saved.venv !== undefined) Deno.env.set("VIRTUAL_ENV", saved.venv);
    Deno.removeSync(root, { recursive: true });
  }
});
