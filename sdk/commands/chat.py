"""`edgecpm chat PATH`: interactive, streaming chat with the model's chat template."""

from __future__ import annotations

import argparse
import sys

from edgecpm.api import load
from edgecpm.commands.generate import add_model_options, add_sampling_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="interactive streaming chat (empty line or Ctrl-D to quit)")
    add_model_options(p)
    add_sampling_options(p)
    p.add_argument("--system", default=None, help="system message")
    p.set_defaults(func=run, max_new_tokens=256)


def run(args: argparse.Namespace) -> int:
    model = load(
        args.path, backend=args.backend, dtype=args.dtype, threads=args.threads, device=args.device, progress=True
    )
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        messages.append({"role": "user", "content": line.rstrip("\n")})
        reply = ""
        for piece in model.generate(
            messages,
            stream=True,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
        ):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})
