"""Where this host's probe and calibrated coefficients live: one JSON file per machine shape.

`~/.cache/edgecpm/calibration/<host-id>.json` (`EDGECPM_CALIBRATION_DIR` overrides the folder) holds the host
probe (`host.py`) and the cost-model coefficients `edgecpm profile` fitted per backend and quant
(`calibration.py`); `plan --device host` reads both. Plain JSON storage, written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError

SCHEMA = "edgecpm.calibration/1"


def calibration_dir() -> Path:
    return Path(os.environ.get("EDGECPM_CALIBRATION_DIR") or Path.home() / ".cache" / "edgecpm" / "calibration")


def calibration_path(hid: str) -> Path:
    return calibration_dir() / f"{hid}.json"


def load_calibration(hid: str) -> dict[str, Any] | None:
    """The stored calibration of host `hid`, None when there is none; a corrupt file is a clear error."""
    path = calibration_path(hid)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgecpmError(f"calibration file {path} is corrupt ({exc}); delete it and rerun edgecpm profile") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EdgecpmError(f"calibration file {path} is not an {SCHEMA} file; delete it and rerun edgecpm profile")
    return data


def _write(hid: str, data: dict[str, Any]) -> Path:
    path = calibration_path(hid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_probe(probe: dict[str, Any]) -> Path:
    """Store (or refresh) the host probe, keeping any backend coefficients already there."""
    hid = probe["host_id"]
    data = load_calibration(hid) or {"schema": SCHEMA, "host_id": hid, "backends": {}}
    data["probe"] = probe
    return _write(hid, data)


def save_coefficients(probe: dict[str, Any], fitted: dict[str, dict[str, Any]]) -> Path:
    """Store the probe and fitted coefficients keyed `backend/quant`, replacing older ones."""
    hid = probe["host_id"]
    data = load_calibration(hid) or {"schema": SCHEMA, "host_id": hid, "backends": {}}
    data["probe"] = probe
    data.setdefault("backends", {}).update(fitted)
    return _write(hid, data)


def device_calibration_id(name: str) -> str:
    """Calibration id of a (non-host) device profile: measurements imported from that device."""
    return f"device-{name}"
