"""Data distributions: where each distribution's rows come from (synthetic
generators with a difficulty knob, or local JSONL/Parquet/HF dataset dirs), its
held-out split, and the cursor that walks its training rows (resumable state).

A source is `fn(wanted, rng, **params) -> list[row]`, a row being
{"prompt": str or chat messages, "answer": Any} (file rows may also carry
`data_source` and `extra_info` for verl reward functions); synthetic sources
return distinct prompts. `source: path/to/file.py:fn` loads such a function
from a file (a plugin, curriculum/registry.py).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gradus.curriculum.prompts import derive_seed, make_prompt_sampler
from gradus.curriculum import posteriors  # noqa: F401 - registers pass_rate, thompson and greso
from gradus.curriculum.noise import CORRUPTIBLE, corrupt_rows
from gradus.curriculum.registry import Registry, nearest

Row = dict[str, Any]
SOURCES: Registry[Callable[..., list[Row]]] = Registry(
    "data source",
    lambda obj: [] if callable(obj) else [f"{obj!r} is not a function fn(wanted, rng, **params) -> list of rows"],
    positional=2,
)
DEFAULT_SYNTHETIC_ROWS = 2000  # training rows a generator makes when data.train_size is null
MISSING = object()
NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank", "Grace", "Heidi"]


def distinct(draw: Callable[[np.random.Generator], Row], rng: np.random.Generator, wanted: int) -> list[Row]:
    """Up to `wanted` rows with distinct prompts (small spaces such as 1-digit
    addition run out sooner; held-out rows still never leak into training)."""
    seen: dict[str, Row] = {}
    for _ in range(20 * wanted + 100):
        row = draw(rng)
        seen.setdefault(row["prompt"], row)
        if len(seen) == wanted:
            break
    return list(seen.values())


@SOURCES.register("arithmetic")
def arithmetic(wanted: int, rng: np.random.Generator, digits: int = 1, ops: str = "+") -> list[Row]:
    """'What is a + b?' with `digits`-digit operands: difficulty grows with digits."""
    if digits < 1 or not ops or set(ops) - set("+-*"):
        raise ValueError("arithmetic: digits must be >= 1 and ops a string of + - *")
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits

    def draw(rng: np.random.Generator) -> Row:
        a, b = (int(x) for x in rng.integers(low, high, size=2))
        op = ops[int(rng.integers(len(ops)))]
        return {"prompt": f"What is {a} {op} {b}?", "answer": str({"+": a + b, "-": a - b, "*": a * b}[op])}

    return distinct(draw, rng, wanted)


@SOURCES.register("countdown")
def countdown(wanted: int, rng: np.random.Generator, numbers: int = 3, max_number: int = 20) -> list[Row]:
    """Countdown: reach the target with + - * and every number once; harder with more numbers."""
    if numbers < 2:
        raise ValueError("countdown: numbers must be >= 2")

    def draw(rng: np.random.Generator) -> Row:
        while True:
            nums = [int(x) for x in rng.integers(1, max_number + 1, size=numbers)]
            order = [int(i) for i in rng.permutation(numbers)]
            value = nums[order[0]]
            for i in order[1:]:
                value = [value + nums[i], value - nums[i], value * nums[i]][int(rng.integers(3))]
            if 0 < value <= 1000:
                break
        prompt = (
            f"Using the numbers {nums}, write an arithmetic expression that equals {value}. "
            "Use + - * / and parentheses, each number exactly once. Put the expression in <answer></answer>."
        )
        return {"prompt": prompt, "answer": {"target": value, "numbers": nums}}

    return distinct(draw, rng, wanted)


def _kk_statement(rng: np.random.Generator, speaker: int, n: int) -> tuple[str, Callable[[tuple[bool, ...]], bool]]:
    """A claim by `speaker` about others: its text and its truth under an assignment (True = knight)."""
    others = [i for i in range(n) if i != speaker] or [speaker]
    a = others[int(rng.integers(len(others)))]
    b = others[int(rng.integers(len(others)))]
    kind = int(rng.integers(4 if a != b else 2))
    if kind == 0:
        return f"{NAMES[a]} is a knight", lambda roles: roles[a]
    if kind == 1:
        return f"{NAMES[a]} is a knave", lambda roles: not roles[a]
    if kind == 2:
        return f"{NAMES[a]} and {NAMES[b]} are both knights", lambda roles: roles[a] and roles[b]
    return f"{NAMES[a]} or {NAMES[b]} is a knave", lambda roles: not roles[a] or not roles[b]


@SOURCES.register("kk")
def knights_knaves(wanted: int, rng: np.random.Generator, people: int = 3) -> list[Row]:
    """Knights always tell the truth, knaves always lie; puzzles with exactly one
    solution (checked by enumerating all role assignments). Harder with more people.
    From 3 people: two people's claims about each other never have exactly one solution."""
    if not 3 <= people <= len(NAMES):
        raise ValueError(f"kk: people must be between 3 and {len(NAMES)}")

    def draw(rng: np.random.Generator) -> Row:
        while True:
            claims = [_kk_statement(rng, i, people) for i in range(people)]
            solutions = [
                roles
                for roles in itertools.product([True, False], repeat=people)
                if all(roles[i] == truth(roles) for i, (_, truth) in enumerate(claims))
            ]
            if len(solutions) == 1:
                break
        said = " ".join(f'{NAMES[i]} says: "{text}."' for i, (text, _) in enumerate(claims))
        who = ", ".join(NAMES[:people])
        prompt = (
            f"On an island, knights always tell the truth and knaves always lie. You meet {who}. {said} "
            "Who is a knight and who is a knave? "
            f"Answer like <answer>{NAMES[0]} is a knight, {NAMES[1]} is a knave</answer>."
        )
        answer = {NAMES[i]: "knight" if r else "knave" for i, r in enumerate(solutions[0])}
        return {"prompt": prompt, "answer": answer}

    return distinct(draw, rng, wanted)


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL, JSON (list), Parquet file or an HF `save_to_disk` directory."""
    if path.is_dir():
        from datasets import load_from_disk

        if not any(path.iterdir()):
            raise ValueError(
                f"data path {path} is an empty directory; point params.path at a data file or a dataset directory"
            )
        if not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
            raise ValueError(
                f"data path {path} is a directory but not a Hugging Face dataset (no dataset_info.json or "
                "dataset_dict.json from save_to_disk); point params.path at a .jsonl, .json or .parquet file in it"
            )

        data = load_from_disk(str(path))
        if hasattr(data, "keys"):  # a DatasetDict: take its train split
            data = data["train"] if "train" in data else data[next(iter(data.keys()))]
        return [dict(r) for r in data]
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return rows
    rows = []
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None
    return rows


def plain(value: Any) -> Any:
    """Rows as plain Python: pandas/pyarrow give numpy arrays for list columns
    (and numpy scalars), which `where`, prompts and `split_by` treat as lists."""
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def lookup(record: Any, path: str) -> Any:
    """The value at a dotted path (`reward_model.ground_truth`, `prompt.0.content`), or MISSING."""
    if isinstance(record, dict) and path in record:
        return record[path]
    node = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def as_prompt(value: Any, where: str) -> str | list[dict]:
    """A prompt as it stays end to end: a string, or a list of {role, content} chat
    messages with at least one user message (given to the tokenizer's chat template)."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    ):
        if not any(m["role"] == "user" for m in value):
            raise ValueError(f"{where}: the chat messages have no user message")
        return [dict(m) for m in value]
    shown = repr(value)
    raise ValueError(
        f"{where} is {type(value).__name__} {shown[:60] + '...' if len(shown) > 60 else shown}: "
        "a prompt must be a string or a list of {role, content} messages"
    )


FIELDS = {"prompt": "prompt", "answer": "answer", "data_source": "data_source", "extra_info": "extra_info"}
OPTIONAL_FIELDS = ("data_source", "extra_info")  # taken when the row has them (verl reward functions read them)


@SOURCES.register("file")
def file(
    wanted: int | None,
    rng: np.random.Generator,
    path: str,
    fields: Mapping[str, str] | None = None,
    where: Mapping[str, Any] | None = None,
    split_by: str | None = None,
) -> list[Row]:
    """Rows of a local file, shuffled by seed (all of them when `wanted` is None).
    `fields` maps prompt/answer (and data_source/extra_info) to dotted paths into
    the rows; `where` keeps rows whose fields equal the given values; `split_by`
    tags each row with the value at that path (one distribution per value)."""
    target = Path(path).expanduser()
    if not target.exists():
        raise ValueError(f"data file {target} does not exist")
    unknown = sorted(set(fields or {}) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"{target}: fields.{unknown[0]} is not a row field{nearest(unknown[0], FIELDS)}; map {', '.join(FIELDS)}"
        )
    mapping = {**FIELDS, **dict(fields or {})}
    required = ["prompt", "answer", *(k for k in OPTIONAL_FIELDS if k in (fields or {}))]
    rows = []
    for index, record in enumerate(read_rows(target), 1):
        if not isinstance(record, dict):
            raise ValueError(f"{target}: row {index} is not an object")
        record = plain(record)
        if any(lookup(record, k) != v for k, v in (where or {}).items()):
            continue
        row = {}
        for key, column in mapping.items():
            value = lookup(record, column)
            if value is MISSING and key in required:
                raise ValueError(
                    f"{target}: row {index} has no field {column!r} (mapped to {key}); "
                    f"its fields are {sorted(record)}; fix the file or set fields.{key}"
                )
            if value is not MISSING:
                row[key] = value
        if row.get("answer") is None:
            raise ValueError(
                f"{target}: row {index} has a null answer at {mapping['answer']!r}; every training row needs one "
                "(filter it out with where, or fix the file)"
            )
        row["prompt"] = as_prompt(row["prompt"], f"{target}: row {index} field {mapping['prompt']!r} (prompt)")
        if split_by is not None:
            value = lookup(record, split_by)
            if value is MISSING or isinstance(value, (dict, list)):
                raise ValueError(f"{target}: row {index} has no plain value at split_by={split_by!r}")
            row["split"] = str(value)
        rows.append(row)
    if not rows:
        raise ValueError(f"{target}: no rows" + (f" match where={dict(where)}" if where else ""))
    return [rows[i] for i in rng.permutation(len(rows))[:wanted]]


def source_rows(name: str, source: str, params: dict, train_size: int | None, eval_size: int, seed: int) -> list[Row]:
    """A distribution's rows from its source, checked: a file gives all its rows,
    a generator `train_size` (default DEFAULT_SYNTHETIC_ROWS) + eval_size. The
    built-in generators take `corrupt` (corrupt_rows) beside their own parameters."""
    rng = np.random.default_rng(derive_seed(seed, name, "rows"))
    wanted = None if source == "file" else (train_size or DEFAULT_SYNTHETIC_ROWS) + eval_size
    params = dict(params)
    corrupt = params.pop("corrupt", 0)
    if corrupt and source not in CORRUPTIBLE:
        raise ValueError(
            f"distribution {name!r}: corrupt applies to the built-in sources {list(CORRUPTIBLE)}, not {source!r}"
        )
    if not isinstance(corrupt, (int, float)) or not 0 <= corrupt <= 1:
        raise ValueError(f"distribution {name!r}: corrupt must be a fraction between 0 and 1, got {corrupt!r}")
    try:
        rows = SOURCES.build(source, wanted, rng, **params)
    except (TypeError, KeyError) as err:
        raise ValueError(f"distribution {name!r}: {err.args[0] if err.args else err}") from None
    if not isinstance(rows, list):
        raise ValueError(f"distribution {name!r}: source {source!r} returned {type(rows).__name__}, not a list of rows")
    for index, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
            raise ValueError(
                f"distribution {name!r}: source {source!r} row {index} is not a mapping with 'prompt' and 'answer'"
            )
        rows[index - 1] = plain(row)
        rows[index - 1]["prompt"] = as_prompt(
            rows[index - 1]["prompt"], f"distribution {name!r}: source {source!r} row {index} prompt"
        )
    return corrupt_rows(rows, corrupt, source, name, seed) if corrupt else rows


def make_distributions(
    spec: Mapping[str, Any],
    train_size: int | None,
    eval_size: int,
    seed: int,
    prompts: Mapping[str, Any] | None = None,
) -> list["Distribution"]:
    """A config distribution as Distributions: one, or with `params.split_by`
    one per distinct value, named `<name>/<value>`, each with its own held-out
    rows; `prompts` picks their prompt-level sampler (curriculum/prompts.py).
    A spec's own `eval_size` overrides the shared one: a source with few distinct
    rows (1-digit sums: 100) can hold out fewer than a large one."""
    name, source, params = spec["name"], spec["source"], dict(spec.get("params") or {})
    if spec.get("eval_size") is not None:
        eval_size = spec["eval_size"]
    rows = source_rows(name, source, params, train_size, eval_size, seed)
    common = {
        "budget": spec.get("budget"),
        "verifier_threshold": spec.get("verifier_threshold", 1.0),
        "prompts": prompts,
    }
    if params.get("split_by") is None:
        return [Distribution(name, source, params, spec["verifier"], train_size, eval_size, seed, rows=rows, **common)]
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(row["split"], []).append({k: v for k, v in row.items() if k != "split"})
    return [
        Distribution(
            f"{name}/{value}", source, params, spec["verifier"], train_size, eval_size, seed, rows=group, **common
        )
        for value, group in sorted(groups.items())
    ]


class Distribution:
    """One named distribution: rows split into held-out and train (deterministic
    by seed), and a prompt sampler that picks the next training rows (row ids
    are indices into the training rows)."""

    def __init__(
        self,
        name: str,
        source: str,
        params: dict,
        verifier: str,
        train_size: int | None,
        eval_size: int,
        seed: int,
        budget: int | None = None,
        rows: list[Row] | None = None,
        verifier_threshold: float = 1.0,
        prompts: Mapping[str, Any] | None = None,
    ) -> None:
        self.name, self.verifier, self.seed, self.budget = name, verifier, seed, budget
        self.verifier_threshold = verifier_threshold
        if rows is None:
            rows = source_rows(name, source, params, train_size, eval_size, seed)
        self.note = ""  # said once by the driver: a cap that cuts the data
        if train_size is not None and len(rows) > train_size + eval_size:
            self.note = (
                f"distribution {name!r}: data.train_size={train_size} trains on {train_size} "
                f"of its {len(rows) - eval_size} rows"
            )
            rows = rows[: train_size + eval_size]
        if len(rows) <= eval_size:
            raise ValueError(
                f"distribution {name!r}: only {len(rows)} distinct rows, need more than eval_size={eval_size}"
            )
        self.eval_rows, self.train_rows = rows[:eval_size], rows[eval_size:]
        self.sampler = make_prompt_sampler(dict(prompts or {}), len(self.train_rows), (seed, name))

    def take(self, n: int, rng: np.random.Generator | None = None) -> list[Row]:
        """The next n training rows, each with its `row_id` (`rng`: the
        scheduler's, for samplers that draw at random)."""
        return [{**self.train_rows[i], "row_id": i} for i in self.sampler.take(n, rng)]

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
