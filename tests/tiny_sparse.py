"""The tests' small InfLLM v2 `sparse_config`: 8-token blocks, kernel 8 / stride 4, top-2 + a 16-token window,
dense below 24 tokens, so a prompt of a few dozen tokens runs sparse with real block selection."""

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
