/**
 * The GPT-2 BPE tokenizer (tiktoken's "gpt2" = r50k_base, 50257 ids) as the data tools use it,
 * from the npm package gpt-tokenizer (pure JavaScript, pinned here).
 *
 * Documents are tokenized as modded-nanogpt's data/fineweb.py does: `<|endoftext|>` (50256)
 * first, then `encode_ordinary(text)`, where a literal "<|endoftext|>" inside the text is plain
 * text (7 ordinary tokens), never the special token.
 *
 * @module
 */
// deno-lint-ignore no-import-prefix -- pinned here, not in deno.json: only data/ uses it
import { decode, encode } from "npm:gpt-tokenizer@4.0.0/encoding/r50k_base";

/** The package and version that tokenizes (recorded in build stamps). */
export const TOKENIZER_PACKAGE = "gpt-tokenizer@4.0.0 (r50k_base)";
/** `<|endoftext|>`: starts every document. */
export const EOT = 50256;
/** GPT-2's vocabulary size. */
export const GPT2_VOCAB = 50257;

const ORDINARY = { disallowedSpecial: new Set<string>() };

/** Token ids of `text` with special tokens treated as ordinary text (tiktoken encode_ordinary). */
export function encodeOrdinary(text: string): number[] {
  return encode(text, ORDINARY);
}

/** `[EOT, ...encodeOrdinary(text)]` as uint16, the way every document enters a shard. */
export function tokenizeDocument(text: string): Uint16Array {
  const ids = encodeOrdinary(text);
  const out = new Uint16Array(ids.length + 1);
  out[0] = EOT;
  out.set(ids, 1);
  return out;
}

/** Text of token ids (for checks and debugging). */
export function decodeTokens(ids: Iterable<number>): string {
  return decode(ids);
}
