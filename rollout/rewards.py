"""Verifiers (by parsing only, never eval) and the composed reward of one completion.

`verify(kind, completion, answer, row=None)` is the verifier's score; `kind` is
a built-in name or `path/to/reward.py:fn`, a verl-style reward function run in a
child process under a deadline (rollout/file_reward.py). `judge` also says what
counts as correct: a file verifier's `acc` if it returns one, else
score >= threshold (1.0 by default, so built-in 0/1 scores are unchanged).
`score` adds the format and length terms with their weights and returns every
term separately so each can be logged. VERIFIERS is a curriculum.registry
Registry, the same plugin mechanism as curricula and sources.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from gradus.curriculum.registry import Registry, is_plugin
from gradus.rollout.file_reward import FILE_TIMEOUT_S, file_score
from gradus.rollout.safe_arith import ParseError, evaluate

Verifier = Callable[[str, Any, bool], float]
VERL_SIGNATURE = "compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)"


def reward_interface(fn: Any) -> list[str]:
    """What a reward file's function lacks to be called the way verl calls it (by keyword)."""
    if not callable(fn):
        return [f"{fn!r} is not a function {VERL_SIGNATURE}"]
    try:
        inspect.signature(fn).bind(data_source="", solution_str="", ground_truth="", extra_info=None)
    except TypeError:
        return [
            f"it takes {inspect.signature(fn)}, not verl's {VERL_SIGNATURE}; "
            "wrap it in a two-line function (docs/reference/data.md: Rewards from a file)"
        ]
    except ValueError:  # no inspectable signature (a builtin): let the call decide
        pass
    return []


VERIFIERS: Registry[Verifier] = Registry("verifier", reward_interface, positional=3)
SETUP: dict[str, Callable[[], Any]] = {}  # one-off imports, run outside the verifier's deadline
MAX_TAG_CHARS = 2000
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def register(name: str, setup: Callable[[], Any] | None = None):
    def add(fn: Verifier) -> Verifier:
        VERIFIERS.register(name)(fn)
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


MAX_RESULT_DIGITS = 10_000  # a power or factorial whose value would have more digits is refused unevaluated
_POWER_BASE = re.compile(r"[({]?\s*(\d+(?:\.\d+)?)\s*[)}]?\s*(?:\^|\*\*)\s*")
_POWER_SIGN = re.compile(r"\s*(?:\^|\*\*)\s*")
_SIGNED = re.compile(r"[-+]?\d+(?:\.\d+)?")
_FACTORIAL = re.compile(r"(\d+)\s*!")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def _exponent(text: str, start: int) -> tuple[str, int]:
    """The exponent written at `start` and where it ends: a {braced} or
    (parenthesised) group, or a signed number with the rest of its power chain
    (9**9**9 is 9**(9**9))."""
    if start < len(text) and text[start] in "{(":
        close, depth = {"{": "}", "(": ")"}[text[start]], 0
        for i in range(start, len(text)):
            depth += text[i] == text[start]
            depth -= text[i] == close
            if depth == 0:
                return text[start + 1 : i], i + 1
        return text[start + 1 :], len(text)
    match = _SIGNED.match(text, start)
    if not match:
        return "", start
    chain = _POWER_SIGN.match(text, match.end())
    if chain:
        _, end = _exponent(text, chain.end())
        return text[start:end], end
    return match.group(), match.end()


def _log10_bound(text: str, depth: int = 0) -> float:
    """An upper bound on log10 of the largest number `text` writes with powers
    (numeric bases and exponents only; sums and products in an exponent are
    bounded by the product of their numbers) or factorials; inf when the bound
    itself is beyond floats."""
    if depth > 8:
        return math.inf
    worst = 0.0
    for match in _FACTORIAL.finditer(text):
        n = int(match.group(1)) if len(match.group(1)) < 12 else 10**12
        worst = max(worst, n * math.log10(max(n, 1)))
    for match in _POWER_BASE.finditer(text):
        exponent, _ = _exponent(text, match.end())
        inner = _log10_bound(exponent, depth + 1)
        numbers = [float(n) for n in _NUMBERS.findall(exponent)] or [0.0]
        bound = max(sum(numbers), math.prod(max(n, 1.0) for n in numbers))
        e = math.inf if inner > 300 else max(bound, 10**inner if inner else 0.0)
        worst = max(worst, e * math.log10(max(float(match.group(1)), 1.0)) if e != math.inf else math.inf)
    return worst


@register("math", setup=_import_math_verify)
def _math(text: str, answer: Any, tagged: bool) -> float:
    from math_verify import parse
    from math_verify import verify as math_equal

    if not tagged or _log10_bound(text) > MAX_RESULT_DIGITS:  # sympy would spend minutes in C on 9^{9^{7}}
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


def check(kind: str, completion: str, answer: Any, timeout: float = 1.0) -> tuple[float, str, str | None]:
    """A built-in verifier's score, how it ended ("ok", "error" or "timeout") and
    what went wrong. Parse errors (ValueError, KeyError, TypeError, ...) mean an
    unparseable completion: 0 and "ok". File verifiers count every exception (judge)."""
    try:
        verifier = VERIFIERS.entries[kind]
        if kind in SETUP:
            SETUP[kind]()
        tagged_text = extract_answer(completion)
        if tagged_text is not None and len(tagged_text) > MAX_TAG_CHARS:
            return 0.0, "ok", None
        text = tagged_text if tagged_text is not None else completion
        with deadline(timeout):
            return verifier(text, answer, tagged_text is not None), "ok", None
    except VerifierTimeout:
        return 0.0, "timeout", f"verifier {kind} ran past its {timeout:g} s deadline"
    except (ParseError, ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError):
        return 0.0, "ok", None  # an unparseable completion is simply wrong
    except Exception as err:  # noqa: BLE001 - a verifier bug must cost a sample, not a run
        return 0.0, "error", f"verifier {kind}: {type(err).__name__}: {err}".splitlines()[0][:500]


@dataclass
class Verdict:
    """One completion's verification: the score (the reward's correctness term),
    whether it counts as correct (accuracy, filters, curricula), how the
    verifier ended ("ok", "error", "timeout") and a file verifier's extra keys."""

    score: float
    correct: bool
    status: str = "ok"
    extra: dict[str, float] = field(default_factory=dict)
    message: str | None = None  # what went wrong, for "error" and "timeout"


def judge(
    kind: str,
    completion: str,
    answer: Any,
    row: dict | None = None,
    threshold: float = 1.0,
    timeout: float | None = None,
) -> Verdict:
    """Built-in verifiers in this process; `file.py:fn` ones in the reward process."""
    if is_plugin(kind):
        result, status, message = file_score(
            kind, completion, answer, row, FILE_TIMEOUT_S if timeout is None else timeout
        )
        value = result.pop("score")
        correct = bool(result["acc"]) if "acc" in result else value >= threshold
        return Verdict(value, correct, status, result, message)
    value, status, message = check(kind, completion, answer, 1.0 if timeout is None else timeout)
    return Verdict(value, value >= threshold, status, message=message)


def verify(kind: str, completion: str, answer: Any, row: dict | None = None) -> float:
    """The verifier's score: 1.0 right, 0.0 wrong or unparseable for built-ins; a
    file verifier's score as it returns it. `row` supplies data_source and extra_info. Never raises."""
    return judge(kind, completion, answer, row).score


def has_format(completion: str) -> bool:
    return extract_answer(completion) is not None


@dataclass
class RewardWeights:
    """Weights of the reward terms; a default lives here and nowhere else."""

    correct: float = 1.0  # times the verifier's score (0/1 built-in; a reward file's score as it is)
    format: float = 0.0  # an <answer> tag is present
    length: float = 0.0  # minus the fraction of tokens over the budget
    unused_budget: float = 0.0  # fraction of the budget left unused, only when correct
    # Not a weight: a step whose verifier errors + timeouts exceed this share of its samples stops the
    # run with the first message, instead of training on zeros.
    max_error_frac: float = 0.5


def score(
    kind: str,
    completion: str,
    answer: Any,
    num_tokens: int,
    budget: int | None,
    weights: RewardWeights,
    row: dict | None = None,
    threshold: float = 1.0,
) -> dict[str, Any]:
    """All reward terms of one completion, their weighted sum under 'reward',
    correctness, verifier failures (counted in metrics) and a file verifier's
    extra keys under 'reward_extra'. The verifier's score is the correctness
    term as it is (weighted by `weights.correct`)."""
    verdict = judge(kind, completion, answer, row, threshold)
    correct = float(verdict.correct)
    terms: dict[str, Any] = {
        "score": verdict.score,
        "correct": correct,
        "format": float(has_format(completion)),
        "length": -max(0, num_tokens - budget) / budget if budget else 0.0,
        "unused_budget": correct * max(0, budget - num_tokens) / budget if budget else 0.0,
    }
    terms["reward"] = (
        weights.correct * verdict.score
        + weights.format * terms["format"]
        + weights.length * terms["length"]
        + weights.unused_budget * terms["unused_budget"]
    )
    terms["verify_error"] = float(verdict.status == "error")
    terms["verify_timeout"] = float(verdict.status == "timeout")
    if verdict.message is not None:
        terms["verify_message"] = verdict.message
    if verdict.extra:
        terms["reward_extra"] = verdict.extra
    return terms
