"""Which speculative draft a plan should use on a device: source, k, and the speed-up the cost model expects.

A chain of k drafted tokens with per-token acceptance rate a yields (1 - a^(k+1)) / (1 - a) tokens per target
forward (Leviathan et al. 2023). One round costs k draft steps plus one verify of k+1 tokens; the verify costs
one decode step (a pass over the weights) plus the compute of k more tokens at the predicted prefill rate:

    speed-up(k) = tokens_per_round / (k * t_draft / t_decode + 1 + k * t_prefill_token / t_decode)

Draft costs: prompt lookup is free (a search in the context); a lower-precision self-draft costs the predicted
decode step of the same model at q4_0 on llama.cpp; an EAGLE head beside a torch target costs the weights it
reads per drafted token over the target's (one decoder layer, its input projection and the output head, or
only N rows of it with FR-Spec), with the held-out agreement its training measured (per FR-Spec size) as the
acceptance rate. Acceptance rates are measured on SmolLM2-135M over
WikiText-2 (docs/benchmarks.md, "Speculative decoding"); they are properties of the draft/target pair and the
text, so other models are planned with them as estimates and the plan says so. The planner takes no draft when
the best predicted speed-up is under 1.05 (not worth a second model's memory and the variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MIN_GAIN = 1.05
MAX_K = 8


@dataclass(frozen=True)
class Acceptance:
    rate: float
    basis: str


# per-token acceptance rates (accepted / drafted, median over runs) measured by benchmarks/speculative.py,
# SmolLM2-135M greedy, 48 new tokens per run (docs/benchmarks.md, "Speculative decoding")
ACCEPTANCE = {
    ("prompt-lookup", "repeat"): Acceptance(0.57, "SmolLM2-135M, repeat-a-WikiText-2-passage task, k=4"),
    ("q4_0 self-draft", "continue"): Acceptance(0.69, "SmolLM2-135M q4_0 drafting for q8_0 on WikiText-2, k=2"),
}


def expected_tokens_per_round(rate: float, k: int) -> float:
    if rate >= 1.0:
        return float(k + 1)
    return (1 - rate ** (k + 1)) / (1 - rate)


def predicted_speedup(rate: float, k: int, draft_over_decode: float, prefill_token_over_decode: float) -> float:
    verify = 1.0 + k * prefill_token_over_decode
    return expected_tokens_per_round(rate, k) / (k * draft_over_decode + verify)


def eagle_step_ratio(config: Any, rows: int | None = None) -> float:
    """Weights an EAGLE head reads per drafted token over those of one target decode step (both at the
    target's precision): a decoder layer, the 2H x H input projection and the output head (`rows` of it with
    FR-Spec) against every layer plus the full head. Measured on SmolLM2-135M (torch, fp32): 0.17 with the
    full head, 0.05 with 4096 rows; this gives 0.24 and 0.049 (docs/speculative.md)."""
    h, hd = config.hidden_size, config.head_dim
    layer = h * hd * (2 * config.num_heads + 2 * config.num_kv_heads) + 3 * h * config.intermediate_size
    head = config.vocab_size * h
    draft = layer + 2 * h * h + (head if rows is None else min(rows, config.vocab_size) * h)
    return draft / (config.num_layers * layer + head)


def eagle_options(config: Any, meta: dict[str, Any] | None) -> list[tuple[str, float, Acceptance, str]]:
    """(source, draft cost in target steps, acceptance, why) per FR-Spec size the head's training measured."""
    if not meta:
        return []
    measured: list[tuple[int | None, Any]] = [(None, meta.get("held_out_top1"))]
    by_rows = meta.get("held_out_top1_fr")
    if isinstance(by_rows, dict):
        measured += [(int(n), a) for n, a in by_rows.items() if str(n).isdigit()]
    out = []
    for rows, rate in measured:
        if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            continue
        cost = eagle_step_ratio(config, rows)
        source = "eagle" if rows is None else f"eagle+fr:{rows}"
        where = "the full output head" if rows is None else f"the {rows} most frequent tokens' rows (FR-Spec)"
        basis = f"the head's held-out first-step agreement over {where}"
        out.append((source, cost, Acceptance(float(rate), basis), f"a head step costs {cost:.3f} target steps"))
    return out


def choose_draft(
    choice: Any,
    candidates: list[Any],
    task: str | None = None,
    eagle: dict[str, Any] | None = None,
    config: Any = None,
) -> tuple[dict[str, Any] | None, str]:
    """(the plan's `draft` object or None, the reason) for the chosen candidate among all candidates.

    Prompt lookup is weighed only for `task="repeat"` (input-grounded output): its gain is the output copying
    the input, which a plan for a model and a device does not know. `eagle`: the EAGLE head description found
    beside the model (its `.eagle.json`), weighed for torch targets, the backend that hands it hidden states.
    """
    if choice is None:
        return None, "no plan fits this device, so there is nothing to draft for"
    p = choice.prediction
    if not p.decode_tokens_per_s or not p.prefill_tokens_per_s:
        return None, "the device's speed is unknown (no bandwidth or compute figure), so no gain can be predicted"
    t_dec = 1.0 / p.decode_tokens_per_s
    t_tok = 1.0 / p.prefill_tokens_per_s
    options = []
    if task == "repeat":
        options.append(
            (
                "prompt-lookup",
                0.0,
                ACCEPTANCE[("prompt-lookup", "repeat")],
                "copies from the context; costs nothing to draft",
            )
        )
    q4 = next((c for c in candidates if c.backend == "llama.cpp" and c.quant.name == "q4_0" and c.fits), None)
    if q4 is not None and q4.prediction.decode_tokens_per_s and choice.quant.linear_bits > q4.quant.linear_bits + 1:
        ratio = p.decode_tokens_per_s / q4.prediction.decode_tokens_per_s
        options.append(
            (
                "q4_0 self-draft",
                ratio,
                ACCEPTANCE[("q4_0 self-draft", "continue")],
                f"the same model as q4_0 on llama.cpp, a draft step costs {ratio:.2f} target steps",
            )
        )
    if eagle and config is not None and choice.backend == "torch":
        options += eagle_options(config, eagle)
    if not options:
        if q4 is None:
            why = "the plan has no q4_0 llama.cpp candidate to self-draft with (the file fixes its quant, or none fits)"
        else:
            why = f"the target is already {choice.quant.name}, so a q4_0 self-draft would cost as much as it"
        return None, (
            f"{why}; prompt lookup pays off only when the output copies the input, which a plan does not "
            "know: pass `--draft prompt-lookup` to generate for such tasks"
        )
    best = None
    for source, cost, acc, why in options:
        for k in range(1, MAX_K + 1):
            s = predicted_speedup(acc.rate, k, cost, t_tok / t_dec)
            if best is None or s > best[0]:
                best = (s, source, k, cost, acc, why)
    s, source, k, cost, acc, why = best
    verify_cost = 1.0 + k * t_tok / t_dec
    summary = (
        f"acceptance {acc.rate:.2f} per token ({acc.basis}) gives "
        f"{expected_tokens_per_round(acc.rate, k):.2f} tokens per target forward; a {k + 1}-token verify "
        f"costs {verify_cost:.2f} decode steps; {why}"
    )
    if s < MIN_GAIN:
        return None, f"no draft gains {MIN_GAIN:.2f}x here: the best, {source} k={k}: {summary}, predicts {s:.2f}x"
    draft = {
        "source": source,
        "draft_tokens": k,
        "draft_cost": round(cost, 4),
        "acceptance_rate": acc.rate,
        "acceptance_basis": acc.basis,
        "expected_tokens_per_forward": round(expected_tokens_per_round(acc.rate, k), 3),
        "predicted_speedup": round(s, 3),
        "predicted_decode_tokens_per_s": round(p.decode_tokens_per_s * s, 2),
    }
    return draft, f"{summary}; predicted {s:.2f}x"
