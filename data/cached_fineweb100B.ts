/**
 * Downloads the GPT-2 tokens of FineWeb100B (Hugging Face dataset kjj0/fineweb100B-gpt2) into
 * data/fineweb100B/, as the original data/cached_fineweb100B.py does: fineweb_val_000000.bin
 * always, then fineweb_train_000001.bin .. N (default 1030, all of it; each 100M tokens).
 *
 *   deno run -A data/cached_fineweb100B.ts [N] [--dir DIR]
 *
 * Resumable, retried and verified; see data/download.ts for the details and the environment.
 *
 * @module
 */
import { cachedFineWebMain } from "./download.ts";

if (import.meta.main) {
  Deno.exit(
    await cachedFineWebMain(Deno.args, {
      script: "cached_fineweb100B.ts",
      repo: "kjj0/fineweb100B-gpt2",
      dirName: "fineweb100B",
      defaultChunks: 1030,
    }),
  );
}
