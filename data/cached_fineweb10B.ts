/**
 * Downloads the GPT-2 tokens of FineWeb10B (Hugging Face dataset kjj0/fineweb10B-gpt2) into
 * data/fineweb10B/, as the original data/cached_fineweb10B.py does: fineweb_val_000000.bin always,
 * then fineweb_train_000001.bin .. N (default 103, all of it; each 100M tokens).
 *
 *   deno run -A data/cached_fineweb10B.ts [N] [--dir DIR]      (deno task data:fineweb10B [N])
 *
 * Resumable, retried and verified; see data/download.ts for the details and the environment.
 *
 * @module
 */
import { cachedFineWebMain } from "./download.ts";

if (import.meta.main) {
  Deno.exit(
    await cachedFineWebMain(Deno.args, {
      script: "cached_fineweb10B.ts",
      repo: "kjj0/fineweb10B-gpt2",
      dirName: "fineweb10B",
      defaultChunks: 103,
    }),
  );
}
