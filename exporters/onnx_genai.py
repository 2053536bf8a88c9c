"""`genai_config.json` for ONNX Runtime GenAI.

`model.type` must be one GenAI knows (it has no "minicpm"); "decoder" is the generic decoder-only type and
runs
this graph unchanged. KV buffers are shared between past and present (GQA writes in place) only when every
layer is a GroupQueryAttention layer; the InfLLM v2 layers grow their cache by Concat, which needs
`past_present_share_buffer=false`.

MiniCPM-SALA: the lightning layers' recurrent states are named with GenAI's `past_recurrent_names` /
`present_recurrent_names` (GenAI finds which layers have them from the graph's inputs, as it does for the K/V
of the softmax layers), with the placeholder conv states GenAI pairs them with (`onnx_lightning.py`).
"""

from __future__ import annotations

from typing import Any

from edgecpm.config import ModelConfig

MODEL_TYPE = "decoder"


def genai_config(
    config: ModelConfig,
    context_length: int,
    share_buffer: bool,
    max_length: int | None = None,
    threads: int | None = None,
    model_file: str = "model.onnx",
) -> dict[str, Any]:
    session: dict[str, Any] = {"log_id": "edgecpm", "provider_options": []}
    if threads:
        session["intra_op_num_threads"] = int(threads)
    eos = list(config.eos_token_ids)
    inputs = {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    outputs = {
        "logits": "logits",
        "present_key_names": "present.%d.key",
        "present_value_names": "present.%d.value",
    }
    if config.has_lightning_layers:
        from edgecpm.exporters.onnx_lightning import CONV_IN, CONV_OUT, STATE_IN, STATE_OUT

        inputs["past_recurrent_names"] = STATE_IN.format("%d")
        inputs["past_conv_names"] = CONV_IN.format("%d")
        outputs["present_recurrent_names"] = STATE_OUT.format("%d")
        outputs["present_conv_names"] = CONV_OUT.format("%d")
    return {
        "model": {
            "bos_token_id": config.bos_token_id if config.bos_token_id is not None else eos[0],
            "context_length": context_length,
            "decoder": {
                "session_options": session,
                "filename": model_file,
                "head_size": config.head_dim,
                "hidden_size": config.hidden_size,
                "inputs": inputs,
                "outputs": outputs,
                "num_attention_heads": config.num_heads,
                "num_hidden_layers": config.num_layers,
                "num_key_value_heads": config.num_kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else eos[0],
            "pad_token_id": eos[0],
            "type": MODEL_TYPE,
            "vocab_size": config.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": int(max_length or min(context_length, 4096)),
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": share_buffer,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
