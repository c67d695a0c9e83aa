/**
 * A tokenizer thread of data/fineweb.ts: receives `{ id, docs }`, answers `{ id, tokens }` (the
 * documents' `<|endoftext|>`-prefixed GPT-2 tokens, concatenated, transferred) or `{ id, error }`.
 *
 * @module
 */
import { tokenizeDocument } from "./gpt2.ts";

interface Job {
  id: number;
  docs: string[];
}

const scope = self as unknown as {
  onmessage: ((ev: MessageEvent<Job>) => void) | null;
  postMessage(msg: unknown, transfer?: Transferable[]): void;
};

scope.onmessage = (ev) => {
  const { id, docs } = ev.data;
  try {
    const parts = docs.map(tokenizeDocument);
    let n = 0;
    for (const p of parts) n += p.length;
    const tokens = new Uint16Array(n);
    let off = 0;
    for (const p of parts) {
      tokens.set(p, off);
      off += p.length;
    }
    scope.postMessage({ id, tokens }, [tokens.buffer]);
  } catch (e) {
    scope.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
};
