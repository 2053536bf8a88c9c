"""8da4w / 8da8w programs execute what they claim.

The check: ExecuTorch's XNNPACK program against the same module run eagerly in torch with the same torchao
quantized weights and the same int8 dynamic activation quantization (torchao's reference math), over a
prefill and decode steps.

Tolerance: XNNPACK accumulates int8 x int4 products in int32 and applies scales afterwards, torchao's eager
path dequantizes and multiplies in fp32, and the two round the per-token activation scale/zero point
independently; a value on a rounding boundary can land one int8 step apart, which moves a logit by about
(activation scale x weight). So the program is required to be (a) within 5% of the logit range of the
quantized reference, and (b) at least 2x closer to the quantized reference than to the fp32 model, i.e. the
quantization it runs is the claimed one, not fp32 and not some other scheme (measured: about 17x for 8da4w,
3.4x for 8da8w, whose per-channel int8 weights sit close to fp32); and (c) argmax-identical on most steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.runtime")

import edgecpm  # noqa: E402
from edgecpm.exporters.executorch_exporter import build_module  # noqa: E402
from edgecpm.exporters.registry import run_export  # noqa: E402
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint  # noqa: E402
from edgecpm.weights import open_checkpoint  # noqa: E402

SPEC = SyntheticSpec(tied=False, seed=3)
CTX = 64


def _compare(artifact: Path, quant: str, embedding_bits: int | None) -> None:
    checkpoint = cached_checkpoint(SPEC)
    et = edgecpm.load(artifact)
    config, source = open_checkpoint(checkpoint)
    module, report = build_module(config, source, CTX, quant, group_size=32, embedding_bits=embedding_bits)
    assert report.quantized and not report.kept_fp32
    fp32 = edgecpm.load(checkpoint, backend="torch")
    ids = torch.randint(0, config.vocab_size, (26,), generator=torch.Generator().manual_seed(2)).tolist()
    got = [et.backend.prefill(ids[:10])]
    with torch.no_grad():
        want = [module(torch.tensor([ids[:10]]), torch.tensor([0]))[0].numpy()]
        for i in range(10, 26):
            got.append(et.backend.decode([ids[i]])[0])
            want.append(module(torch.tensor([[ids[i]]]), torch.tensor([i]))[0].numpy())
    ref = fp32.logits(ids)[9:]
    got, want = np.stack(got), np.stack(want)
    to_quant = np.abs(got - want).max()
    to_fp32 = np.abs(got - ref).max()
    span = want.max() - want.min()
    assert to_quant < 0.05 * span, (to_quant, span)
    assert to_quant * 2 < np.abs(want - ref).max(), (to_quant, np.abs(want - ref).max())
    assert to_quant * 2 < to_fp32
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("quant,embedding_bits", [("8da4w", 4), pytest.param("8da8w", None, marks=pytest.mark.slow)])
def test_quantized_program_matches_quantized_reference(quant: str, embedding_bits: int | None, tmp_path: Path) -> None:
    out = tmp_path / quant
    art = run_export(
        cached_checkpoint(SPEC),
        "executorch",
        out,
        quant=quant,
        max_seq_len=16,
        max_context_len=CTX,
        group_size=32,
        embedding_bits=embedding_bits,
        progress=False,
    )
    q = art.manifest.extra["quantization"]
    assert q["quant"] == quant and q["embedding_bits"] == embedding_bits
    assert q["group_size"] == (32 if quant == "8da4w" else 0)  # XNNPACK: int8 weights per channel
    _compare(out, quant, embedding_bits)
