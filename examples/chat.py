"""Load a model and chat with it: one streamed reply per prompt, through the model's chat template.

python examples/chat.py                          # the bundled SmolLM2-135M-Instruct
python examples/chat.py path/to/MiniCPM4-0.5B --prompt "What is a KV cache?" --max-new-tokens 64
"""

from __future__ import annotations

import argparse

import edgecpm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="checkpoint dir, .gguf or artifact (default: SmolLM2)")
    ap.add_argument("--prompt", action="append", help="user turn (repeat for several); default: two questions")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    args = ap.parse_args(argv)

    model = edgecpm.load(args.model)
    print(f"loaded {model.path.name} on {model.backend.name}")
    messages = [{"role": "system", "content": "You are a concise assistant."}]
    for prompt in args.prompt or ["What is the capital of France?", "And of Italy?"]:
        messages.append({"role": "user", "content": prompt})
        print(f"> {prompt}")
        reply = ""
        for piece in model.generate(
            messages, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0, stream=True
        ):
            reply += piece
            print(piece, end="", flush=True)
        print()
        messages.append({"role": "assistant", "content": reply})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
