"""MiniCPM-SALA decoding state at 64K tokens on the torch backend: measured tensor bytes vs the cost model.

A small model with the published SALA layer mix (32 layers: softmax/InfLLM v2 at 0, 9, 16, 17, 22, 29, 30, 31,
lightning elsewhere; published sparse_config) is prefilled to `--tokens` in chunks, then decodes one token.
The script then adds up every tensor the backend's cache holds: each softmax layer's K/V, its InfLLM v2
compressed keys, and each lightning layer's recurrent state (plus what it keeps for rollback), and compares
with `planning.cost_model.kv_cache_bytes` for the same config, which is the per-token cost of the layer mix
(K/V + compressed keys for softmax layers only) plus a fixed state per lightning layer.

    python benchmarks/sala_memory_64k.py [--tokens 65536] [--chunk 2048] [--threads 2]
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import asdict

import numpy as np
import torch

import edgecpm
from edgecpm.config import SparseConfig
from edgecpm.planning.cost_model import kv_cache_bytes
from edgecpm.synthetic import SyntheticSpec, cached_checkpoint

SOFTMAX = (0, 9, 16, 17, 22, 29, 30, 31)


def held_bytes(cache) -> dict[str, int]:
    """Bytes of the distinct tensors the cache references, by kind."""
    seen: set[int] = set()
    out = {"kv": 0, "compressed_keys": 0, "lightning_state": 0, "lightning_rollback": 0}

    def add(kind: str, t) -> None:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            out[kind] += t.untyped_storage().nbytes()

    for state in cache.layers:
        add("kv", state.k)
        add("kv", state.v)
        for name, extra in state.extras.items():
            if name == "infllmv2":
                add("compressed_keys", extra.ck)
            elif name == "lightning":
                add("lightning_state", extra.state)
                add("lightning_rollback", extra._base[0])  # the state before the latest call
                for t in extra._last or ():  # that call's keys / values
                    add("lightning_rollback", t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--chunk", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    mixers = tuple("minicpm4" if i in SOFTMAX else "lightning-attn" for i in range(32))
    sparse = asdict(SparseConfig())
    spec = SyntheticSpec(
        num_layers=32,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        num_kv_heads=2,
        sala_mixers=mixers,
        sparse_config=sparse,
        max_position_embeddings=args.tokens + 16,
        longrope=False,
        seed=9,
    )
    lm = edgecpm.load(cached_checkpoint(spec), backend="torch")
    cfg = lm.config
    be = lm.backend
    ids = np.random.default_rng(0).integers(3, 600, args.tokens + 1).tolist()
    print(f"per-token cost of the layer mix: {per_token_bytes(cfg):.0f} B (8 softmax layers: K/V + compressed keys)")
    print(f"lightning state, formula: {cfg.recurrent_state_bytes()} B (24 layers x H x Dk x Dv x 4 B)", flush=True)
    t0 = time.perf_counter()
    be.prefill(ids[: args.chunk])
    s = args.chunk
    while s < args.tokens:
        be.decode(ids[s : s + args.chunk])
        s += args.chunk
        if s & (s - 1) == 0 and s >= 8192:  # a report at every power of two from 8K
            report(be.cache, cfg, time.perf_counter() - t0)
    be.decode(ids[args.tokens : args.tokens + 1])
    report(be.cache, cfg, time.perf_counter() - t0)


def per_token_bytes(cfg) -> float:
    softmax = sum(1 for spec in cfg.layers if spec.attention != "lightning")
    return cfg.kv_bytes_per_token(4.0) + softmax * cfg.num_kv_heads * cfg.head_dim * 4 / cfg.sparse.kernel_stride


def report(cache, cfg, elapsed: float) -> None:
    held = held_bytes(cache)
    n = cache.length
    planned = kv_cache_bytes(cfg, n, 4.0, True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"tokens {n}: {elapsed:.0f} s so far, peak RSS {rss:.0f} MiB")
    for k, v in held.items():
        print(f"  held {k}: {v} B ({v / 2**20:.2f} MiB)")
    total = held["kv"] + held["compressed_keys"] + held["lightning_state"]
    print(f"  held K/V + compressed keys + state: {total} B; cost model kv_cache_bytes: {planned:.0f} B")
    print(f"  ratio held / planned: {total / planned:.5f}", flush=True)


if __name__ == "__main__":
    main()
