// The downloader against a scripted HTTP server on 127.0.0.1 (raw HTTP/1.1 over Deno.listen, so
// a test can drop a connection mid-body or stall it): complete downloads, resume after a drop, a
// stall, 500/429 then success, 404 and 401 stop the run, truncated or bad-header bodies are never
// renamed into place, and an interrupted command-line run followed by a rerun.
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { downloadFiles, type DownloadOptions, fineWebFiles, resolveUrl } from "./download.ts";
import { encodeShard } from "./shard.ts";
import { StatusLine } from "./progress.ts";

const REPO = "kjj0/fineweb10B-gpt2";
const enc = new TextEncoder();

/** A shard of `n` pseudo-random tokens (seeded). */
function shardBytes(n: number, seed: number): Uint8Array {
  const t = new Uint16Array(n);
  let x = seed * 2654435761 >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    t[i] = (x >>> 0) % 50257;
  }
  return encodeShard(t);
}

interface Req {
  file: string;
  range: string | null;
  auth: string | null;
}

/** How the hub answers one request: a status code, or a scripted misbehaviour. */
type Act =
  | "ok" // serve the file (honours Range)
  | "drop" // announce the full length, send half of it, close the connection
  | "stall" // announce the full length, send half, then send nothing until the hub closes
  | "hold" // like stall, and resolve `hub.holding` once the half is sent
  | "ignore-range" // serve the whole file with 200 even when a Range was asked for
  | number; // that HTTP status with a short text body

class Hub {
  files = new Map<string, Uint8Array>();
  script = new Map<string, Act[]>();
  requests: Req[] = [];
  requireAuth?: string;
  #listener: Deno.Listener;
  #conns = new Set<Deno.Conn>();
  #tasks = new Set<Promise<void>>();
  #closed: Promise<void>;
  #close!: () => void;
  #holding!: () => void;
  holding: Promise<void>;
  readonly port: number;

  constructor() {
    this.#listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#listener.addr as Deno.NetAddr).port;
    this.#closed = new Promise((r) => (this.#close = r));
    this.holding = new Promise((r) => (this.#holding = r));
    this.#accept();
  }

  get endpoint() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Requests for `file`, in order. */
  hits(file: string): Req[] {
    return this.requests.filter((r) => r.file === file);
  }

  async #accept() {
    try {
      for await (const conn of this.#listener) {
        this.#conns.add(conn);
        const t = this.#serve(conn).catch(() => {}).finally(() => {
          this.#conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed already */ }
        });
        this.#tasks.add(t);
        t.finally(() => this.#tasks.delete(t));
      }
    } catch { /* listener closed */ }
  }

  async #write(conn: Deno.Conn, b: Uint8Array) {
    let off = 0;
    while (off < b.length) off += await conn.write(b.subarray(off));
  }

  async #head(conn: Deno.Conn, status: number, headers: Record<string, string | number>) {
    let s = `HTTP/1.1 ${status} X\r\nconnection: close\r\n`;
    for (const [k, v] of Object.entries(headers)) s += `${k}: ${v}\r\n`;
    await this.#write(conn, enc.encode(s + "\r\n"));
  }

  async #serve(conn: Deno.Conn) {
    const buf = new Uint8Array(16384);
    let n = 0, head = "";
    while (true) {
      const r = await conn.read(buf.subarray(n));
      if (r === null) return;
      n += r;
      head = new TextDecoder().decode(buf.subarray(0, n));
      if (head.includes("\r\n\r\n")) break;
      if (n === buf.length) return;
    }
    const lines = head.split("\r\n");
    const path = lines[0].split(" ")[1];
    const hdr = new Map<string, string>();
    for (const l of lines.slice(1)) {
      const i = l.indexOf(":");
      if (i > 0) hdr.set(l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim());
    }
    const prefix = `/datasets/${REPO}/resolve/main/`;
    const file = path.startsWith(prefix) ? decodeURIComponent(path.slice(prefix.length)) : path;
    const req = { file, range: hdr.get("range") ?? null, auth: hdr.get("authorization") ?? null };
    this.requests.push(req);
    const body = this.files.get(file);
    if (this.requireAuth && req.auth !== `Bearer ${this.requireAuth}`) {
      return await this.#text(conn, 401, "unauthorized");
    }
    if (!body) return await this.#text(conn, 404, "Entry not found");
    const act = this.script.get(file)?.shift() ?? "ok";
    if (typeof act === "number") {
      return await this.#text(conn, act, "scripted", act === 429 ? { "retry-after": "0" } : {});
    }
    let start = 0;
    const m = /^bytes=(\d+)-$/.exec(req.range ?? "");
    if (m && act !== "ignore-range") start = Number(m[1]);
    if (start >= body.length && m) {
      return await this.#head(conn, 416, {
        "content-range": `bytes */${body.length}`,
        "content-length": 0,
      });
    }
    const rest = body.subarray(start);
    if (m && act !== "ignore-range") {
      await this.#head(conn, 206, {
        "content-length": rest.length,
        "content-range": `bytes ${start}-${body.length - 1}/${body.length}`,
      });
    } else {
      await this.#head(conn, 200, { "content-length": rest.length });
    }
    if (act === "ok" || act === "ignore-range") return await this.#write(conn, rest);
    const half = Math.floor(rest.length / 2);
    await this.#write(conn, rest.subarray(0, half));
    if (act === "drop") return;
    if (act === "hold") this.#holding();
    await this.#closed; // stall / hold: keep the connection open, silent
  }

  async #text(conn: Deno.Conn, status: number, text: string, extra: Record<string, string> = {}) {
    const b = enc.encode(text);
    await this.#head(conn, status, { "content-length": b.length, ...extra });
    await this.#write(conn, b);
  }

  async close() {
    this.#close();
    this.#listener.close();
    for (const c of this.#conns) {
      try {
        c.close();
      } catch { /* closed already */ }
    }
    await Promise.all([...this.#tasks]);
  }
}

/** A quiet status line that keeps what it printed. */
function captured(): { status: StatusLine; text: () => string } {
  const chunks: Uint8Array[] = [];
  const sink = {
    writeSync(p: Uint8Array) {
      chunks.push(p.slice());
      return p.length;
    },
    isTerminal: () => false,
  };
  const status = new StatusLine({ sink, tty: false, intervalS: 0 });
  return { status, text: () => chunks.map((c) => new TextDecoder().decode(c)).join("") };
}

async function withHub(
  fn: (
    hub: Hub,
    dir: string,
    run: (o?: Partial<DownloadOptions>) => ReturnType<typeof downloadFiles>,
  ) => Promise<void>,
  files = fineWebFiles(2),
) {
  const hub = new Hub();
  const dir = Deno.makeTempDirSync({ prefix: "mn-dl-" });
  files.forEach((f, i) => hub.files.set(f, shardBytes(3000 + 1000 * i, i + 1)));
  const run = (o: Partial<DownloadOptions> = {}) =>
    downloadFiles({
      repo: REPO,
      files,
      dir,
      endpoint: hub.endpoint,
      token: "",
      retries: 3,
      backoffMs: 5,
      status: captured().status,
      ...o,
    });
  try {
    await fn(hub, dir, run);
  } finally {
    await hub.close();
    Deno.removeSync(dir, { recursive: true });
  }
}

function same(dir: string, hub: Hub, file: string) {
  const got = Deno.readFileSync(join(dir, file)), want = hub.files.get(file)!;
  assert.deepEqual(got.length, want.length, `${file} length`);
  assert(got.every((b, i) => b === want[i]), `${file} content`);
}

function listing(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

Deno.test("download: URL pattern and FineWeb file list", () => {
  assert.deepEqual(
    resolveUrl("https://hf-mirror.com/", REPO, "main", "fineweb_val_000000.bin"),
    "https://hf-mirror.com/datasets/kjj0/fineweb10B-gpt2/resolve/main/fineweb_val_000000.bin",
  );
  assert.deepEqual(fineWebFiles(2), [
    "fineweb_val_000000.bin",
    "fineweb_train_000001.bin",
    "fineweb_train_000002.bin",
  ]);
  assert.deepEqual(fineWebFiles(103).at(-1), "fineweb_train_000103.bin");
  assert.deepEqual(fineWebFiles(0).length, 1);
});

Deno.test("download: complete run, then a rerun that fetches nothing", async () => {
  await withHub(async (hub, dir, run) => {
    const { status, text } = captured();
    const s = await run({ status });
    assert(s.ok, JSON.stringify(s.results));
    assert.deepEqual(s.results.map((r) => r.status), ["downloaded", "downloaded", "downloaded"]);
    for (const f of hub.files.keys()) same(dir, hub, f);
    assert.deepEqual(listing(dir), [...hub.files.keys()].sort()); // no .part or temp files left
    assert.deepEqual(hub.requests.length, 3);
    assert(hub.requests.every((r) => r.range === null && r.auth === null));
    assert.match(text(), /\[1\/3\] fineweb_val_000000\.bin \[#+\] 100\.0% .* \| all /);
    const again = await run();
    assert(again.ok);
    assert.deepEqual(again.results.map((r) => r.status), ["present", "present", "present"]);
    assert.deepEqual(hub.requests.length, 3, "nothing requested again");
  });
});

Deno.test("download: resume with Range after the server drops the connection mid-file", async () => {
  await withHub(async (hub, dir, run) => {
    const f = "fineweb_train_000001.bin";
    hub.script.set(f, ["drop", "drop"]);
    const s = await run({ retries: 1 }); // progress resets the count, so two drops are fine
    assert(s.ok, JSON.stringify(s.results));
    same(dir, hub, f);
    const hits = hub.hits(f);
    assert.deepEqual(hits.length, 3);
    assert.deepEqual(hits[0].range, null);
    const len = hub.files.get(f)!.length, first = Math.floor(len / 2);
    assert.deepEqual(hits[1].range, `bytes=${first}-`);
    assert.deepEqual(hits[2].range, `bytes=${first + Math.floor((len - first) / 2)}-`);
  });
});

Deno.test("download: a stalled connection is abandoned and resumed", async () => {
  await withHub(async (hub, dir, run) => {
    const f = "fineweb_val_000000.bin";
    hub.script.set(f, ["stall"]);
    const s = await run({ stallMs: 300 });
    assert(s.ok, JSON.stringify(s.results));
    same(dir, hub, f);
    assert.match(hub.hits(f)[1].range ?? "", /^bytes=\d+-$/);
  });
});

Deno.test("download: 500, 503 and 429 are retried, then the file arrives", async () => {
  await withHub(async (hub, dir, run) => {
    hub.script.set("fineweb_val_000000.bin", [500, 503]);
    hub.script.set("fineweb_train_000002.bin", [429]);
    const { status, text } = captured();
    const s = await run({ status });
    assert(s.ok, JSON.stringify(s.results));
    for (const f of hub.files.keys()) same(dir, hub, f);
    assert.deepEqual(hub.hits("fineweb_val_000000.bin").length, 3);
    assert.deepEqual(hub.hits("fineweb_train_000002.bin").length, 2);
    assert.match(text(), /HTTP 500 .*retry 1\/3/);
    assert.match(text(), /HTTP 503 .*retry 2\/3/);
  });
});

Deno.test("download: a server that keeps failing: the file fails, the partial is kept, the run goes on", async () => {
  await withHub(async (hub, dir, run) => {
    const f = "fineweb_train_000001.bin";
    hub.script.set(f, [500, 500, 500, 500, 500]);
    const s = await run({ retries: 2 });
    assert(!s.ok);
    assert.deepEqual(s.results.map((r) => r.status), ["downloaded", "failed", "downloaded"]);
    assert.match(s.results[1].detail!, /gave up after 2 retries: HTTP 500/);
    assert.deepEqual(hub.hits(f).length, 3);
    assert(!listing(dir).includes(f));
  });
});

Deno.test("download: another 4xx fails that file at once; an unreachable server is retried", async () => {
  await withHub(async (hub, dir, run) => {
    hub.script.set("fineweb_val_000000.bin", [400]);
    const s = await run();
    assert.deepEqual(s.results.map((r) => r.status), ["failed", "downloaded", "downloaded"]);
    assert.match(s.results[0].detail!, /HTTP 400/);
    assert.equal(hub.hits("fineweb_val_000000.bin").length, 1);
    // nothing listens on this port any more: connection refused, retried, then given up
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const down = await run({ endpoint: `http://127.0.0.1:${port}`, retries: 2 });
    assert.equal(down.results[0].status, "failed");
    assert.match(down.results[0].detail!, /gave up after 2 retries: connection failed/);
    assert.equal(listing(dir).length, 2);
  });
});

Deno.test("download: 404 stops the run with a clear message", async () => {
  await withHub(async (hub, dir, run) => {
    hub.files.delete("fineweb_train_000001.bin");
    const s = await run();
    assert(!s.ok);
    assert.deepEqual(s.results.map((r) => r.status), ["downloaded", "failed", "skipped"]);
    assert.match(
      s.fatal!,
      /fineweb_train_000001\.bin: not found \(HTTP 404\) at http:\/\/127\.0\.0\.1:\d+\/datasets\//,
    );
    assert.deepEqual(hub.hits("fineweb_train_000001.bin").length, 1, "404 is not retried");
    assert.deepEqual(hub.hits("fineweb_train_000002.bin").length, 0, "the run stopped");
    assert.deepEqual(listing(dir), ["fineweb_val_000000.bin"]);
  });
});

Deno.test("download: 401 stops the run; HF_TOKEN is sent as a bearer token", async () => {
  await withHub(async (hub, dir, run) => {
    hub.requireAuth = "hf_secret";
    const s = await run();
    assert(!s.ok);
    assert.match(s.fatal!, /access denied \(HTTP 401\).*set HF_TOKEN/);
    assert.deepEqual(hub.requests.length, 1);
    const bad = await run({ token: "hf_wrong" });
    assert.match(bad.fatal!, /HTTP 401.*HF_TOKEN was sent/);
    const good = await run({ token: "hf_secret" });
    assert(good.ok);
    assert(hub.requests.slice(2).every((r) => r.auth === "Bearer hf_secret"));
    for (const f of hub.files.keys()) same(dir, hub, f);
  });
});

Deno.test("download: a truncated shard or a bad header is never renamed into place", async () => {
  await withHub(async (hub, dir, run) => {
    const cut = "fineweb_train_000001.bin", bad = "fineweb_train_000002.bin";
    hub.files.set(cut, hub.files.get(cut)!.subarray(0, 3000)); // header says more tokens
    const b = hub.files.get(bad)!.slice();
    b[0] ^= 0xff; // magic
    hub.files.set(bad, b);
    const s = await run();
    assert(!s.ok);
    assert.deepEqual(s.results.map((r) => r.status), ["downloaded", "failed", "failed"]);
    assert.match(
      s.results[1].detail!,
      /verification failed: .*\.part: truncated: header says \d+ tokens/,
    );
    assert.match(
      s.results[2].detail!,
      /verification failed: .*\.part: magic -?\d+, expected 20240520/,
    );
    assert.deepEqual(listing(dir), ["fineweb_val_000000.bin"], "no bad file, no .part");
    assert.deepEqual(hub.hits(cut).length, 1);
  });
});

Deno.test("download: a body cut short by the connection is retried, never renamed", async () => {
  await withHub(async (hub, dir, run) => {
    const f = "fineweb_val_000000.bin";
    hub.script.set(f, ["drop"]);
    hub.files.delete("fineweb_train_000001.bin"); // stop right after
    const s = await run({ retries: 0 });
    assert.deepEqual(s.results[0].status, "failed");
    assert.match(s.results[0].detail!, /connection (lost|closed) at byte \d+.*partial file kept/);
    assert.deepEqual(listing(dir), [`${f}.part`]);
    hub.files.set("fineweb_train_000001.bin", shardBytes(10, 9));
    const again = await run();
    assert(again.ok);
    assert.match(hub.hits(f).at(-1)!.range!, /^bytes=\d+-$/);
    same(dir, hub, f);
  });
});

Deno.test("download: partial files: a whole one is renamed, a spoiled one is fetched again", async () => {
  await withHub(async (hub, dir, run) => {
    const [v, t1, t2] = fineWebFiles(2);
    // v: the whole file is in .part (a run stopped before renaming): the server answers 416
    Deno.writeFileSync(join(dir, `${v}.part`), hub.files.get(v)!);
    // t1: a .part whose first bytes are wrong: resumed, fails verification, downloaded afresh
    Deno.writeFileSync(join(dir, `${t1}.part`), new Uint8Array(100).fill(7));
    // t2: an invalid complete file is replaced; a server that ignores Range is handled
    Deno.writeFileSync(join(dir, t2), new Uint8Array(10));
    Deno.writeFileSync(join(dir, `${t2}.part`), hub.files.get(t2)!.subarray(0, 50));
    hub.script.set(t2, ["ignore-range"]);
    const s = await run();
    assert(s.ok, JSON.stringify(s.results));
    for (const f of [v, t1, t2]) same(dir, hub, f);
    assert.deepEqual(hub.hits(v).length, 1);
    assert.deepEqual(hub.hits(t1).map((r) => r.range), ["bytes=100-", null]);
    assert.deepEqual(hub.hits(t2).map((r) => r.range), ["bytes=50-"]);
    assert.deepEqual(listing(dir), [v, t1, t2].sort());
  });
});

// ---------------------------------------------------------------------------------------------
// the command line: a killed run followed by a rerun; Ctrl-C; exit status and summary

const CLI = fileURLToPath(new URL("./cached_fineweb10B.ts", import.meta.url));

function cli(hub: Hub, dir: string, args: string[]) {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args, "--dir", dir],
    env: {
      HF_ENDPOINT: hub.endpoint,
      HF_TOKEN: "",
      MN_DL_BACKOFF_MS: "5",
      MN_PROGRESS_S: "0",
      NO_COLOR: "1",
    },
    stdout: "piped",
    stderr: "piped",
  });
}

async function waitFor(cond: () => boolean, what: string, ms = 20000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function sizeOf(p: string): number {
  try {
    return Deno.statSync(p).size;
  } catch {
    return -1;
  }
}

for (const sig of ["SIGKILL", "SIGINT"] as const) {
  Deno.test(`download: command line killed mid-file (${sig}), then rerun: only the rest is fetched`, async () => {
    const hub = new Hub();
    const dir = Deno.makeTempDirSync({ prefix: "mn-dl-cli-" });
    try {
      const files = fineWebFiles(3);
      files.forEach((f, i) => hub.files.set(f, shardBytes(20000 + i, i + 1)));
      const t2 = files[2];
      hub.script.set(t2, ["hold"]);
      const child = cli(hub, dir, ["3"]).spawn();
      await hub.holding;
      const half = Math.floor(hub.files.get(t2)!.length / 2);
      await waitFor(() => sizeOf(join(dir, `${t2}.part`)) === half, "the partial file");
      child.kill(sig);
      const out = await child.output();
      const err = new TextDecoder().decode(out.stderr);
      if (sig === "SIGINT") {
        assert.deepEqual(out.code, 130, err);
        assert.match(err, /interrupted: run the same command again to resume/);
      } else {
        assert.deepEqual(out.signal, "SIGKILL");
      }
      assert.deepEqual(listing(dir), [files[0], files[1], `${t2}.part`].sort());
      const before = hub.requests.length;
      const rerun = await cli(hub, dir, ["3"]).output();
      const err2 = new TextDecoder().decode(rerun.stderr);
      assert.deepEqual(rerun.code, 0, err2);
      const second = hub.requests.slice(before);
      assert.deepEqual(second.map((r) => [r.file, r.range]), [
        [t2, `bytes=${half}-`],
        [files[3], null],
      ]);
      assert.match(err2, /summary: 4 files: 2 already present, 2 downloaded/);
      for (const f of files) same(dir, hub, f);
    } finally {
      await hub.close();
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("download: command line exits non-zero with a summary when a file is missing", async () => {
  const hub = new Hub();
  const dir = Deno.makeTempDirSync({ prefix: "mn-dl-cli-" });
  try {
    fineWebFiles(1).forEach((f, i) => hub.files.set(f, shardBytes(500, i + 1)));
    const out = await cli(hub, dir, ["2"]).output();
    const err = new TextDecoder().decode(out.stderr);
    assert.deepEqual(out.code, 1, err);
    assert.match(err, /summary: 3 files: 0 already present, 2 downloaded .* 1 failed, 0 not tried/);
    assert.match(err, /FAILED fineweb_train_000002\.bin: not found \(HTTP 404\)/);
    const bad = await cli(hub, dir, ["x"]).output();
    assert.deepEqual(bad.code, 2);
  } finally {
    await hub.close();
    Deno.removeSync(dir, { recursive: true });
  }
});
