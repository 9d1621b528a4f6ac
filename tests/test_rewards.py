"""Verifiers: right, wrong, malformed and adversarial inputs; reward composition."""

import json
import time

import pytest

from gradus.rollout.rewards import RewardWeights, extract_answer, score, verify


def test_extract_last_tag():
    assert extract_answer("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert extract_answer("<answer>open only") is None


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("<answer>42</answer>", "42", 1.0),
        ("<answer>42.0000001</answer>", 42, 1.0),
        ("<answer>41</answer>", "42", 0.0),
        ("3 + 4 = 7.", "7", 1.0),  # no tag: last number
        ("The sum is 1,234", "1234", 1.0),
        ("7 then 8", "7", 0.0),
        ("no numbers here", "7", 0.0),
        ("<answer>-5</answer>", "-5", 1.0),
        ("<answer>x = 12</answer>", "12", 1.0),
    ],
)
def test_numeric(completion, answer, expected):
    assert verify("numeric", completion, answer) == expected


def test_countdown():
    spec = {"target": 24, "numbers": [4, 6, 1]}
    assert verify("countdown", "<answer>4 * 6 * 1</answer>", spec) == 1.0
    assert verify("countdown", "<answer>(6 - 1) * 4 + 4</answer>", spec) == 0.0  # 4 used twice
    assert verify("countdown", "<answer>4 * 6</answer>", spec) == 0.0  # 1 unused
    assert verify("countdown", "<answer>4*6/1 = 24</answer>", json.dumps(spec)) == 1.0
    assert verify("countdown", "4 * 6 * 1", spec) == 0.0  # no tag
    assert verify("countdown", "<answer>4 / (6 - 6) * 1</answer>", spec) == 0.0


@pytest.mark.parametrize(
    "expr",
    ["__import__('os').system('echo hi')", "9**9**9", "9" * 5000, "(" * 5000 + "1" + ")" * 5000, "1e309", "open('x')"],
)
def test_adversarial_expressions_rejected_fast(expr):
    start = time.perf_counter()
    assert verify("countdown", f"<answer>{expr}</answer>", {"target": 1, "numbers": [1]}) == 0.0
    assert verify("numeric", f"<answer>{expr}</answer>", "1") in (0.0, 1.0)
    assert time.perf_counter() - start < 1.0


def test_long_completions_are_fast():
    for text in ["<answer>" * 20000, "1 " * 50000, "</answer>" * 10000, "x" * 100000]:
        start = time.perf_counter()
        for kind, ans in [
            ("numeric", "1"),
            ("countdown", {"target": 1, "numbers": [1]}),
            ("kk", {"A": "knight"}),
            ("choice", "A"),
        ]:
            assert verify(kind, text, ans) in (0.0, 1.0)
        assert time.perf_counter() - start < 1.0


def test_knights_and_knaves():
    roles = {"Alice": "knight", "Bob": "knave"}
    assert verify("kk", "<answer>Alice is a knight, Bob is a knave</answer>", roles) == 1.0
    assert verify("kk", "<answer>Alice is a knight and Bob is a knight</answer>", roles) == 0.0
    assert verify("kk", "<answer>Alice is a knight</answer>", roles) == 0.0
    assert verify("kk", "Alice is a knight, Bob is a knave", roles) == 0.0


def test_choice():
    assert verify("choice", "<answer>(b)</answer>", "B") == 1.0
    assert verify("choice", "<answer>C. because</answer>", "c") == 1.0
    assert verify("choice", "<answer>Because</answer>", "B") == 0.0


def test_math():
    assert verify("math", "<answer>\\frac{1}{2}</answer>", "0.5") == 1.0
    assert verify("math", "<answer>3</answer>", "\\frac{6}{2}") == 1.0
    assert verify("math", "<answer>4</answer>", "3") == 0.0
    assert verify("math", "1/2", "0.5") == 0.0


def test_unknown_kind_and_garbage_never_raise():
    assert verify("nope", "<answer>1</answer>", "1") == 0.0
    assert verify("countdown", "<answer>1</answer>", "not json") == 0.0
    assert verify("numeric", "<answer>1</answer>", None) == 0.0


def test_score_terms():
    w = RewardWeights(correct=1.0, format=0.5, length=2.0)
    terms = score("numeric", "<answer>7</answer>", "7", num_tokens=30, budget=20, weights=w)
    assert terms == pytest.approx(
        {
            "score": 1.0,
            "correct": 1.0,
            "format": 1.0,
            "length": -0.5,
            "unused_budget": 0.0,
            "reward": 1.0 + 0.5 - 1.0,
            "verify_error": 0.0,
            "verify_timeout": 0.0,
        }
    )
    plain = score("numeric", "8", "7", 5, None, w)
    assert plain["reward"] == 0.0 and plain["length"] == 0.0
    bonus = score("numeric", "<answer>7</answer>", "7", 5, 20, RewardWeights(unused_budget=0.4))
    assert bonus["unused_budget"] == pytest.approx(0.75) and bonus["reward"] == pytest.approx(1.0 + 0.4 * 0.75)
    wrong = score("numeric", "<answer>6</answer>", "7", 5, 20, RewardWeights(unused_budget=0.4))
    assert wrong["unused_budget"] == 0.0 and wrong["reward"] == 0.0


def test_timeout_and_errors_are_counted(monkeypatch):
    from gradus.rollout import rewards

    def slow(text, answer, tagged):
        while True:
            pass

    def broken(text, answer, tagged):
        raise RuntimeError("bug")

    monkeypatch.setitem(rewards.VERIFIERS.entries, "slow", slow)
    monkeypatch.setitem(rewards.VERIFIERS.entries, "broken", broken)
    start = time.perf_counter()
    assert rewards.check("slow", "x", "1", timeout=0.2) == (0.0, "timeout", "verifier slow ran past its 0.2 s deadline")
    assert time.perf_counter() - start < 1.0
    assert rewards.check("broken", "x", "1") == (0.0, "error", "verifier broken: RuntimeError: bug")
    terms = score("broken", "x", "1", 3, None, RewardWeights())
    assert terms["verify_error"] == 1.0 and terms["reward"] == 0.0 and terms["verify_message"].endswith("bug")


def test_seeded_generate_calls_stay_under_the_prefill_budget():
    from gradus.rollout.worker import SEEDED_PROMPT_TOKENS, seeded_chunks

    prompts = [[1] * 1000] * 5
    assert seeded_chunks(prompts, False, 4) == [[0, 1, 2, 3, 4]]  # unseeded: one call
    chunks = seeded_chunks(prompts, True, 2)
    assert chunks == [[0, 1], [2, 3], [4]] and all(2 * 1000 * len(c) <= SEEDED_PROMPT_TOKENS for c in chunks)
    assert seeded_chunks([[1] * 9000], True, 1) == [[0]]  # a prompt over the budget still gets its own call
