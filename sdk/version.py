"""The edgecpm version: one place, read by the package, the CLI, artifact manifests and pyproject.toml."""

__version__ = "0.1.0"
