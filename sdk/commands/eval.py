"""`edgecpm eval niah | task-haystack | compare | convert-tasks`: long-context fidelity evals (docs/evals.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _list(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="HF checkpoint dir, .gguf file or artifact dir (default: bundled SmolLM2-135M)",
    )
    p.add_argument("--backend", default=None, help="torch, llama.cpp, onnxruntime, executorch (default: auto)")
    p.add_argument(
        "--variant",
        default=None,
        help="instead of --backend: a variant spec, e.g. sparse:topk=4,window=128 or gguf:q4_0",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result JSON (no progress bar)")


def _niah_options(p: argparse.ArgumentParser) -> None:
    from edgecpm.evals.niah import DEFAULT_DEPTHS, DEFAULT_LENGTHS

    p.add_argument(
        "--lengths",
        type=_list(int),
        default=list(DEFAULT_LENGTHS),
        help="comma-separated context lengths in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--depths",
        type=_list(float),
        default=list(DEFAULT_DEPTHS),
        help="comma-separated needle depths in [0, 1] (default: %(default)s)",
    )
    p.add_argument("--trials", type=int, default=2, help="passkeys per cell (default: %(default)s)")


def _haystack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="folder of task JSONL files (default: the bundled local tasks)")
    p.add_argument("--n-shot", type=int, default=2, help="demonstrations per class (default: %(default)s)")
    p.add_argument("--permutations", type=int, default=3, help="task orderings (paper: 5; default: %(default)s)")
    p.add_argument("--samples", type=int, default=5, help="demonstration samples (paper: 5; default: %(default)s)")
    p.add_argument("--n-test", type=int, default=None, help="test examples per task (paper: <= 100; default: all)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="long-context fidelity evals: niah, task-haystack, compare, convert-tasks")
    s = p.add_subparsers(dest="eval_command", required=True)
    n = s.add_parser("niah", help="passkey retrieval over WikiText-2 filler at several lengths and depths")
    _common(n, "eval-niah")
    _niah_options(n)
    n.set_defaults(func=run_niah)
    h = s.add_parser("task-haystack", help="Lifelong ICL vs Single-task ICL, paired t-test pass rate")
    _common(h, "eval-task-haystack")
    _haystack_options(h)
    h.set_defaults(func=run_haystack)
    c = s.add_parser("compare", help="one suite on several variants; retention vs the first")
    c.add_argument("model", nargs="?", default=None)
    c.add_argument("--suite", choices=("niah", "task-haystack"), default="niah")
    c.add_argument(
        "--variant",
        action="append",
        default=None,
        dest="variants",
        help="LABEL=SPEC (repeatable; first = reference), e.g. dense=llama.cpp, "
        "k4=sparse:topk=4,window=128, q4=gguf:q4_0 (default: dense, sparse-k4, q4_0)",
    )
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default="eval-compare")
    c.add_argument("--json", action="store_true")
    _niah_options(c)
    _haystack_options(c)
    c.set_defaults(func=run_compare)
    v = s.add_parser("convert-tasks", help="published Lifelong-ICL task folders -> edgecpm task JSONL files")
    v.add_argument("source", help="a Lifelong-ICL data folder (one sub-folder per task) or one task folder")
    v.add_argument("--out", required=True, help="folder for the NAME.jsonl files")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=run_convert)


def _variant(args: argparse.Namespace) -> Any:
    from edgecpm.default_model import resolve_model_path
    from edgecpm.errors import EdgecpmError
    from edgecpm.evals.variants import parse_variant

    if args.variant and args.backend:
        raise EdgecpmError("give --backend or --variant, not both")
    if args.variant:
        return parse_variant(args.variant)
    backend = args.backend or ("llama.cpp" if resolve_model_path(args.model).suffix == ".gguf" else "torch")
    return parse_variant(backend)


def _open(args: argparse.Namespace, n_ctx: int) -> Any:
    from edgecpm.evals.variants import open_variant

    v = _variant(args)
    return v, open_variant(args.model, v, Path(args.out), n_ctx, args.threads, progress=not args.json)


def _emit(args: argparse.Namespace, result: dict[str, Any], summary: str) -> int:
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(summary)
    return 0


def run_niah(args: argparse.Namespace) -> int:
    from edgecpm.evals.compare import _atomic_plot, _atomic_text
    from edgecpm.evals.niah import run_niah as niah
    from edgecpm.evals.plots import niah_heatmap

    v, model = _open(args, max(args.lengths) + 16)
    r = niah(model, args.lengths, args.depths, args.trials, args.seed, progress=not args.json, label=v.label)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "niah.json", json.dumps(r, indent=2))
    _atomic_plot(niah_heatmap, r, out / "niah.png")
    return _emit(
        args,
        r,
        f"niah {v.label}: accuracy {r['accuracy']:.3f}, mean log-prob {r['mean_logprob']:.3f}, "
        f"{r['wall_s']:.1f} s -> {out}/niah.json, {out}/niah.png",
    )


def run_haystack(args: argparse.Namespace) -> int:
    from edgecpm.evals.compare import _atomic_plot, _atomic_text
    from edgecpm.evals.haystack import run_task_haystack
    from edgecpm.evals.plots import haystack_grid
    from edgecpm.evals.tasks import bundled_tasks_dir, load_tasks

    tasks = load_tasks(args.tasks or bundled_tasks_dir())
    v, model = _open(args, 8192)
    r = run_task_haystack(
        model,
        tasks,
        args.n_shot,
        args.permutations,
        args.samples,
        args.n_test,
        args.seed,
        progress=not args.json,
        label=v.label,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "task-haystack.json", json.dumps(r, indent=2))
    _atomic_plot(haystack_grid, r, out / "task-haystack.png")
    return _emit(
        args,
        r,
        f"task-haystack {v.label}: pass rate {r['pass_rate']:.3f} "
        f"(lifelong acc {r['lifelong_accuracy']:.3f}, single-task acc {r['single_accuracy']:.3f}),"
        f" {r['wall_s']:.1f} s -> {out}/task-haystack.json, {out}/task-haystack.png",
    )


def run_compare(args: argparse.Namespace) -> int:
    from edgecpm.evals.compare import markdown, write_compare
    from edgecpm.evals.compare import run_compare as compare
    from edgecpm.evals.report_section import default_variants
    from edgecpm.evals.variants import parse_variant

    variants = [parse_variant(v) for v in (args.variants or default_variants(args.model))]
    if args.suite == "niah":
        options = {"lengths": args.lengths, "depths": args.depths, "trials": args.trials, "seed": args.seed}
    else:
        options = {
            "tasks": args.tasks,
            "n_shot": args.n_shot,
            "permutations": args.permutations,
            "samples": args.samples,
            "n_test": args.n_test,
            "seed": args.seed,
        }
    cmp = compare(
        args.model, variants, args.suite, options, work=args.out, threads=args.threads, progress=not args.json
    )
    files = write_compare(cmp, args.out)
    return _emit(args, cmp, markdown(cmp) + f"\n-> {files['json']}, {files['md']}, {files['png']}")


def run_convert(args: argparse.Namespace) -> int:
    from edgecpm.errors import EdgecpmError
    from edgecpm.evals.tasks import convert_published_task, write_task_file

    src, out = Path(args.source), Path(args.out)
    if not src.is_dir():
        raise EdgecpmError(f"task folder not found: {src}")
    folders = (
        [src] if (src / "config.json").exists() else sorted(d for d in src.iterdir() if (d / "config.json").exists())
    )
    if not folders:
        raise EdgecpmError(f"{src} has no Lifelong-ICL task folders (sub-folders with config.json)")
    converted = [(d, convert_published_task(d)) for d in folders]  # all read before anything is written
    out.mkdir(parents=True, exist_ok=True)
    written = [str(write_task_file(recs, out / f"{recs[0]['name']}.jsonl")) for _, recs in converted]
    return _emit(args, {"written": written}, f"wrote {len(written)} task files to {out}")
