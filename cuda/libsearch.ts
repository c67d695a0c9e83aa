// Finds NVIDIA libraries that are not on the default search path: cuBLAS (and NCCL, later) ship in
// CUDA folders or in Python wheels (site-packages/nvidia/<pkg>/lib). Returns absolute paths, since
// Deno.dlopen cannot change LD_LIBRARY_PATH for an already-running process.

function isFile(p: string): boolean {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
}

function listDir(p: string): string[] {
  try {
    return [...Deno.readDirSync(p)].map((e) => e.name);
  } catch {
    return [];
  }
}

// Expands a path pattern whose segments may contain `*` (one directory level each).
export function expandGlob(pattern: string): string[] {
  const parts = pattern.split("/").filter((s) => s !== "");
  let cur = [pattern.startsWith("/") ? "/" : "."];
  for (const part of parts) {
    const next: string[] = [];
    for (const dir of cur) {
      if (!part.includes("*")) {
        next.push(dir === "/" ? `/${part}` : `${dir}/${part}`);
        continue;
      }
      const re = new RegExp("^" + part.split("*").map(escapeRe).join(".*") + "$");
      for (const name of listDir(dir).sort()) {
        if (re.test(name)) next.push(dir === "/" ? `/${name}` : `${dir}/${name}`);
      }
    }
    cur = next;
  }
  return cur;
}

function escapeRe(s: string): string {
  return s.replace(/[.+?^${}()|[\]\\]/g, "\\$&");
}

export function pythonSitePackages(): string[] {
  const home = Deno.env.get("HOME") ?? "/root";
  const pats = [
    "/usr/lib/python3*/site-packages",
    "/usr/lib/python3*/dist-packages",
    "/usr/local/lib/python3*/site-packages",
    "/usr/local/lib/python3*/dist-packages",
    `${home}/.local/lib/python3*/site-packages`,
    "/opt/conda/lib/python3*/site-packages",
    "/opt/conda/envs/*/lib/python3*/site-packages",
    `${home}/.pyenv/versions/*/lib/python3*/site-packages`,
    `${home}/miniconda3/lib/python3*/site-packages`,
    `${home}/anaconda3/lib/python3*/site-packages`,
  ];
  // The environment of the `python3` on PATH (a venv such as /opt/torch/.venv/bin), first.
  const pathDirs = (Deno.env.get("PATH") ?? "").split(":").filter((d) => isFile(`${d}/python3`));
  pats.unshift(...pathDirs.map((d) => `${d.replace(/\/bin\/?$/, "")}/lib/python3*/site-packages`));
  const venv = Deno.env.get("VIRTUAL_ENV");
  if (venv) pats.unshift(`${venv}/lib/python3*/site-packages`);
  return [...new Set(pats.flatMap(expandGlob))];
}

/**
 * Searches for a library file named like `stem` (e.g. "libcublas.so") with any version suffix.
 * Order: the env variable `envVar` (a file path), LD_LIBRARY_PATH, CUDA folders, then the wheels'
 * site-packages/nvidia/<wheelDir>/lib (CUDA 12 wheels) or nvidia/cu13/lib (CUDA 13 wheels put all
 * their libraries there, NCCL's excepted). Returns the first existing absolute path, or null.
 */
export function findNvidiaLibrary(stem: string, envVar: string, wheelDir: string): string | null {
  const forced = Deno.env.get(envVar);
  if (forced) {
    if (!isFile(forced)) throw new Error(`${envVar}=${forced}: no such file`);
    return forced;
  }
  const dirs = [
    ...(Deno.env.get("LD_LIBRARY_PATH") ?? "").split(":").filter(Boolean),
    `${Deno.env.get("CUDA_HOME") ?? "/usr/local/cuda"}/lib64`,
    "/usr/local/cuda/lib64",
    ...expandGlob("/usr/local/cuda-*/lib64"),
    "/usr/lib/x86_64-linux-gnu",
    ...pythonSitePackages().flatMap((
      sp,
    ) => [`${sp}/nvidia/${wheelDir}/lib`, `${sp}/nvidia/cu13/lib`]),
  ];
  for (const dir of dirs) {
    const names = listDir(dir).filter((n) => n === stem || n.startsWith(stem + "."));
    // Prefer the highest version suffix (libcublas.so.13 over libcublas.so.12).
    names.sort((a, b) => b.localeCompare(a, "en", { numeric: true }));
    for (const n of names) if (isFile(`${dir}/${n}`)) return `${dir}/${n}`;
  }
  return null;
}
