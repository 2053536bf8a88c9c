"""Task files for Task Haystack: one JSONL file per classification task, and the converter from the published
Lifelong-ICL task folders (`config.json` + `train_K.jsonl` + `test.jsonl`). The format is in docs/evals.md.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecpm.errors import EdgecpmError

DEMO_SEP = "\n"  # between a task's instruction and demonstrations, and before a query (published `demo_sep`)
TASK_SEP = "\n\n"  # between task blocks in the stream (published `task_sep`)


@dataclass(frozen=True)
class Example:
    text: str  # the rendered inference prompt, ending where the label follows (e.g. "...\nanswer:")
    label: str
    demo: str  # the rendered demonstration (default: text + " " + label)
    pool: int | None = None  # published demo pool (train_K.jsonl) this example came from


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    options: tuple[str, ...]
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    path: Path | None = field(default=None, compare=False)

    def demos(self, n_shot: int, sample: int, seed: int) -> list[Example]:
        """`n_shot` demonstrations per class, shuffled; `sample` picks the pool (published) or the draw."""
        pools = sorted({e.pool for e in self.train if e.pool is not None})
        pool = [e for e in self.train if not pools or e.pool == pools[sample % len(pools)]]
        rng = random.Random(f"demos:{seed}:{self.name}:{sample}")
        chosen: list[Example] = []
        for option in self.options:
            of_class = [e for e in pool if e.label == option]
            if len(of_class) < n_shot:
                raise EdgecpmError(
                    f"task {self.name!r} has {len(of_class)} training examples of class "
                    f"{option!r}; {n_shot} per class were asked for"
                )
            chosen += rng.sample(of_class, n_shot)
        rng.shuffle(chosen)
        return chosen

    def block(self, demos: list[Example]) -> str:
        """The task's block in a prompt: its instruction, then its demonstrations one per line."""
        return DEMO_SEP.join([self.instruction] + [d.demo for d in demos])


def _example(record: dict[str, Any], where: str, options: tuple[str, ...]) -> Example:
    try:
        text, label = record["text"], record["label"]
    except KeyError as exc:
        raise EdgecpmError(f"{where}: missing field {exc.args[0]!r}") from None
    if not isinstance(text, str) or not isinstance(label, str):
        raise EdgecpmError(f"{where}: 'text' and 'label' must be strings")
    if label not in options:
        raise EdgecpmError(f"{where}: label {label!r} is not one of the task's options {list(options)}")
    demo = record.get("demo", f"{text} {label}")
    pool = record.get("pool")
    if pool is not None and not isinstance(pool, int):
        raise EdgecpmError(f"{where}: 'pool' must be an integer")
    return Example(text=text, label=label, demo=demo, pool=pool)


def load_task(path: str | Path) -> Task:
    """One task file: a header line {name, instruction, options} then {split, text, label[, demo, pool]} lines."""
    p = Path(path)
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise EdgecpmError(f"cannot read task file {p}: {exc.strerror or exc}") from None
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise EdgecpmError(f"{p.name} line {n}: not JSON ({exc.msg})") from None
    if not records or not isinstance(records[0], dict) or "options" not in records[0]:
        raise EdgecpmError(f"{p.name}: the first line must be the task header with 'name', 'instruction', 'options'")
    head = records[0]
    options = head.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise EdgecpmError(f"{p.name}: 'options' must be a list of at least two label strings")
    if len(set(options)) != len(options):
        raise EdgecpmError(f"{p.name}: 'options' has duplicates")
    options_t = tuple(options)
    split: dict[str, list[Example]] = {"train": [], "test": []}
    for n, rec in enumerate(records[1:], 2):
        where = f"{p.name} line {n}"
        if not isinstance(rec, dict) or rec.get("split") not in split:
            raise EdgecpmError(f"{where}: 'split' must be 'train' or 'test'")
        split[rec["split"]].append(_example(rec, where, options_t))
    if not split["test"]:
        raise EdgecpmError(f"{p.name}: no test examples")
    return Task(
        name=str(head.get("name", p.stem)),
        instruction=str(head.get("instruction", "")),
        options=options_t,
        train=tuple(split["train"]),
        test=tuple(split["test"]),
        path=p,
    )


def load_tasks(directory: str | Path) -> list[Task]:
    """Every `*.jsonl` task in a folder, sorted by name."""
    d = Path(directory)
    if not d.is_dir():
        raise EdgecpmError(f"task folder not found: {d}")
    tasks = [load_task(f) for f in sorted(d.glob("*.jsonl"))]
    if not tasks:
        raise EdgecpmError(f"no *.jsonl task files in {d}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise EdgecpmError(f"task names repeat in {d}")
    return tasks


def bundled_tasks_dir() -> Path:
    """The small set of tasks made locally for this SDK (sdk/data/tasks)."""
    from importlib import resources

    return Path(str(resources.files("edgecpm").joinpath("data/tasks")))


def convert_published_task(task_dir: str | Path) -> list[dict[str, Any]]:
    """A published Lifelong-ICL task folder -> the records of one task file (header first)."""
    d = Path(task_dir)
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise EdgecpmError(f"{d} has no config.json: not a Lifelong-ICL task folder") from None
    except json.JSONDecodeError as exc:
        raise EdgecpmError(f"{d / 'config.json'}: not JSON ({exc.msg})") from None
    for key in ("options", "instruction", "demonstration_prompt", "inference_prompt"):
        if key not in config:
            raise EdgecpmError(f"{d / 'config.json'}: missing field {key!r}")
    if config.get("task_type", "classification") != "classification":
        raise EdgecpmError(f"{d.name}: task_type {config['task_type']!r} is not classification")
    name = config.get("name", d.name)
    out: list[dict[str, Any]] = [
        {"name": name, "instruction": config["instruction"], "options": list(config["options"])}
    ]

    def render(template: str, rec: dict[str, Any], where: str) -> str:
        try:
            return template.format_map(rec)
        except (KeyError, IndexError, ValueError) as exc:
            raise EdgecpmError(f"{where}: the prompt template needs field {exc}") from None

    def pool_of(f: Path) -> int | None:
        tail = f.stem.split("_", 1)[1]
        return int(tail) if tail.isdigit() else None

    files = sorted(d.glob("train_*.jsonl"), key=lambda f: (pool_of(f) is None, pool_of(f) or 0, f.name))
    sources: list[tuple[Path, str, int | None]] = [(f, "train", pool_of(f)) for f in files]
    sources.append((d / "test.jsonl", "test", None))
    for f, split, pool in sources:
        if not f.exists():
            raise EdgecpmError(f"{d.name}: {f.name} is missing")
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{d.name}/{f.name} line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EdgecpmError(f"{where}: not JSON ({exc.msg})") from None
            label = str(rec.get("label"))
            text = render(config["inference_prompt"], rec, where)
            demo = render(config["demonstration_prompt"], {**rec, "label": label}, where)
            row: dict[str, Any] = {"split": split, "text": text, "label": label}
            if demo != f"{text} {label}":
                row["demo"] = demo
            if pool is not None:
                row["pool"] = pool
            out.append(row)
    return out


def write_task_file(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records atomically (temporary name, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(p)
    return p
