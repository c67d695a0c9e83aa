// The GPT-2 tokenizer: known ids for fixed strings, encode_ordinary semantics, the document
// prefix, and agreement with a second, independent implementation (js-tiktoken, test-only) on
// tricky strings and on a sample of the Brown corpus.
import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only cross-check, pinned here
import { getEncoding } from "npm:js-tiktoken@1.0.21";
import { decodeTokens, encodeOrdinary, EOT, GPT2_VOCAB, tokenizeDocument } from "./gpt2.ts";
import { brownToText, corpusDir, listBrownFiles } from "./brown.ts";
import { join } from "node:path";

const KNOWN: [string, number[]][] = [
  ["Hello world", [15496, 995]],
  ["hello world", [31373, 995]],
  [" Hello", [18435]],
  ["The quick brown fox", [464, 2068, 7586, 21831]],
  ["Hello  world", [15496, 220, 995]],
  ["\n\n", [628]],
  ["I'm don't", [40, 1101, 836, 470]],
  ["1234567", [10163, 2231, 3134]],
  ["naïve café 日本", [2616, 38776, 40304, 10545, 245, 98, 17312, 105]],
  // encode_ordinary: the special token's text is plain text
  ["<|endoftext|>", [27, 91, 437, 1659, 5239, 91, 29]],
];

Deno.test("gpt2: known token ids", () => {
  for (const [text, ids] of KNOWN) {
    assert.deepEqual(encodeOrdinary(text), ids, JSON.stringify(text));
    assert.equal(decodeTokens(ids), text);
  }
  assert.equal(EOT, 50256);
  assert.equal(GPT2_VOCAB, 50257);
  assert.equal(decodeTokens([EOT]), "<|endoftext|>");
});

Deno.test("gpt2: a document is <|endoftext|> then its tokens, as uint16", () => {
  const t = tokenizeDocument("Hello world");
  assert.ok(t instanceof Uint16Array);
  assert.deepEqual([...t], [50256, 15496, 995]);
  assert.deepEqual([...tokenizeDocument("")], [50256]);
  assert.deepEqual([...tokenizeDocument("a<|endoftext|>")].filter((x) => x === EOT).length, 1);
});

Deno.test("gpt2: agrees with js-tiktoken on tricky strings and Brown documents", () => {
  const ref = getEncoding("gpt2");
  const tricky = [
    "  leading and trailing  ",
    "tabs\tand\r\nwindows\r\nnewlines\n\n\n",
    "'s 'S 't 're 've 'm 'll 'd 'LL",
    "emoji 🎉🚀 and ﬁ ligature, zero\u200bwidth, nbsp\u00a0here",
    "numbers 3.14159 1,000,000 2024-05-20",
    "<|endoftext|><|endoftext|>x",
    "€100 — “quoted” ‘text’ …",
  ];
  const names = listBrownFiles().filter((_, i) => i % 10 === 3);
  const brown = names.map((n) => brownToText(Deno.readTextFileSync(join(corpusDir(), n))));
  let tokens = 0;
  for (const s of [...tricky, ...brown]) {
    const want = ref.encode(s, [], []), got = encodeOrdinary(s);
    tokens += want.length;
    assert.deepEqual(got, want, JSON.stringify(s.slice(0, 60)));
  }
  assert.ok(tokens > 100000, `compared ${tokens} tokens`);
});
