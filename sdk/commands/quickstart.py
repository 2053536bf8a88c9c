"""`edgecpm quickstart [PATH]`: the README's main job on the built-in default model (or any model).

Loads the model, generates a short chat answer while streaming it, and prints the measured tokens/s.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..api import load


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="load a model (default: bundled SmolLM2-135M), generate, report speed")
    p.add_argument("path", nargs="?", default=None)
    p.add_argument("--prompt", default="Explain in two sentences why small language models matter on phones.")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.path, threads=args.threads, progress=not args.json)
    messages = [{"role": "user", "content": args.prompt}]
    result = model.generate_result(messages, max_new_tokens=args.max_new_tokens)
    summary = {"model": str(model.path), "backend": model.backend.name, "text": result.text,
               "prompt_tokens": result.prompt_tokens, "new_tokens": len(result.token_ids),
               "prefill_tokens_per_s": round(result.prefill_tokens_per_s, 1),
               "decode_tokens_per_s": round(result.decode_tokens_per_s, 1)}
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"model:   {summary['model']} ({model.backend.name} backend)")
    print(f"prompt:  {args.prompt}")
    print(f"answer:  {result.text.strip()}")
    print(f"speed:   prefill {summary['prefill_tokens_per_s']} tokens/s, decode {summary['decode_tokens_per_s']} "
          f"tokens/s ({summary['new_tokens']} tokens)")
    sys.stdout.flush()
    return 0
