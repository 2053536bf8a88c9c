"""`edgecpm export SRC --format F --quant Q --out PATH [--json]`: one command for every export format.

It only parses and dispatches through `exporters.registry.run_export` (which returns the `Artifact`: `.path`,
`.model_file`, `.manifest`, the same for every format); format-specific settings travel as
`--option KEY=VALUE` (repeatable; VALUE is read as JSON when it parses, else as a string) into the exporter's
`**options`, so a new format needs no change here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from edgecpm.errors import EdgecpmError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint or GGUF to gguf / onnx / executorch")
    p.add_argument("src", help="HF checkpoint folder or .gguf file")
    p.add_argument("--format", required=True, help="gguf, onnx or executorch")
    p.add_argument("--quant", default=None, help="quantization (per format, e.g. gguf: f16 q8_0 q4_k_m)")
    p.add_argument("--out", required=True, help="artifact folder (gguf also accepts a path ending in .gguf)")
    p.add_argument("--threads", type=int, default=None, help="threads for quantization")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="format-specific option passed to the exporter (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the manifest as JSON; no progress bar")
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise EdgecpmError(f"--option {item!r}: expected KEY=VALUE")
        try:
            options[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = value
    return options


def run(args: argparse.Namespace) -> int:
    from edgecpm.exporters.registry import run_export

    options = parse_options(args.option)
    if args.threads is not None:
        options["threads"] = args.threads
    art = run_export(args.src, args.format, args.out, quant=args.quant, progress=not args.json, **options)
    if args.json:
        print(json.dumps({"path": str(art.path), **asdict(art.manifest)}, indent=2))
        return 0
    files = [art.path] if art.path.is_file() else [f for f in art.path.rglob("*") if f.is_file()]
    if art.path.is_file():
        files.append(art.path.with_name(art.path.name + ".edgecpm.json"))
    size = sum(f.stat().st_size for f in files if f.is_file())
    print(f"wrote {art.path} ({art.manifest.format}, {art.manifest.quant}, {size / 1e6:.1f} MB)")
    return 0
