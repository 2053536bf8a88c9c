"""`edgecpm export SRC --format F --quant Q --out PATH [--json]`: one command for every export format.

It only parses and dispatches through `exporters.registry.run_export`; format-specific settings travel as
`--option KEY=VALUE` (repeatable; VALUE is read as JSON when it parses, else as a string) into the exporter's
`**options`, so a new format needs no change here.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgecpmError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint or GGUF to gguf / onnx / executorch")
    p.add_argument("src", help="HF checkpoint folder or .gguf file")
    p.add_argument("--format", required=True, help="gguf, onnx or executorch")
    p.add_argument("--quant", default=None, help="quantization (per format, e.g. gguf: f16 q8_0 q4_k_m)")
    p.add_argument("--out", required=True, help="artifact folder (gguf also accepts a path ending in .gguf)")
    p.add_argument("--threads", type=int, default=None, help="threads for quantization")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="format-specific option passed to the exporter (repeatable)")
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
    from ..exporters.registry import run_export

    options = parse_options(args.option)
    if args.threads is not None:
        options["threads"] = args.threads
    result = run_export(args.src, args.format, args.out, quant=args.quant, progress=not args.json, **options)
    manifest = getattr(result, "manifest", result)
    path = Path(getattr(result, "path", args.out))
    info = asdict(manifest) if is_dataclass(manifest) else {"result": str(manifest)}
    if args.json:
        print(json.dumps({"path": str(path), **info}, indent=2))
        return 0
    size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    print(f"wrote {path} ({info.get('format', args.format)}, {info.get('quant', args.quant)}, "
          f"{size / 1e6:.1f} MB)")
    return 0
