// The Brown corpus shards: text reconstruction, the fixed split, and a deterministic build (the
// same sha256 twice and as pinned here), idempotent reruns, and a rebuild after tampering.
import assert from "node:assert/strict";
import { join } from "node:path";
import { brownToText, buildBrown, listBrownFiles, splitBrown } from "./brown.ts";
import { readShardHeader, readShardTokens } from "./shard.ts";
import { decodeTokens, EOT } from "./gpt2.ts";

// Pinned: a change to the reconstruction, the split, the order or the tokenizer changes these.
// Update them (and data/README.md) together with BROWN_BUILD when that is intended.
const PINNED = {
  train: {
    tokens: 1170829,
    sha256: "ad8f22bc5434b4cfb5f3c16a7585eaca4799b26e98e951efb5108441c097fdca",
  },
  val: {
    tokens: 130456,
    sha256: "b5975decb6ee8b23bcf20d93c0e1d9837aea0f27d12ecd8c0f8412c5b20ca646",
  },
};

Deno.test("brown: tagged text becomes readable text", () => {
  const tagged = "\n\n\t1/cd-hl ./.-hl\nIntroduction/nn-hl\nThe/at ``/`` best/jjt ''/'' " +
    "plan/nn ,/, said/vbd Mr./np Allen/np Jr./np ./.\nIt/pps costs/vbz $5/nns (/( or/cc 1/2/cd )/) ;/. ;/. " +
    "'/' fine/jj '/' ?/.\n\n\n\tNext/ap paragraph/nn ./.\n";
  assert.equal(
    brownToText(tagged),
    "1.\nIntroduction\nThe \"best\" plan, said Mr. Allen Jr. It costs $5 (or 1/2); 'fine'?" +
      "\n\nNext paragraph.",
  );
});

Deno.test("brown: the split is fixed: every 10th file is validation", () => {
  const names = listBrownFiles();
  assert.equal(names.length, 500);
  assert.equal(names[0], "ca01");
  assert.equal(names.at(-1), "cr09");
  const a = splitBrown(names), b = splitBrown(names);
  assert.equal(a.val.length, 50);
  assert.equal(a.train.length, 450);
  assert.deepEqual(a.val.slice(0, 3), ["ca10", "ca20", "ca30"]);
  assert.deepEqual(a, b, "deterministic");
  assert.deepEqual([...a.train, ...a.val].sort(), names, "a partition");
  assert.notDeepEqual(a.train, names.filter((n) => !a.val.includes(n)), "train is shuffled");
});

function hex(b: ArrayBuffer): string {
  return [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
}
async function sha256(path: string): Promise<string> {
  return hex(await crypto.subtle.digest("SHA-256", Deno.readFileSync(path)));
}

Deno.test("brown: deterministic build (pinned sha256), idempotent rerun, rebuild when tampered", async () => {
  const a = Deno.makeTempDirSync({ prefix: "mn-brown-a-" });
  const b = Deno.makeTempDirSync({ prefix: "mn-brown-b-" });
  try {
    const ra = buildBrown({ outDir: a }), rb = buildBrown({ outDir: b, force: true });
    assert.ok(ra.built && rb.built);
    console.log(
      `brown: train ${ra.train.tokens} tokens (${ra.train.documents} docs), val ${ra.val.tokens} tokens (${ra.val.documents} docs); built in ${
        ra.seconds.toFixed(1)
      } s`,
    );
    for (const split of ["train", "val"] as const) {
      const fa = join(a, ra[split].file), fb = join(b, rb[split].file);
      assert.equal(await sha256(fa), await sha256(fb), `${split}: same bytes twice`);
      assert.equal(await sha256(fa), PINNED[split].sha256, `${split}: pinned sha256`);
      assert.equal(ra[split].sha256, PINNED[split].sha256);
      assert.equal(readShardHeader(fa).tokens, PINNED[split].tokens);
      assert.equal(ra[split].tokens, PINNED[split].tokens);
    }
    assert.deepEqual(
      [...Deno.readDirSync(a)].map((e) => e.name).sort(),
      ["brown.json", "brown_train_000001.bin", "brown_val_000000.bin"],
    );
    // contents: one <|endoftext|> before each document, the val shard starts with ca10
    const val = readShardTokens(join(a, "brown_val_000000.bin"));
    const train = readShardTokens(join(a, "brown_train_000001.bin"));
    assert.equal(val[0], EOT);
    assert.equal(val.filter((t) => t === EOT).length, 50);
    assert.equal(train.filter((t) => t === EOT).length, 450);
    assert.ok(train.every((t) => t < 50257));
    const firstVal = decodeTokens(val.subarray(1, 40));
    assert.match(
      firstVal,
      /^Vincent G\. Ierulli has been appointed temporary assistant district attorney/,
      firstVal,
    );

    // rerun: nothing is rebuilt
    const again = buildBrown({ outDir: a });
    assert.equal(again.built, false);
    assert.deepEqual(again.train, ra.train);
    // a damaged shard is noticed and rebuilt to the same bytes
    const f = join(a, "brown_val_000000.bin");
    const bytes = Deno.readFileSync(f);
    bytes[2000] ^= 1;
    Deno.writeFileSync(f, bytes);
    const fixed = buildBrown({ outDir: a });
    assert.equal(fixed.built, true);
    assert.equal(await sha256(f), PINNED.val.sha256);
  } finally {
    Deno.removeSync(a, { recursive: true });
    Deno.removeSync(b, { recursive: true });
  }
});
