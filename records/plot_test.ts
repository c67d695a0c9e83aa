import assert from "node:assert/strict";
import { parseLog, plotSvg } from "./plot.ts";

const LOG_A = `{"flags": 1}
step:0/4 val_loss:10.8258 train_time:0ms step_avg:nanms
step:1/4 train_loss:10.8258 train_time:465ms step_avg:nanms
step:2/4 train_loss:9.5 train_time:876ms step_avg:nanms
step:2/4 val_loss:9.8121 train_time:877ms step_avg:nanms
step:4/4 val_loss:8.7793 train_time:1643ms step_avg:nanms
`;

Deno.test("plot: parses the trainers' log lines and ignores everything else", () => {
  const c = parseLog(LOG_A, "a");
  assert.deepEqual(c.val.map((p) => [p.step, p.loss, p.ms]), [[0, 10.8258, 0], [2, 9.8121, 877], [
    4,
    8.7793,
    1643,
  ]]);
  assert.deepEqual(c.train.map((p) => p.step), [1, 2]);
  assert.throws(() => parseLog("hello\nworld\n", "x.txt"), /x\.txt: no "step:N\/M train_loss/);
});

Deno.test("plot: one polyline per log in each of the four panels, legend names the logs", () => {
  const b = LOG_A.replaceAll("val_loss:8.7793", "val_loss:7.5");
  const svg = plotSvg([parseLog(LOG_A, "run <a>"), parseLog(b, "run b")]);
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  assert.equal(svg.match(/<polyline /g)!.length, 8);
  assert.ok(svg.includes("run &lt;a&gt;") && svg.includes("run b"));
  for (
    const t of [
      "val loss vs step",
      "val loss vs time (s)",
      "train loss vs step",
      "train loss vs time (s)",
    ]
  ) {
    assert.ok(svg.includes(t), t);
  }
});

Deno.test("plot: the command writes the SVG atomically and fails clearly on a non-log", () => {
  const dir = Deno.makeTempDirSync();
  Deno.writeTextFileSync(`${dir}/a.txt`, LOG_A);
  Deno.writeTextFileSync(`${dir}/bad.txt`, "not a log");
  const run = (args: string[]) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", new URL("./plot.ts", import.meta.url).pathname, ...args],
      stdout: "piped",
      stderr: "piped",
    })
      .outputSync();
  const ok = run([`${dir}/out.svg`, `${dir}/a.txt`]);
  assert.equal(ok.code, 0);
  assert.match(Deno.readTextFileSync(`${dir}/out.svg`), /<\/svg>$/);
  const bad = run([`${dir}/bad.svg`, `${dir}/bad.txt`]);
  assert.equal(bad.code, 2);
  assert.match(new TextDecoder().decode(bad.stderr), /^error: .*bad\.txt: no "step:N\/M/);
  assert.throws(() => Deno.statSync(`${dir}/bad.svg`));
});
