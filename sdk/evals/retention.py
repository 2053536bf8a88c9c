"""The planner's floor: a sparse or quantized choice whose measured retention is below `min_retention` is not
chosen. Measurements come from an `edgecpm eval compare` JSON (see docs/evals.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError


def measured_retention(compare: dict[str, Any] | str | Path) -> dict[str, Any]:
    """{"quant": {name: retention}, "sparse": best retention over the measured sparse budgets or None}."""
    if not isinstance(compare, dict):
        try:
            compare = json.loads(Path(compare).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EdgecpmError(f"cannot read eval comparison {compare}: {exc}") from None
    if "variants" not in compare:
        raise EdgecpmError("not an eval comparison (no 'variants'): write one with `edgecpm eval compare`")
    quant: dict[str, float] = {}
    sparse = []
    for v in compare["variants"]:
        if v.get("retention") is None:
            continue
        if v.get("kind") == "sparse":
            sparse.append(v["retention"])
        elif v.get("quant"):
            quant[v["quant"]] = min(v["retention"], quant.get(v["quant"], v["retention"]))
    return {"quant": quant, "sparse": max(sparse) if sparse else None}


def below_floor(measured: dict[str, Any] | None, quant: str, sparse: bool, floor: float | None) -> str | None:
    """Why a candidate (its quant, whether it runs sparse attention) is under the floor, or None if it is not
    (or nothing was measured for it: an unmeasured choice is not refused)."""
    if floor is None or not measured:
        return None
    q = measured.get("quant", {}).get(quant)
    if q is not None and q < floor:
        return f"measured retention of {quant} is {q:.2f}, below the floor {floor:.2f}"
    s = measured.get("sparse")
    if sparse and s is not None and s < floor:
        return f"measured retention of sparse attention is {s:.2f}, below the floor {floor:.2f}"
    return None
