"""`Artifact`: what every export returns (`edgecpm.export`, the three exporters, the CLI's `--json`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecpm.exporters.manifest import Manifest


@dataclass(frozen=True)
class Artifact:
    """The artifact folder (or, for a single-file GGUF, the .gguf path), its main model file and manifest."""

    path: Path
    model_file: Path
    manifest: Manifest
