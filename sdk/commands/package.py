"""`edgecpm package android ARTIFACT --out DIR [--json]`: the files the Android demo app pushes to the phone."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("package", help="lay out an artifact for a device app (android)")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    a = targets.add_parser("android", help="model.pte + tokenizer + edgecpm.json + push.sh for the Android app")
    a.add_argument("artifact", help="ExecuTorch artifact folder (edgecpm export --format executorch)")
    a.add_argument("--out", required=True, help="bundle folder to write")
    a.add_argument(
        "--no-verify", action="store_true", help="skip loading the program with ExecuTorch's stock kernels first"
    )
    a.add_argument("--json", action="store_true", help="print the bundle manifest as JSON")
    a.set_defaults(func=run_android)


def run_android(args: argparse.Namespace) -> int:
    from edgecpm.exporters.executorch_android import package_android

    data = package_android(args.artifact, args.out, verify=not args.no_verify)
    if args.json:
        print(json.dumps({"path": args.out, **data}, indent=2))
        return 0
    android = data["extra"]["android"]
    files = android["files"]
    total = sum(f["bytes"] for f in files.values())
    print(
        f"wrote {args.out}: {', '.join(f['name'] for f in files.values())}, edgecpm.json, push.sh "
        f"({total / 1e6:.1f} MB; push with {args.out}/push.sh to {android['device_dir']})"
    )
    return 0
