"""Where an EAGLE head lives beside its target and what its description says (no torch: the planner reads it).

Files beside the target: `<target>.eagle.safetensors` (fc + the decoder layer) and `<target>.eagle.json` (shapes
and training notes, including the held-out agreement the planner weighs); for an artifact folder,
`eagle_head.safetensors` / `eagle_head.json` inside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError

FORMAT = "edgecpm-eagle-head"
VERSION = 1
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim")


def head_path(target: Path) -> Path:
    """Where the head of the model at `target` lives (a file's sibling, or inside an artifact folder)."""
    target = Path(target)
    if target.is_dir():
        return target / "eagle_head.json"
    return target.with_name(target.stem + ".eagle.json")


def read_description(json_path: Path, config: Any) -> dict[str, Any]:
    """The head's JSON description, checked to be one and to fit a target with `config`."""
    json_path = Path(json_path)
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EdgecpmError(f"cannot read the EAGLE head {json_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise EdgecpmError(f"{json_path} is not an EAGLE head description (format {FORMAT!r})")
    for f in SHAPE_FIELDS:
        if meta.get(f) != getattr(config, f):
            raise EdgecpmError(
                f"the EAGLE head {json_path.name} was trained for {f}={meta.get(f)}, "
                f"this model has {getattr(config, f)}"
            )
    return meta
