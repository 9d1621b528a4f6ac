"""Verifiers (by parsing only, never eval) and the composed reward of one completion.

`verify(kind, completion, answer)` is the correctness score; `score` adds the
format and length terms with their weights and returns every term separately
so each can be logged.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from rollout.safe_arith import ParseError, evaluate

Verifier = Callable[[str, Any, bool], float]
VERIFIERS: dict[str, Verifier] = {}
MAX_TAG_CHARS = 2000
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def register(name: str):
    def add(fn: Verifier) -> Verifier:
        VERIFIERS[name] = fn
        return fn

    return add


def extract_answer(completion: str) -> str | None:
    """Content of the last <answer>...</answer>, found in linear time."""
    end = completion.rfind("</answer>")
    if end < 0:
        return None
    start = completion.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return completion[start + len("<answer>") : end].strip()


def last_number(text: str) -> float | None:
    matches = _NUMBER.findall(_THOUSANDS.sub("", text[-MAX_TAG_CHARS:]))
    if not matches or len(matches[-1]) > 40:
        return None
    return float(matches[-1])


def _structured(answer: Any) -> Any:
    return json.loads(answer) if isinstance(answer, str) else answer


@register("numeric")
def _numeric(text: str, answer: Any, tagged: bool) -> float:
    predicted = last_number(text)
    target = float(str(answer).replace(",", "").strip())
    return float(predicted is not None and abs(predicted - target) <= 1e-6)


@register("math")
def _math(text: str, answer: Any, tagged: bool) -> float:
    from math_verify import parse, verify as math_equal

    if not tagged:
        return 0.0
    gold = parse(f"${answer}$", parsing_timeout=None)
    predicted = parse(f"${text}$" if "$" not in text else text, parsing_timeout=None)
    return float(bool(gold) and bool(predicted) and math_equal(gold, predicted, timeout_seconds=None))


@register("countdown")
def _countdown(text: str, answer: Any, tagged: bool) -> float:
    if not tagged:
        return 0.0
    spec = _structured(answer)
    expression = text.split("=")[0]
    value, used = evaluate(expression)
    return float(value == int(spec["target"]) and sorted(used) == sorted(int(n) for n in spec["numbers"]))


@register("kk")
def _knights_knaves(text: str, answer: Any, tagged: bool) -> float:
    if not tagged:
        return 0.0
    roles = _structured(answer)
    for name, role in roles.items():
        said = re.findall(rf"\b{re.escape(name)}\b\W+(?:is|was|:)?\s*(?:an?\s+)?(knight|knave)", text, re.IGNORECASE)
        if not said or said[-1].lower() != str(role).lower():
            return 0.0
    return 1.0


@register("choice")
def _choice(text: str, answer: Any, tagged: bool) -> float:
    if not tagged:
        return 0.0
    match = re.match(r"\(?([A-Za-z])\)?(?:[\s.:)]|$)", text)
    return float(bool(match) and match.group(1).upper() == str(answer).strip().upper())


def verify(kind: str, completion: str, answer: Any) -> float:
    """1.0 right, 0.0 wrong or unparseable; never raises."""
    try:
        verifier = VERIFIERS[kind]
        tagged_text = extract_answer(completion)
        if tagged_text is not None and len(tagged_text) > MAX_TAG_CHARS:
            return 0.0
        text = tagged_text if tagged_text is not None else completion
        return verifier(text, answer, tagged_text is not None)
    except (ParseError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError):
        return 0.0
    except Exception:  # noqa: BLE001 - a verifier bug must cost a sample, not a run
        return 0.0


def has_format(completion: str) -> bool:
    return extract_answer(completion) is not None


@dataclass
class RewardWeights:
    """Weights of the reward terms; a default lives here and nowhere else."""

    correct: float = 1.0
    format: float = 0.0
    length: float = 0.0


def score(kind: str, completion: str, answer: Any, num_tokens: int, budget: int | None, weights: RewardWeights) -> dict[str, float]:
    """All reward terms of one completion, and their weighted sum under 'reward'."""
    correct = verify(kind, completion, answer)
    fmt = float(has_format(completion))
    over = max(0, num_tokens - budget) / budget if budget else 0.0
    terms = {"correct": correct, "format": fmt, "length": -over}
    terms["reward"] = weights.correct * correct + weights.format * fmt + weights.length * terms["length"]
    return terms


def unknown_verifier_message(kind: str, known: Mapping[str, Any] = VERIFIERS) -> str | None:
    return None if kind in known else f"unknown verifier {kind!r}; choose one of {sorted(known)}"
