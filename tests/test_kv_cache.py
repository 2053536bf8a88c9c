"""KV cache modes and speculative rollback, checked against full recomputation by the same reference model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecpm.model import Model
from edgecpm.weights import open_checkpoint


@pytest.fixture(scope="module")
def model(tiny_untied) -> Model:
    config, source = open_checkpoint(tiny_untied)
    return Model.from_source(config, source)


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_incremental_decode_equals_full_forward(model: Model, mode: str) -> None:
    ids = torch.tensor([[1, 17, 99, 250, 3, 8, 44, 501, 12, 7]])
    full = model(ids)
    cache = model.new_cache(mode, max_len=32)
    pieces = [model(ids[:, :4], cache)] + [model(ids[:, i : i + 1], cache) for i in range(4, 10)]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-4)
    assert cache.length == 10


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_truncate_rolls_back(model: Model, mode: str) -> None:
    cache = model.new_cache(mode, max_len=32)
    model(torch.tensor([[1, 5, 6, 7]]), cache)
    model(torch.tensor([[300, 301, 302]]), cache)  # a rejected draft
    cache.truncate(4)
    after = model(torch.tensor([[9]]), cache)
    fresh = model(torch.tensor([[1, 5, 6, 7, 9]]))[:, -1:]
    assert torch.allclose(after, fresh, atol=1e-4)
    with pytest.raises(Exception, match="truncate"):
        cache.truncate(99)


def test_static_cache_overflow_is_an_error(model: Model) -> None:
    cache = model.new_cache("static", max_len=4)
    with pytest.raises(Exception, match="exceeds the static cache"):
        model(torch.tensor([[1, 2, 3, 4, 5]]), cache)


def test_backend_protocol(tiny_untied) -> None:
    import edgecpm
    from edgecpm.backends import Backend

    b = edgecpm.load(tiny_untied).backend
    assert isinstance(b, Backend)
    ids = [1, 40, 50, 60, 70]
    full = b.prefill(ids, all_logits=True)
    last = b.prefill(ids[:3])
    assert np.allclose(last, full[2], atol=1e-4) and b.n_past == 3
    step = b.decode(ids[3:])
    assert step.shape == (2, b.vocab_size) and np.allclose(step, full[3:], atol=1e-4)
    b.truncate(3)
    assert np.allclose(b.decode([ids[3]])[0], full[3], atol=1e-4)
