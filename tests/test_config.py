"""ModelConfig parsing of the published config.json format and its error messages."""

from __future__ import annotations

import json
import math

import pytest

from edgecpm.config import config_from_hf_dict, load_hf_config, preset_config
from edgecpm.errors import ConfigError
from edgecpm.synthetic import SyntheticSpec, config_dict

# the published MiniCPM4-0.5B config.json fields (the openbmb/MiniCPM4-0.5B Hub repository's config.json)
PUBLISHED_05B = {
    "architectures": ["MiniCPMForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": [2, 73440],
    "hidden_act": "silu",
    "hidden_size": 1024,
    "initializer_range": 0.1,
    "intermediate_size": 4096,
    "max_position_embeddings": 32768,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "rope_type": "longrope",
        "long_factor": [1.0 + i for i in range(32)],
        "short_factor": [1.0 + i for i in range(32)],
        "original_max_position_embeddings": 32768,
    },
    "scale_emb": 12,
    "scale_depth": 1.4,
    "dim_model_base": 256,
    "torch_dtype": "bfloat16",
    "vocab_size": 73448,
}


def test_published_05b_fields() -> None:
    c = config_from_hf_dict(PUBLISHED_05B)
    assert c.architecture == "minicpm" and c.head_dim == 64 and c.num_kv_heads == 2
    assert c.tie_word_embeddings is True  # class default when the key is absent
    assert c.eos_token_ids == (2, 73440)
    assert c.rope_scaling is not None and len(c.rope_scaling.short_factor) == 32
    assert math.isclose(c.residual_scale, 1.4 / math.sqrt(24))
    assert c.logit_scale == 4.0 and c.rope_mscale == 1.0
    assert c.sparse is None and all(s.attention == "dense" for s in c.layers)
    assert c.kv_bytes_per_token(2) == 12 * 1024  # 12 KiB/token in bf16 (derived in the reference)


def test_presets_match_published_parameter_counts() -> None:
    assert preset_config("minicpm4-0.5b").parameter_count() == 433_873_920
    p8 = preset_config("minicpm4-8b")
    assert p8.parameter_count() == 8_185_253_888
    assert p8.sparse is not None and p8.sparse.topk == 64 and p8.kv_bytes_per_token(2) == 32 * 1024


def test_lm_head_presence_decides_tying() -> None:
    assert config_from_hf_dict(PUBLISHED_05B, has_lm_head=True).tie_word_embeddings is False
    assert config_from_hf_dict({**PUBLISHED_05B, "tie_word_embeddings": False}).tie_word_embeddings is False


def test_sparse_config_enables_infllmv2_layers() -> None:
    d = {
        **PUBLISHED_05B,
        "sparse_config": {
            "kernel_size": 32,
            "kernel_stride": 16,
            "init_blocks": 1,
            "block_size": 64,
            "window_size": 2048,
            "topk": 64,
            "use_nope": False,
            "dense_len": 8192,
        },
    }
    c = config_from_hf_dict(d)
    assert c.sparse is not None and c.sparse.dense_len == 8192
    assert all(s.attention == "infllmv2" for s in c.layers)


def test_sala_and_shared_layers_are_data() -> None:
    sala = config_from_hf_dict(
        config_dict(SyntheticSpec(num_layers=4, sala_mixers=("minicpm4", "lightning-attn")), 608)
    )
    assert [s.attention for s in sala.layers] == ["dense", "lightning", "dense", "lightning"]
    assert sala.layers[0].use_rope is False and sala.layers[0].output_gate is True
    shared = config_from_hf_dict(config_dict(SyntheticSpec(num_layers=4, shared_unique_layers=2, ode_step=2.0), 608))
    assert [s.weight_layer for s in shared.layers] == [0, 1, 0, 1]
    assert shared.num_weight_layers == 2 and math.isclose(shared.residual_scale, 1.4 / 2 * 2.0)


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"hidden_size": None}, "hidden_size"),
        ({"hidden_size": "1024"}, "hidden_size"),
        ({"scale_emb": None}, "scale_emb"),
        ({"dim_model_base": -1}, "dim_model_base"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"eos_token_id": "x"}, "eos_token_id"),
        ({"architectures": ["GPT2LMHeadModel"]}, "architectures"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {**PUBLISHED_05B["rope_scaling"], "long_factor": [1.0] * 31}}, "rope_scaling.long_factor"),
        ({"sparse_config": {"block_size": 60}}, "sparse_config.block_size"),
        ({"sparse_config": {"topk": 0}}, "sparse_config.topk"),
    ],
)
def test_bad_fields_are_named(patch: dict, field: str) -> None:
    d = dict(PUBLISHED_05B)
    for k, v in patch.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    with pytest.raises(ConfigError) as err:
        config_from_hf_dict(d)
    assert f"'{field}'" in str(err.value)
    assert "\n" not in str(err.value)


def test_config_round_trips_through_dict() -> None:
    c = config_from_hf_dict({**PUBLISHED_05B, "sparse_config": {}})
    from edgecpm.config import ModelConfig

    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_malformed_json(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_hf_config(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        load_hf_config(tmp_path / "missing")
