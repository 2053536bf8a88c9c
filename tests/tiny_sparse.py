"""The tests' small InfLLM v2 `sparse_config` (8-token blocks, kernel 8 / stride 4, top-2 + a 16-token window,
dense below 24 tokens, so a prompt of a few dozen tokens runs sparse with real block selection) and the small
MiniCPM-SALA checkpoints the format tests share."""

from edgecpm.synthetic import SyntheticSpec

SPARSE = {
    "kernel_size": 8,
    "kernel_stride": 4,
    "init_blocks": 1,
    "block_size": 8,
    "window_size": 16,
    "topk": 2,
    "use_nope": False,
    "dense_len": 24,
}

SALA = SyntheticSpec(sala_mixers=("minicpm4", "lightning-attn"), num_layers=4, seed=7)
# InfLLM v2 (sparse past dense_len 24) NoPE softmax layers and lightning layers with shared (GQA-style) kv heads
SALA_SPARSE = SyntheticSpec(
    sala_mixers=("minicpm4", "lightning-attn", "lightning-attn"),
    num_layers=3,
    sparse_config=SPARSE,
    init_std=0.5,
    seed=11,
    extra_config={"lightning_nkv": 2},
)
