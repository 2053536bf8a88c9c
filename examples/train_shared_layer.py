"""Train a small shared-layer MiniCPM-architecture model on CPU, then measure perplexity and speed vs ode_steps.

One decoder block is applied L times (fully shared, `shared_layers = {"num_unique_layers": 1}`), so the stack is
forward Euler for dx/dt = f(x) with step h = scale_depth / sqrt(L); `ode_steps=N` integrates the same interval
in N steps of h * L / N. Two runs with the same data, seed and time budget:

* `plain`: always L steps, as a normal (looped) transformer is trained;
* `random-steps`: every batch draws N from the valid step counts <= L (the step-size trick of parameter-shared
  neural-ODE pre-training), so the model learns a vector field that larger steps still integrate.

Each run writes a checkpoint in the published MiniCPM4 layout (loadable by `edgecpm.load(path, ode_steps=N)`
and exportable), and both are evaluated on held-out text at every step count. Usage:

    python examples/train_shared_layer.py --minutes 3 --out runs/shared-layer
    python examples/train_shared_layer.py --text my.txt --eval-text my_eval.txt --max-steps 200

Default text: the bundled WikiText-2 excerpt (both halves of it); pass the full WikiText-2 splits (Merity et al.,
2016) with --text / --eval-text. Threads default to 1 (small models do not scale).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgecpm
from edgecpm.config import load_hf_config
from edgecpm.model import Model
from edgecpm.synthetic import SyntheticSpec, write_random_checkpoint
from edgecpm.tokenizer import load_tokenizer_dir
from edgecpm.weights import open_checkpoint

EXCERPT = Path(edgecpm.__file__).parent / "data" / "wikitext2_excerpt.txt"


def default_texts() -> tuple[Path, Path | None]:
    """(train, eval) text: the bundled excerpt, split in two (eval None)."""
    return EXCERPT, None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    train, test = default_texts()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, default=train, help=f"training text (default {train})")
    p.add_argument(
        "--eval-text",
        type=lambda v: Path(v) if v else None,
        default=test,
        help="held-out text (default: the test split; '' = the last 10%% of --text)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/shared-layer"))
    p.add_argument("--layers", type=int, default=8, help="logical depth L (one shared block)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--pieces", type=int, default=600, help="SentencePiece vocabulary (before special tokens)")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--minutes", type=float, default=2.0, help="training time per run")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps per run (default: until --minutes)")
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument(
        "--eval-steps",
        type=str,
        default=None,
        help="comma list of ode_steps to evaluate (default: every valid count <= L)",
    )
    p.add_argument("--runs", type=str, default="plain,random-steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def tokenize(path: Path, tokenizer, limit_chars: int | None = None) -> torch.Tensor:
    text = path.read_text(encoding="utf-8")
    if limit_chars:
        text = text[:limit_chars]
    ids: list[int] = []
    for line in text.splitlines():
        if line.strip():
            ids += tokenizer.encode(line.strip() + "\n", add_bos=False)
    return torch.tensor(ids, dtype=torch.long)


def make_checkpoint(directory: Path, args: argparse.Namespace) -> Path:
    spec = SyntheticSpec(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        tokenizer_pieces=args.pieces,
        shared_unique_layers=1,
        dim_model_base=max(1, args.hidden // 4),
        longrope=False,
        init_std=0.02,
        embed_std=0.1,
        shards=1,
        dtype="float32",
        seed=args.seed,
        max_position_embeddings=4096,
    )
    return write_random_checkpoint(directory, spec)


def save_weights(model: Model, directory: Path) -> None:
    from safetensors.torch import save_file

    tensors = {Model.hf_name(n): p.detach().contiguous().clone() for n, p in model.named_parameters()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def batches(tokens: torch.Tensor, seq: int, batch: int, rng: np.random.Generator):
    while True:
        starts = rng.integers(0, len(tokens) - seq - 1, batch)
        x = torch.stack([tokens[s : s + seq + 1] for s in starts])
        yield x[:, :-1], x[:, 1:]


def train(run: str, args: argparse.Namespace, train_ids: torch.Tensor) -> dict:
    out = args.out / run
    out.mkdir(parents=True, exist_ok=True)
    make_checkpoint(out, args)
    base, source = open_checkpoint(out)
    model = Model.from_source(base, source, torch.float32)
    model.train()
    choices = base.valid_ode_steps(base.num_layers)
    configs = {n: base.with_ode_steps(n) for n in choices}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    rng = np.random.default_rng(args.seed)
    pick = random.Random(args.seed)
    data = batches(train_ids, args.seq, args.batch, rng)
    deadline = time.perf_counter() + args.minutes * 60
    losses, step, t0 = [], 0, time.perf_counter()
    while (args.max_steps is None and time.perf_counter() < deadline) or (args.max_steps and step < args.max_steps):
        n = pick.choice(choices) if run == "random-steps" else base.num_layers
        model.config = configs[n]
        x, y = next(data)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        step += 1
        if step % 50 == 0:
            print(
                f"[{run}] step {step}  loss {np.mean(losses[-50:]):.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True
            )
    model.config = base
    model.eval()
    save_weights(model, out)
    return {
        "run": run,
        "optimizer_steps": step,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_train_loss": round(float(np.mean(losses[-50:])), 4),
        "checkpoint": str(out),
    }


@torch.inference_mode()
def evaluate(checkpoint: Path, eval_ids: torch.Tensor, steps: list[int], seq: int) -> list[dict]:
    """Perplexity on non-overlapping windows and forward time per token, for each ode_steps value."""
    n_windows = max(1, (len(eval_ids) - 1) // seq)
    windows = torch.stack([eval_ids[i * seq : i * seq + seq + 1] for i in range(n_windows)])
    rows = []
    for n in steps:
        lm = edgecpm.load(checkpoint, ode_steps=n)
        model = lm.backend.model
        nll, count = 0.0, 0
        for chunk in windows.split(32):
            logits = model(chunk[:, :-1])
            nll += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
            )
            count += chunk[:, 1:].numel()
        # speed: one 64-token prefill and 32 decode steps, median of 5 repeats
        prompt = eval_ids[:seq].tolist()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            lm.backend.prefill(prompt)
            for tok in eval_ids[seq : seq + 32].tolist():
                lm.backend.decode([tok])
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "ode_steps": n,
                "perplexity": round(math.exp(nll / count), 3),
                "eval_tokens": count,
                "seconds_64_prefill_32_decode": round(float(np.median(times)), 4),
            }
        )
        print(
            f"  ode_steps={n:2d}  ppl {rows[-1]['perplexity']:8.2f}  "
            f"time {rows[-1]['seconds_64_prefill_32_decode'] * 1e3:.1f} ms",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = [r for r in args.runs.split(",") if r]
    first = args.out / runs[0]
    first.mkdir(parents=True, exist_ok=True)
    make_checkpoint(first, args)  # the tokenizer (trained on the bundled excerpt) is the same for every run
    tokenizer = load_tokenizer_dir(first)
    train_ids = tokenize(args.text, tokenizer)
    if args.eval_text is not None:
        eval_ids = tokenize(args.eval_text, tokenizer)[: args.eval_tokens + 1]
    else:
        split = int(len(train_ids) * 0.9)
        train_ids, eval_ids = train_ids[:split], train_ids[split:][: args.eval_tokens + 1]
    print(f"train tokens {len(train_ids)}, eval tokens {len(eval_ids) - 1}", flush=True)
    cfg = load_hf_config(first)
    steps = [int(s) for s in args.eval_steps.split(",")] if args.eval_steps else cfg.valid_ode_steps(cfg.num_layers)
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_text": str(args.text),
        "eval_text": str(args.eval_text),
        "runs": [],
    }
    for run in runs:
        result = train(run, args, train_ids)
        print(f"[{run}] evaluating", flush=True)
        result["eval"] = evaluate(Path(result["checkpoint"]), eval_ids, steps, args.seq)
        report["runs"].append(result)
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    runs = report["runs"]
    head = "| ode_steps | " + " | ".join(f"{r['run']} ppl" for r in runs) + " | time (64 prefill + 32 decode) |"
    lines = [head, "|" + "---|" * (len(runs) + 2)]
    for i, row in enumerate(runs[0]["eval"]):
        ms = np.median([r["eval"][i]["seconds_64_prefill_32_decode"] for r in runs]) * 1e3
        lines.append(
            f"| {row['ode_steps']} | "
            + " | ".join(f"{r['eval'][i]['perplexity']:.2f}" for r in runs)
            + f" | {ms:.1f} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
