"""Untrusted checkpoints and artifacts: loading never runs code from them, and names inside their manifests and
indexes cannot reach outside their folder.

Each test plants a payload that would leave a marker file if it ever ran (a pickle's `__reduce__`, a
`trust_remote_code` module, a Jinja escape), or a path that points outside (`../`, absolute, symlink), and
checks the marker is absent and the load ends in one `EdgecpmError`.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgecpm
from edgecpm.errors import EdgecpmError
from edgecpm.exporters.manifest import read_manifest
from edgecpm.tokenizer import load_tokenizer_dir

PACKAGE_DIRS = [Path(edgecpm.__file__).parent, Path(edgecpm.exporters.__file__).parent]


class _Payload:
    """Unpickling this creates `marker` (what a malicious pytorch_model.bin does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_pickle_weights_are_never_unpickled(tiny_tied, tmp_path):
    marker = tmp_path / "pwned-pickle"
    only_bin = tmp_path / "only_bin"
    only_bin.mkdir()
    shutil.copyfile(tiny_tied / "config.json", only_bin / "config.json")
    (only_bin / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(EdgecpmError, match="never unpickles"):
        edgecpm.load(only_bin)
    # beside real safetensors, a planted .bin is ignored
    both = _copy(tiny_tied, tmp_path / "both")
    (both / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    edgecpm.load(both).logits([1, 2, 3])
    assert not marker.exists()


def test_remote_code_in_checkpoint_is_never_imported(tiny_tied, tmp_path):
    """The published configs carry `auto_map` -> modeling_minicpm.py; edgecpm never imports such files."""
    marker = tmp_path / "pwned-remote-code"
    ckpt = _copy(tiny_tied, tmp_path / "ckpt")
    for name in ("modeling_minicpm.py", "configuration_minicpm.py", "tokenization_minicpm.py"):
        (ckpt / name).write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    cfg = json.loads((ckpt / "config.json").read_text())
    assert "auto_map" in cfg  # the published layout has it
    code = (
        "import sys, edgecpm\n"
        f"m = edgecpm.load({str(ckpt)!r})\n"
        "m.generate('Hi', max_new_tokens=2)\n"
        "m.generate([{'role': 'user', 'content': 'Hi'}], max_new_tokens=2)\n"
        "print(sorted(k for k in sys.modules if 'minicpm' in k))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def test_no_code_execution_primitives_in_the_loaders():
    """Static check over the whole package: no pickle / torch.load / numpy allow_pickle / eval / exec /
    trust_remote_code=True / non-sandboxed Jinja anywhere in edgecpm's own code."""
    found = []
    for base in PACKAGE_DIRS:
        for path in base.rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for call in _calls(tree):
                name = _dotted(call.func)
                if name in (
                    "pickle.load",
                    "pickle.loads",
                    "torch.load",
                    "eval",
                    "exec",
                    "marshal.loads",
                    "jinja2.Environment",
                    "Environment",
                    "jinja2.Template",
                    "Template",
                ) or name.endswith(("Unpickler", "dill.load")):
                    found.append(f"{path.name}:{call.lineno} {name}")
                for kw in call.keywords:
                    if (
                        kw.arg in ("trust_remote_code", "allow_pickle", "weights_only")
                        and isinstance(kw.value, ast.Constant)
                        and kw.value.value is (kw.arg != "weights_only")
                    ):
                        found.append(f"{path.name}:{call.lineno} {kw.arg}={kw.value.value}")
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                    if any(n in ("pickle", "dill", "marshal", "cloudpickle") for n in names):
                        found.append(f"{path.name}:{node.lineno} import {names}")
    assert not found, found


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARKER') }}",
        "{% set x = messages.append({'role': 'x', 'content': 'y'}) %}{{ messages }}",
        "{{ messages.__class__.__base__.__subclasses__() }}",
        "{{ 'a' * 10**10 }}",
        "{{ 2 ** 100000000 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ],
)
def test_chat_templates_are_sandboxed_and_bounded(tiny_tied, tmp_path, template):
    """The checkpoint's chat template runs in jinja2's ImmutableSandboxedEnvironment with bounded products
    and a line budget: escapes, mutation, memory bombs and endless loops are one EdgecpmError."""
    import time

    marker = tmp_path / "MARKER"
    ckpt = _copy(tiny_tied, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template.replace("MARKER", str(marker))
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer_dir(ckpt, bos_id=1, eos_ids=(2,))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        t0 = time.perf_counter()
        with pytest.raises(EdgecpmError, match="chat template error"):
            tok.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert time.perf_counter() - t0 < 30
    finally:
        os.chdir(cwd)
    assert not marker.exists()


def _gguf_artifact(tiny_tied, tmp_path) -> Path:
    from edgecpm.exporters.registry import run_export

    out = tmp_path / "art"
    run_export(tiny_tied, "gguf", out, quant="q8_0", progress=False)
    return out


@pytest.fixture(scope="module")
def gguf_artifact(tmp_path_factory):
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    return _gguf_artifact(cached_checkpoint(SyntheticSpec()), tmp_path_factory.mktemp("gguf"))


def _edit_manifest(art: Path, **changes) -> None:
    d = json.loads((art / "edgecpm.json").read_text())
    d.update(changes)
    (art / "edgecpm.json").write_text(json.dumps(d))


@pytest.mark.parametrize(
    "name", ["../secret.gguf", "/etc/passwd", "sub/../../secret.gguf", "..", "", "a\\..\\..\\secret.gguf", "link.gguf"]
)
def test_manifest_paths_cannot_escape_the_artifact(gguf_artifact, tmp_path, name):
    art = _copy(gguf_artifact, tmp_path / "art")
    secret = tmp_path / "secret.gguf"
    shutil.copyfile(art / "model.gguf", secret)  # a real model outside the folder: loading it must not happen
    if name == "link.gguf":
        (art / "link.gguf").symlink_to(secret)
    _edit_manifest(art, model_files=[name])
    with pytest.raises(EdgecpmError, match="not a plain file name|points outside"):
        read_manifest(art)
    with pytest.raises(EdgecpmError):
        edgecpm.load(art)
    if name not in ("../secret.gguf", "link.gguf"):
        return
    r = subprocess.run(
        [sys.executable, "-m", "edgecpm", "inspect", str(art)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and r.stderr.startswith("edgecpm: error: ") and len(r.stderr.splitlines()) == 1


def test_tokenizer_file_names_cannot_escape(gguf_artifact, tmp_path):
    art = _copy(gguf_artifact, tmp_path / "art")
    _edit_manifest(art, tokenizer_files=["../../etc/passwd"])
    with pytest.raises(EdgecpmError, match="not a plain file name"):
        read_manifest(art)


def test_symlinked_model_file_pointing_outside_is_refused(gguf_artifact, tmp_path):
    art = _copy(gguf_artifact, tmp_path / "art")
    outside = tmp_path / "elsewhere.gguf"
    os.replace(art / "model.gguf", outside)
    (art / "model.gguf").symlink_to(outside)
    with pytest.raises(EdgecpmError, match="points outside"):
        edgecpm.load(art)
    # a symlink that stays inside the folder is fine
    os.replace(outside, art / "real.gguf")
    (art / "model.gguf").unlink()
    (art / "model.gguf").symlink_to("real.gguf")
    read_manifest(art)


def test_shards_index_names_cannot_escape(tiny_tied, tmp_path):
    ckpt = _copy(tiny_tied, tmp_path / "ckpt")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    shard = index["weight_map"][first]
    shutil.copyfile(ckpt / shard, tmp_path / "outside.safetensors")
    for bad in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        index["weight_map"][first] = bad
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(EdgecpmError, match="not a plain file name"):
            edgecpm.load(ckpt)


def test_android_packaging_refuses_escaping_manifest(tmp_path):
    from edgecpm.config import load_hf_config
    from edgecpm.exporters.executorch_android import package_android
    from edgecpm.exporters.manifest import make_manifest
    from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

    src = cached_checkpoint(SyntheticSpec())
    art = tmp_path / "pte"
    art.mkdir()
    (tmp_path / "secret.txt").write_text("secret")
    shutil.copyfile(src / "tokenizer.model", art / "tokenizer.model")
    make_manifest(
        "executorch",
        "8da4w",
        load_hf_config(src),
        ["../secret.txt"],
        "sha256:0",
        tokenizer_files=["tokenizer.model"],
        max_seq_len=64,
        max_context_len=128,
    ).write(art)
    with pytest.raises(EdgecpmError, match="not a plain file name"):
        package_android(art, tmp_path / "bundle", verify=False)
    assert not (tmp_path / "bundle").exists()
