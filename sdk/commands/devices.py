"""`edgecpm devices [--json] [--show NAME]`: the bundled device profiles (and the probed host with --host)."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list device profiles")
    p.add_argument("--show", default=None, metavar="NAME", help="print one profile in full, with every source")
    p.add_argument("--host", action="store_true", help="also probe this machine (measures memory bandwidth)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _num(fact: dict) -> str:
    return "unknown" if fact["value"] is None else f"{fact['value']:g}"


def run(args: argparse.Namespace) -> int:
    from edgecpm.device_profiles import list_profiles, load_profile

    if args.show:
        d = load_profile(args.show).to_dict()
        if args.json:
            print(json.dumps(d, indent=2))
            return 0
        for key, value in d.items():
            if isinstance(value, dict) and "source" in value:
                value = f"{_num(value)}  [{value['status']}] {value['source']}"
            elif key == "compute":
                value = "; ".join(f"{k}={_num(v)} [{v['status']}]" for k, v in value.items())
            print(f"{key:<22} {value}")
        return 0
    profiles = list_profiles()
    if args.host:
        profiles.append(load_profile("host"))
    if args.json:
        print(json.dumps([p.to_dict() for p in profiles], indent=2))
        return 0
    print(f"{'name':<24} {'kind':<9} {'engine':<6} {'mem GiB':>7} {'share':>5} {'BW GB/s':>8}  backends")
    for p in profiles:
        bw, basis = p.effective_bandwidth()
        bw_txt = "unknown" if bw is None else f"{bw:.0f}" + ("" if basis == "measured" else "*")
        print(
            f"{p.name:<24} {p.kind:<9} {p.engine:<6} {p.memory_gib.value:>7.1f} "
            f"{p.app_share.value or 1:>5.2f} "
            f"{bw_txt:>8}  {', '.join(p.backends)}"
        )
    print(
        "\n* 70% of the spec-sheet bandwidth (no measurement). `edgecpm devices --show NAME` prints sources;"
        " `host` is probed live."
    )
    return 0
