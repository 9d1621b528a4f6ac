"""Verifiers (by parsing only, never eval) and the composed reward of one completion.

`verify(kind, completion, answer)` is the correctness score; `score` adds the
format and length terms with their weights and returns every term separately
so each can be logged.
"""
from __future__ import annotations

import functools
import json
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from rollout.safe_arith import ParseError, evaluate

Verifier = Callable[[str, Any, bool], float]
VERIFIERS: dict[str, Verifier] = {}
SETUP: dict[str, Callable[[], Any]] = {}  # one-off imports, run outside the verifier's deadline
MAX_TAG_CHARS = 2000
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def register(name: str, setup: Callable[[], Any] | None = None):
    def add(fn: Verifier) -> Verifier:
        VERIFIERS[name] = fn
        if setup is not None:
            SETUP[name] = functools.cache(setup)
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


def _import_math_verify() -> Any:
    import logging

    import math_verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # we time out ourselves; silence its per-call warning
    return math_verify


@register("math", setup=_import_math_verify)
def _math(text: str, answer: Any, tagged: bool) -> float:
    from math_verify import parse
    from math_verify import verify as math_equal

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


class VerifierTimeout(Exception):
    pass


@contextmanager
def deadline(seconds: float):
    """Raise VerifierTimeout after `seconds` (SIGALRM, so only in the main thread;
    elsewhere the verifiers' own input caps bound their time)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise VerifierTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(kind: str, completion: str, answer: Any, timeout: float = 1.0) -> tuple[float, str]:
    """Correctness and how the verifier ended: "ok", "error" or "timeout"."""
    try:
        verifier = VERIFIERS[kind]
        if kind in SETUP:
            SETUP[kind]()
        tagged_text = extract_answer(completion)
        if tagged_text is not None and len(tagged_text) > MAX_TAG_CHARS:
            return 0.0, "ok"
        text = tagged_text if tagged_text is not None else completion
        with deadline(timeout):
            return verifier(text, answer, tagged_text is not None), "ok"
    except VerifierTimeout:
        return 0.0, "timeout"
    except (ParseError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError):
        return 0.0, "ok"  # an unparseable completion is simply wrong
    except Exception:  # noqa: BLE001 - a verifier bug must cost a sample, not a run
        return 0.0, "error"


def verify(kind: str, completion: str, answer: Any) -> float:
    """1.0 right, 0.0 wrong or unparseable; never raises."""
    return check(kind, completion, answer)[0]


def has_format(completion: str) -> bool:
    return extract_answer(completion) is not None


@dataclass
class RewardWeights:
    """Weights of the reward terms; a default lives here and nowhere else."""

    correct: float = 1.0
    format: float = 0.0  # an <answer> tag is present
    length: float = 0.0  # minus the fraction of tokens over the budget
    unused_budget: float = 0.0  # fraction of the budget left unused, only when correct


def score(kind: str, completion: str, answer: Any, num_tokens: int, budget: int | None, weights: RewardWeights) -> dict[str, float]:
    """All reward terms of one completion, their weighted sum under 'reward', and
    verifier failures (counted in metrics)."""
    correct, status = check(kind, completion, answer)
    terms = {
        "correct": correct,
        "format": float(has_format(completion)),
        "length": -max(0, num_tokens - budget) / budget if budget else 0.0,
        "unused_budget": correct * max(0, budget - num_tokens) / budget if budget else 0.0,
    }
    terms["reward"] = sum(getattr(weights, name) * value for name, value in terms.items())
    terms["verify_error"] = float(status == "error")
    terms["verify_timeout"] = float(status == "timeout")
    return terms
