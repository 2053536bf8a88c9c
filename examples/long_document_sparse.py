"""Read a long document with InfLLM v2 sparse attention, then continue it.

Past the checkpoint's `dense_len`, each query attends to its `topk` best key blocks plus a local window
instead of the whole context, so the work per decoded token stays bounded as the document grows. The
script prefills the document (WikiText-2 text bundled with edgecpm unless --file is given), decodes a
continuation, and prints how much of the context each step attended to.

    python examples/long_document_sparse.py path/to/MiniCPM4-8B --tokens 16384
    python examples/long_document_sparse.py            # a tiny random checkpoint with a sparse_config
"""

from __future__ import annotations

import argparse
import time
from importlib import resources

import edgecpm

# blocks scaled to the tiny default checkpoint (the published MiniCPM4 uses blocks of 64 and dense_len 8192)
TINY_SPARSE = {
    "kernel_size": 8,
    "kernel_stride": 4,
    "init_blocks": 1,
    "block_size": 16,
    "window_size": 32,
    "topk": 3,
    "use_nope": False,
    "dense_len": 64,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="a checkpoint with a sparse_config (default: tiny)")
    ap.add_argument("--file", default=None, help="text file to read (default: bundled WikiText-2 excerpt)")
    ap.add_argument("--tokens", type=int, default=2048, help="document length in tokens")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)

    if args.model is None:
        from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

        args.model = cached_checkpoint(
            SyntheticSpec(num_layers=2, num_heads=8, num_kv_heads=2, hidden_size=128, sparse_config=TINY_SPARSE, seed=3)
        )
    model = edgecpm.load(args.model, backend="torch")
    sparse = model.config.sparse
    if sparse is None:
        raise SystemExit(f"{args.model} has no sparse_config: it was not trained with InfLLM v2")
    text = (
        open(args.file, encoding="utf-8").read()
        if args.file
        else resources.files("edgecpm").joinpath("data/wikitext2_excerpt.txt").read_text(encoding="utf-8")
    )
    document = model.tokenizer.decode(model.tokenizer.encode(text)[: args.tokens])
    n = len(model.encode_prompt(document))
    budget = sparse.topk * sparse.block_size + sparse.window_size
    print(
        f"document: {n} tokens; sparse past {sparse.dense_len} tokens: at most top-{sparse.topk} blocks of "
        f"{sparse.block_size} + a {sparse.window_size}-token window = {budget} keys per query"
    )
    t0 = time.perf_counter()
    result = model.generate_result(document, max_new_tokens=args.max_new_tokens)
    seconds = time.perf_counter() - t0
    context = n + len(result.token_ids)
    attended = min(budget, context) if context > sparse.dense_len else context
    print(f"continuation ({len(result.token_ids)} tokens, {seconds:.1f} s including the prefill): {result.text!r}")
    print(f"the last decode step attended to at most {attended} of {context} context tokens ({attended / context:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
