"""`edgecpm generate PATH --prompt TEXT`: one completion, streamed to stdout (or one JSON object)."""

from __future__ import annotations

import argparse
import json
import sys

from edgecpm.api import load


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "path",
        nargs="?",
        default=None,
        help="HF checkpoint dir, .gguf file or exported artifact (default: bundled SmolLM2-135M)",
    )
    p.add_argument("--backend", default="auto", help="torch, llama.cpp, onnxruntime, executorch (default: auto)")
    p.add_argument("--dtype", default=None, help="torch backend compute dtype: float32 (default), bfloat16")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None, help="device profile that supplies threads (e.g. host)")


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    add_model_options(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    add_sampling_options(p)
    p.add_argument(
        "--draft",
        default=None,
        help="speculative draft (same output, fewer target forwards): prompt-lookup, eagle, eagle+fr, ode:N "
        "(a shared-layer target's own weights in N ODE steps), a model path (smaller model with the same "
        "tokenizer, or the target at lower precision), or none",
    )
    p.add_argument("--draft-tokens", type=int, default=None, help="tokens drafted per target forward (k)")
    p.add_argument(
        "--draft-tree",
        type=int,
        default=None,
        help="draft a token tree with up to this many candidates per step, verified in one forward (torch)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # a llama.cpp target verifies drafts exactly only with flash attention (docs/speculative.md); others ignore it
    spec = {"flash_attn": True} if args.draft not in (None, "none") else {}
    model = load(
        args.path,
        backend=args.backend,
        dtype=args.dtype,
        threads=args.threads,
        device=args.device,
        progress=not args.json,
        **spec,
    )
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
    )
    if args.draft is not None:
        from edgecpm.speculative import speculator_for

        sampling["draft"] = speculator_for(args.draft, model, args.draft_tokens, threads=args.threads)
        if sampling["draft"] is not None and args.draft_tree is not None:
            sampling["draft"] = sampling["draft"].with_tree(args.draft_tree)
    if args.json:
        r = model.generate_result(prompt, **sampling)
        out = {
            "text": r.text,
            "token_ids": r.token_ids,
            "prompt_tokens": r.prompt_tokens,
            "finish_reason": r.finish_reason,
            "backend": model.backend.name,
            "prefill_tokens_per_s": round(r.prefill_tokens_per_s, 2),
            "decode_tokens_per_s": round(r.decode_tokens_per_s, 2),
        }
        if "speculative" in r.extra:
            out["speculative"] = r.extra["speculative"].to_dict()
        print(json.dumps(out))
        return 0
    for piece in model.generate(prompt, stream=True, **sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
