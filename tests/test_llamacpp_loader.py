"""The one llama.cpp opener: its placement decision on recorded cpuinfo texts, and real loads on this CPU.

The real-model checks run in a subprocess: on an AMX CPU a wrong decision is a segfault, which must show as a
failed test rather than end the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecpm.backends.llamacpp_loader import (
    ENV_VAR,
    MATMUL_WEIGHT,
    choose_policy,
    cpu_flags,
    repack_eligible,
)
from edgecpm.errors import EdgecpmError

CPUINFO = Path(__file__).parent / "data" / "cpuinfo"


def flags_of(name: str) -> frozenset[str]:
    return cpu_flags((CPUINFO / name).read_text(encoding="utf-8"))


def test_amx_xeon_skips_amx_but_keeps_repacking() -> None:
    flags = flags_of("xeon-sapphire-rapids-amx.txt")
    assert {"amx_int8", "amx_tile", "avx2"} <= flags
    policy = choose_policy(flags, env=None, build_has_amx=True)
    assert policy.mode == "repack-only"
    assert "amx_int8" in policy.reason
    # a build without the AMX buffer type cannot crash in it
    assert choose_policy(flags, env=None, build_has_amx=False).mode == "default"
    # ggml could not be asked: assume the native build has it (the safe side)
    assert choose_policy(flags, env=None, build_has_amx=None).mode == "repack-only"


@pytest.mark.parametrize("name", ["amd-zen4-avx512.txt", "intel-skylake-avx2.txt", "arm-cortex-a76-rpi5.txt"])
def test_cpus_without_amx_keep_llamacpp_default(name: str) -> None:
    flags = flags_of(name)
    assert flags, "the recorded text has a flags/Features line"
    assert choose_policy(flags, env=None, build_has_amx=True).mode == "default"


def test_override_variable_wins_both_ways() -> None:
    amx = flags_of("xeon-sapphire-rapids-amx.txt")
    plain = flags_of("intel-skylake-avx2.txt")
    assert choose_policy(amx, env="1", build_has_amx=True).mode == "default"
    assert choose_policy(plain, env="0", build_has_amx=False).mode == "plain"
    assert choose_policy(amx, env="", build_has_amx=True).mode == "repack-only"  # empty = unset
    with pytest.raises(EdgecpmError, match=ENV_VAR):
        choose_policy(amx, env="maybe", build_has_amx=True)


def test_repack_rules_follow_ggml() -> None:
    avx2 = flags_of("intel-skylake-avx2.txt")
    assert repack_eligible("Q4_0", rows=576, ndim=2, flags=avx2)
    assert repack_eligible("Q4_K", rows=1536, ndim=2, flags=avx2)
    assert not repack_eligible("Q4_0", rows=580, ndim=2, flags=avx2)  # rows must interleave by 8
    assert not repack_eligible("Q4_1", rows=576, ndim=2, flags=avx2)  # no x86 repack kernel
    assert not repack_eligible("Q8_0", rows=576, ndim=2, flags=avx2)
    assert not repack_eligible("Q4_0", rows=576, ndim=2, flags=flags_of("arm-cortex-a76-rpi5.txt"))
    assert MATMUL_WEIGHT.match("blk.12.ffn_down.weight") and MATMUL_WEIGHT.match("output.weight")
    assert not MATMUL_WEIGHT.match("token_embd.weight")  # read by GET_ROWS, never repacked


CHILD = r"""
import json, sys
import numpy as np
from edgecpm.backends.llamacpp_loader import open_llama
llm = open_llama(sys.argv[1], n_ctx=128, n_batch=64, n_ubatch=64, n_threads=1, n_threads_batch=1, logits_all=True)
toks = llm.tokenize(b"The capital of France is Paris, and the capital of Italy is")
llm.eval(toks)
logits = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)
np.save(sys.argv[2], logits)
print(json.dumps({"policy": llm.edgecpm_buffer_policy.mode}))
"""


def run_child(model: Path, out: Path, env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if env_value is not None:
        env[ENV_VAR] = env_value
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, f"llama.cpp load/decode failed (exit {proc.returncode}): {proc.stderr[-400:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def smollm2_q4_0(smollm2_path, tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp")
    import edgecpm

    out = tmp_path_factory.mktemp("amx") / "smollm2-q4_0.gguf"
    return Path(edgecpm.export(smollm2_path, format="gguf", quant="q4_0", out=out, progress=False).path)


@pytest.mark.parametrize("quant", ["q4_1", "q4_0"])
def test_real_model_decodes_on_this_cpu(quant, smollm2_path, smollm2_q4_0, tmp_path) -> None:
    """On an AMX Xeon llama.cpp's own placement segfaults on these files; edgecpm's must not, and its logits
    must match llama.cpp's with every extra buffer type off. Not bit-equal: a prompt batch goes through the
    repacked GEMM on one side and llamafile's tinyBLAS on the other (different activation rounding; measured
    cosine >= 0.98 per position, top-1 identical); corrupt repacked weights would give unrelated logits."""
    model = smollm2_path if quant == "q4_1" else smollm2_q4_0
    ours = run_child(model, tmp_path / "ours.npy", None)
    plain = run_child(model, tmp_path / "plain.npy", "0")
    assert plain["policy"] == "plain"
    amx = any(f in cpu_flags() for f in ("amx_int8", "amx_tile"))
    assert ours["policy"] == ("repack-only" if amx else "default")
    import numpy as np

    a, b = np.load(tmp_path / "ours.npy"), np.load(tmp_path / "plain.npy")
    assert a.shape == b.shape and a.shape[0] > 8
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
    cosine = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert float(cosine.min()) > 0.95 and float(cosine.mean()) > 0.99, cosine
