"""Plan one model for three devices: a phone, a single-board computer and a Jetson.

For each device the planner picks format, quantization, backend and threads from the roofline cost model,
or says why nothing fits and what would.

    python examples/plan_devices.py [MODEL] --context 4096     # MODEL: checkpoint, .gguf or a preset name
"""

from __future__ import annotations

import argparse

import edgecpm

DEVICES = ("snapdragon-8-gen3", "raspberry-pi-5", "jetson-orin-nano-8gb")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="default: the bundled SmolLM2-135M GGUF")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--device", action="append", help=f"device profiles (default: {', '.join(DEVICES)})")
    args = ap.parse_args(argv)

    if args.model is None:
        from edgecpm.default_model import default_model_path

        args.model = str(default_model_path())
    for device in args.device or DEVICES:
        plan = edgecpm.plan(args.model, device, context=args.context).to_dict()
        choice = plan["choice"]
        if choice is None:
            print(f"{device:<22} nothing fits: {plan['reason']}")
            continue
        mem = choice["memory"]["total_bytes"] / 2**20
        print(
            f"{device:<22} {choice['backend']:<11} {choice['format']:<10} {choice['quant']:<7} "
            f"{choice['threads']} threads, {choice['predicted']['decode_tokens_per_s']:.1f} tok/s decode, "
            f"{mem:.0f} MiB at {args.context} tokens"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
