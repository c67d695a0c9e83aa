// The progress display: number formats, the bar, and the two modes of the status line.
import assert from "node:assert/strict";
import { bar, fmtBytes, fmtCount, fmtDuration, Rate, StatusLine } from "./progress.ts";

function sink(tty: boolean) {
  let text = "";
  return {
    s: {
      writeSync: (p: Uint8Array) => ((text += new TextDecoder().decode(p)), p.length),
      isTerminal: () => tty,
    },
    text: () => text,
  };
}

Deno.test("progress: formats", () => {
  assert.equal(fmtBytes(512), "512 B");
  assert.equal(fmtBytes(1536), "1.50 KiB");
  assert.equal(fmtBytes(200_001_024), "190.7 MiB");
  assert.equal(fmtBytes(103 * 200_001_024), "19.2 GiB");
  assert.equal(fmtDuration(7), "0:07");
  assert.equal(fmtDuration(723), "12:03");
  assert.equal(fmtDuration(3723), "1:02:03");
  assert.equal(fmtDuration(NaN), "?");
  assert.equal(fmtCount(1234567), "1,234,567");
  assert.equal(bar(0.5, 10), "[#####.....]");
  assert.equal(bar(NaN, 4), "[....]");
  assert.equal(bar(2, 4), "[####]");
  const r = new Rate(1000);
  r.sample(0, 0);
  r.sample(500, 500);
  assert.equal(r.perSecond(), 1000);
});

Deno.test("progress: terminal mode redraws one line in place", () => {
  const { s, text } = sink(true);
  const st = new StatusLine({ sink: s });
  assert.equal(st.tty, true);
  st.update("a 10%");
  st.update("a 20%"); // throttled: within 100 ms of the last
  st.log("done a");
  st.update("b 50%", true);
  st.done("finished");
  assert.equal(text(), "\ra 10%\x1b[K\r\x1b[Kdone a\na 10%\rb 50%\x1b[K\r\x1b[Kfinished\n");
});

Deno.test("progress: elsewhere, plain lines at most every few seconds", () => {
  const { s, text } = sink(false);
  const st = new StatusLine({ sink: s, intervalS: 60 });
  st.update("first");
  st.update("second"); // within 60 s: skipped
  st.update("forced", true);
  st.log("a log line");
  st.done();
  assert.equal(text(), "first\nforced\na log line\n");
  const off = sink(false);
  const quiet = new StatusLine({ sink: off.s, intervalS: 0 });
  quiet.update("never");
  quiet.update("only forced", true);
  assert.equal(off.text(), "only forced\n");
});
