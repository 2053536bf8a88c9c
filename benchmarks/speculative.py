"""Speculative decoding on SmolLM2-135M over WikiText-2 test text: acceptance and end-to-end speed-up for each
draft source and k, against plain greedy decoding on the same target backend, in one run.

Usage: python benchmarks/speculative.py [--text PATH] [--threads 1] [--tokens 48] [--runs 3] [--out FILE.json]
       [--eagle HEAD.json] [--freq TABLE.json] [--fr-sizes 4096,16384] [--eagle-k 2,3,4] [--tasks continue]
       [--drafts plain,q4_0,eagle] [--trees 2,3]

Targets: llama.cpp q8_0 (the default Q4_1 model re-exported, opened with flash attention, with which llama.cpp
gives a batch the same logits as one token at a time) and the torch reference (the Q4_1 weights in fp32).
Drafts: prompt lookup (k = 2, 4, 8) and the same model at lower precision (q4_0 GGUF on llama.cpp, k = 1..4);
on the torch target also an EAGLE head (examples/train_eagle_head.py; --eagle, default: beside the model) with
its full output head and with FR-Spec (--freq, the `edgecpm freq-table` output; each of --fr-sizes rows).
Tasks: "continue" (a WikiText-2 passage, continue it) and "repeat" (an input-grounded task: the chat model is
asked to repeat the passage). Runs are interleaved (plain, then each draft, repeated) and medians reported;
every speculative run is checked token for token against the plain run on the same target. "decode speed-up"
is plain decode time over speculative decode time (after the prefill); "end-to-end" includes the prefills (a
model draft prefills the prompt too).
Tree drafts (--trees W,...; torch target only, the one backend that verifies a token tree in one forward):
prompt lookup with up to W continuations (k = 8) and the q4_0 self-draft with W candidates per depth (k = 3),
each against its chain (W = 1) in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import edgecpm
from edgecpm.default_model import default_model_path
from edgecpm.generation import Generator, SamplingParams
from edgecpm.speculative import ModelDraft, PromptLookupDraft, Speculator

med = statistics.median
CACHE = Path.home() / ".cache" / "edgecpm" / "bench-speculative"
DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "wikitext2_test_excerpt.txt"


def exported(quant: str) -> Path:
    out = CACHE / f"smollm2-{quant}"
    if not (out / "edgecpm.json").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        edgecpm.export(default_model_path(), format="gguf", quant=quant, out=out, progress=False)
    return out


def passages(text: str, n: int, chars: int = 900) -> list[str]:
    paras = [p.strip() for p in text.split("\n") if len(p.strip()) > chars]
    return [p[:chars].rsplit(" ", 1)[0] for p in paras[:n]]


def run_once(model, backend, ids, tokens, draft, k, tree=1):
    spec = None if draft is None else Speculator(draft, k, tree)
    gen = Generator(backend, model.tokenizer, model.config.eos_token_ids, speculator=spec)
    t = time.perf_counter()
    r = gen.run(ids, tokens, SamplingParams())
    r.extra["wall"] = time.perf_counter() - t
    return r


def eagle_configs(a, target) -> list:
    """(name, EagleDraft, k) for the torch target: the head with its full output head, and with FR-Spec."""
    from edgecpm.speculative import EagleDraft
    from edgecpm.speculative.eagle import EagleHead, head_path
    from edgecpm.speculative.frspec import read_ids, table_path

    if target is None:
        return []
    head_json = Path(a.eagle) if a.eagle else head_path(default_model_path())
    if not head_json.is_file():
        print(f"no EAGLE head at {head_json}: skipping the EAGLE rows (examples/train_eagle_head.py)")
        return []
    model = target.backend.model
    head, meta = EagleHead.load(head_json, target.config)
    out_head = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
    head.attach(model.embed_tokens.weight, model.norm.weight, out_head)
    ks = [int(k) for k in a.eagle_k.split(",")]
    out = [("eagle", EagleDraft(head, None, "eagle"), k, 1) for k in ks]
    table = Path(a.freq) if a.freq else table_path(default_model_path())
    if table.is_file():
        for n in (int(x) for x in a.fr_sizes.split(",") if x):
            rows = read_ids(table, int(target.config.vocab_size), n)
            out += [(f"eagle + FR-Spec {n}", EagleDraft(head, rows, f"eagle+fr{n}"), k, 1) for k in ks]
    else:
        print(f"no frequency table at {table}: skipping the FR-Spec rows (edgecpm freq-table)")
    print(f"EAGLE head {head_json.name}: {meta.get('train_tokens')} training tokens of {meta.get('trained_on')}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default=str(DEFAULT_TEXT))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--passages", type=int, default=2)
    ap.add_argument("--targets", default="llama.cpp,torch")
    ap.add_argument("--out", default=None)
    ap.add_argument("--eagle", default=None, help="EAGLE head .json (default: beside the model, if there)")
    ap.add_argument("--freq", default=None, help="FR-Spec frequency table (default: beside the model, if there)")
    ap.add_argument("--fr-sizes", default="8192", help="FR-Spec sizes (rows of the table) to measure")
    ap.add_argument("--eagle-k", default="2,3,4")
    ap.add_argument("--tasks", default="continue,repeat")
    ap.add_argument("--drafts", default=None, help="only drafts whose name starts with one of these (and plain)")
    ap.add_argument("--trees", default="", help="tree widths to measure on the torch target, e.g. 2,3")
    a = ap.parse_args()
    text = Path(a.text).read_text(encoding="utf-8")
    q4 = exported("q4_0")
    # flash attention: llama.cpp's batch logits then equal its one-token logits (docs/speculative.md)
    draft_q4 = edgecpm.load(q4, threads=a.threads, flash_attn=True)
    targets = {}
    if "llama.cpp" in a.targets:
        targets["llama.cpp q8_0"] = edgecpm.load(exported("q8_0"), threads=a.threads, flash_attn=True)
    if "torch" in a.targets:
        targets["torch fp32"] = edgecpm.load(default_model_path(), backend="torch", threads=a.threads)
    configs = [("plain", None, 0, 1)]
    configs += [("prompt-lookup", PromptLookupDraft(), k, 1) for k in (2, 4, 8)]
    configs += [("q4_0 self-draft (llama.cpp)", ModelDraft(draft_q4.backend, "q4_0"), k, 1) for k in (1, 2, 3, 4)]
    torch_only = eagle_configs(a, targets.get("torch fp32"))
    for w in (int(x) for x in a.trees.split(",") if x):
        torch_only += [("prompt-lookup", configs[3][1], 8, w), ("q4_0 self-draft (llama.cpp)", configs[6][1], 3, w)]
    rows = []
    for tname, model in targets.items():
        cfgs = configs if tname.startswith("llama") else [c for c in configs if c[2] in (0, 3, 8)] + torch_only
        if a.drafts:
            keep = tuple(a.drafts.split(","))
            cfgs = [c for c in cfgs if c[1] is None or c[0].startswith(keep)]
        for task in a.tasks.split(","):
            prompts = []
            for p in passages(text, a.passages):
                if task == "continue":
                    prompts.append(model.tokenizer.encode(p))
                else:
                    msgs = [{"role": "user", "content": "Repeat the following text exactly:\n\n" + p}]
                    prompts.append(model.encode_prompt(msgs))
            results: dict[tuple[str, int, int], list] = {(c[0], c[2], c[3]): [] for c in cfgs}
            for _ in range(a.runs):
                for pi, ids in enumerate(prompts):
                    plain = None
                    for name, draft, k, tree in cfgs:
                        r = run_once(model, model.backend, ids, a.tokens, draft, k, tree)
                        if draft is None:
                            plain = r
                        results[(name, k, tree)].append((pi, r, r.token_ids == plain.token_ids))
            base = med(r.extra["wall"] for _, r, _ in results[("plain", 0, 1)])
            base_dec = med(r.decode_seconds for _, r, _ in results[("plain", 0, 1)])
            base_tps = med(r.decode_tokens_per_s for _, r, _ in results[("plain", 0, 1)])
            for (name, k, tree), rs in results.items():
                wall = med(r.extra["wall"] for _, r, _ in rs)
                row = {
                    "target": tname,
                    "task": task,
                    "draft": name,
                    "k": k,
                    "tree": tree,
                    "runs": len(rs),
                    "decode_tokens_per_s": round(med(r.decode_tokens_per_s for _, r, _ in rs), 2),
                    "decode_speedup": round(base_dec / med(r.decode_seconds for _, r, _ in rs), 3),
                    "end_to_end_speedup": round(base / wall, 3),
                    "plain_decode_tokens_per_s": round(base_tps, 2),
                    "prefill_share": round(med(r.prefill_seconds / r.extra["wall"] for _, r, _ in rs), 3),
                    "lossless": all(ok for _, _, ok in rs),
                }
                if k:
                    st = [r.extra["speculative"] for _, r, _ in rs]
                    row.update(
                        draft_ms_per_token=round(1e3 * med(s.draft_seconds / max(s.drafted, 1) for s in st), 2),
                        draft_ms_per_round=round(1e3 * med(s.draft_seconds / max(s.rounds, 1) for s in st), 2),
                        verify_ms_per_round=round(1e3 * med(s.verify_seconds / max(s.rounds, 1) for s in st), 2),
                        plain_ms_per_token=round(1e3 / base_tps, 2),
                        acceptance_length=round(statistics.median(s.acceptance_length for s in st), 3),
                        acceptance_rate=round(statistics.median(s.accepted / max(s.drafted, 1) for s in st), 3),
                        tokens_per_target_forward=round(statistics.median(s.tokens_per_target_forward for s in st), 3),
                        draft_share=round(med(s.draft_seconds / r.extra["wall"] for (_, r, _), s in zip(rs, st)), 3),
                        verify_share=round(med(s.verify_seconds / r.extra["wall"] for (_, r, _), s in zip(rs, st)), 3),
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print(
        "| target | task | draft | k | tree | decode tok/s | decode speed-up | end-to-end | accept len | accept rate "
        "| tok/fwd | draft / verify / prefill time | lossless |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tree = r["tree"] if r["k"] else "–"
        head = (
            f"| {r['target']} | {r['task']} | {r['draft']} | {r['k'] or '–'} | {tree} | {r['decode_tokens_per_s']} | "
        )
        if r["k"] == 0:
            print(head + f"1.00× | 1.00× | – | – | 1.00 | – / – / {r['prefill_share']:.0%} | – |")
            continue
        print(
            head + f"{r['decode_speedup']:.2f}× | {r['end_to_end_speedup']:.2f}× | {r['acceptance_length']:.2f} | "
            f"{r['acceptance_rate']:.2f} | {r['tokens_per_target_forward']:.2f} | {r['draft_share']:.0%} / "
            f"{r['verify_share']:.0%} / {r['prefill_share']:.0%} | {'yes' if r['lossless'] else 'NO'} |"
        )
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
