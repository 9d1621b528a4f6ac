"""Bring your own data, rewards and curricula (no Ray, no vLLM): a verl-format
parquet built here (nested fields, chat-message prompts, data sources with '/'),
reward files with verl's signature, plugins by path, and the one-line errors."""

import json
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradus.curriculum.bandits import make_curriculum
from gradus.curriculum.budget import make_budget_schedule
from gradus.curriculum.filters import make_filter
from gradus.curriculum.scheduler import CurriculumScheduler
from gradus.curriculum.sources import SOURCES, plain
from gradus.launch.cli import main as cli
from gradus.launch.run.metrics import MetricsLogger, batch_metrics
from gradus.launch.experiments.results import distributions
from gradus.curriculum.items import Item
from gradus.rollout.records import Group, Sample
from gradus.rollout.rewards import RewardWeights, judge, score, verify
from gradus.rollout.worker import RolloutWorker, chat_messages

SOURCES_ = {"openai/gsm8k": 7, "lighteval/MATH": 5}  # rows per data_source


def _verl_parquet(path):
    rows = []
    for source, count in SOURCES_.items():
        for i in range(count):
            rows.append(
                {
                    "data_source": source,
                    "prompt": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": f"{source} question {i}?"},
                    ],
                    "ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": f"{source}-{i}"},
                    "extra_info": {"index": i, "tags": ["x", source]},
                }
            )
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


REWARD = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl-style: a dict with score, acc and extra keys (pred is not numeric: not logged)."""
    right = solution_str.strip() == ground_truth
    return {"score": 3.0 if right else -1.0, "acc": right, "pred": solution_str, "index": extra_info["index"],
            "from_gsm8k": float(data_source == "openai/gsm8k")}

def half(data_source, solution_str, ground_truth, extra_info=None):
    return 0.5

def broken(data_source, solution_str, ground_truth, extra_info=None):
    raise ValueError("a bug in the user's reward file")

def hangs(data_source, solution_str, ground_truth, extra_info=None):
    import time
    time.sleep(60)

def logic_rl(solution_str, ground_truth):
    return 1.0
'''


@pytest.fixture
def data(tmp_path):
    rows = _verl_parquet(tmp_path / "train.parquet")
    (tmp_path / "reward.py").write_text(REWARD)
    return tmp_path, rows


def _mix(tmp_path, **params):
    return {
        "name": "mix",
        "source": "file",
        "verifier": f"{tmp_path / 'reward.py'}:compute_score",
        "params": {
            "path": str(tmp_path / "train.parquet"),
            "fields": {"prompt": "prompt", "answer": "reward_model.ground_truth"},
            "split_by": "data_source",
            **params,
        },
    }


def test_verl_parquet_split_by_data_source_heldout_and_file_verifier(data):
    tmp_path, rows = data
    s = CurriculumScheduler(distributions=[_mix(tmp_path)], curriculum="uniform", eval_size=2, seed=0)
    assert s.curriculum.names == ["mix/lighteval/MATH", "mix/openai/gsm8k"]
    held = s.eval_rows()
    by_prompt = {r["prompt"][1]["content"]: r for r in rows}
    for name, count in [("mix/openai/gsm8k", 7), ("mix/lighteval/MATH", 5)]:
        source = name.removeprefix("mix/")
        train = s.distributions[name].train_rows
        assert len(held[name]) == 2 and len(train) == count - 2
        assert not {r["prompt"][1]["content"] for r in held[name]} & {r["prompt"][1]["content"] for r in train}
        for row in held[name] + train:
            original = by_prompt[row["prompt"][1]["content"]]
            assert row["prompt"] == original["prompt"] and row["answer"] == original["reward_model"]["ground_truth"]
            assert row["data_source"] == source and row["extra_info"] == original["extra_info"]
    batch = s.next_batch(0, 12)
    assert {item["distribution"] for item in batch} <= set(s.curriculum.names)
    heldout_prompts = {r["prompt"][1]["content"] for rs in held.values() for r in rs}
    for item in batch:
        assert isinstance(item["prompt"], list) and item["prompt"][1]["content"] not in heldout_prompts
        assert verify(item["verifier"], item["answer"], item["answer"], row=item) == 3.0
        assert verify(item["verifier"], "wrong", item["answer"], row=item) == -1.0
    cut = CurriculumScheduler(distributions=[_mix(tmp_path)], train_size=3, eval_size=2, seed=0)
    assert [len(d.train_rows) for d in cut.distributions.values()] == [3, 3]
    assert cut.notes == [
        "distribution 'mix/openai/gsm8k': data.train_size=3 trains on 3 of its 5 rows"
    ]  # MATH has exactly 3
    assert s.notes == []


def test_where_and_split_on_pandas_rows_with_numpy_arrays(data):
    tmp_path, _ = data
    record = pd.read_parquet(tmp_path / "train.parquet").to_dict("records")[0]
    assert isinstance(record["prompt"], np.ndarray)  # what pandas gives for list columns
    row = plain(record)
    assert row["prompt"][1]["role"] == "user" and row["extra_info"]["tags"] == ["x", "openai/gsm8k"]
    s = CurriculumScheduler([_mix(tmp_path, where={"extra_info.tags": ["x", "openai/gsm8k"]})], eval_size=1)
    assert s.curriculum.names == ["mix/openai/gsm8k"]


def test_plugin_source_returning_pandas_rows(tmp_path):
    (tmp_path / "gen.py").write_text(
        textwrap.dedent("""
        import numpy as np
        def rows(wanted, rng, n=4):
            return [
                {"prompt": np.array([{"role": "user", "content": f"q{i}"}], dtype=object), "answer": np.int64(i)}
                for i in range(n)
            ]
    """)
    )
    s = CurriculumScheduler(
        [{"name": "g", "source": f"{tmp_path / 'gen.py'}:rows", "params": {"n": 5}, "verifier": "numeric"}], eval_size=1
    )
    item = s.next_batch(0, 1)[0]
    assert item["prompt"][0]["role"] == "user" and isinstance(item["answer"], int)


def test_chat_prompts_budget_template_and_system_prompt(data):
    tmp_path, _ = data
    s = CurriculumScheduler(
        [_mix(tmp_path)],
        budget={"kind": "constant", "budget": 9},
        budget_prompt="{prompt} (<= {budget} tokens)",
        eval_size=1,
    )
    item = s.next_batch(0, 1)[0]
    assert item["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert item["prompt"][1]["content"].endswith("? (<= 9 tokens)")
    assert chat_messages(item["prompt"], "Ignored: the row has a system message") == item["prompt"]
    assert chat_messages([item["prompt"][1]], "Sys") == [{"role": "system", "content": "Sys"}, item["prompt"][1]]
    assert chat_messages("plain", "") == [{"role": "user", "content": "plain"}]


def test_token_ids_for_vllm_are_the_chat_template_of_the_messages(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    worker = RolloutWorker.__new__(RolloutWorker)  # encode() without starting vLLM
    worker.tokenizer = tokenizer
    messages = [
        {"role": "system", "content": "a"},
        {"role": "user", "content": "What is 1 + 2 ?"},
        {"role": "assistant", "content": "3"},
        {"role": "user", "content": "and 2 + 2 ?"},
    ]
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    expected = list(expected["input_ids"] if hasattr(expected, "keys") else expected)
    assert worker.encode(messages, system_prompt="not used") == expected
    assert tokenizer.decode(expected).count("<|user|>") == 2


def test_dict_verifier_extras_acc_and_threshold(data):
    tmp_path, _ = data
    spec = f"{tmp_path / 'reward.py'}:compute_score"
    row = {"data_source": "openai/gsm8k", "extra_info": {"index": 4}}
    terms = score(spec, "g-4", "g-4", 10, None, RewardWeights(correct=1.0, format=0.5), row=row)
    assert terms["score"] == 3.0 and terms["correct"] == 1.0 and terms["reward"] == 3.0
    assert terms["reward_extra"] == {"acc": 1.0, "index": 4.0, "from_gsm8k": 1.0}
    wrong = score(spec, "nope", "g-4", 10, None, RewardWeights(), row=row, threshold=-5.0)
    assert wrong["score"] == -1.0 and wrong["correct"] == 0.0  # acc decides, not the threshold
    samples = [Sample(tokens=[1], **terms), Sample(tokens=[1, 2], **wrong)]
    metrics = batch_metrics([Group(Item("openai/gsm8k", "q", "g-4", spec), [], samples, 0)])
    assert metrics["accuracy"] == 0.5 and metrics["score/mean"] == 1.0
    assert (
        metrics["reward_extra/acc"] == 0.5
        and metrics["reward_extra/from_gsm8k"] == 1.0
        and "reward_extra/pred" not in metrics
    )
    half = f"{tmp_path / 'reward.py'}:half"
    assert judge(half, "x", "y", threshold=0.5).correct and not judge(half, "x", "y").correct


def test_raising_and_hanging_file_verifiers_are_counted(data):
    tmp_path, _ = data
    broken = score(f"{tmp_path / 'reward.py'}:broken", "x", "1", 3, None, RewardWeights())
    assert (
        broken["verify_error"] == 1.0 and broken["reward"] == 0.0
    )  # a ValueError in a reward file is an error, not a wrong answer
    hung = judge(f"{tmp_path / 'reward.py'}:hangs", "x", "1", timeout=0.5)
    assert (hung.score, hung.status) == (0.0, "timeout")
    assert judge(f"{tmp_path / 'reward.py'}:half", "x", "1").score == 0.5  # the killed process was replaced
    assert judge(f"{tmp_path / 'nope.py'}:f", "x", "1").status == "error"


CURRICULUM = """
from gradus.curriculum.bandits import Curriculum

class Hardest(Curriculum):
    def probabilities(self):
        return {n: float(n == self.names[-1]) for n in self.names}

class NoProbabilities(Curriculum):
    pass
"""


def test_curriculum_plugin_and_broken_plugins(data):
    tmp_path, _ = data
    (tmp_path / "cur.py").write_text(CURRICULUM)
    s = CurriculumScheduler([_mix(tmp_path)], curriculum=f"{tmp_path / 'cur.py'}:Hardest", eval_size=1)
    assert {item["distribution"] for item in s.next_batch(0, 5)} == {"mix/openai/gsm8k"}
    with pytest.raises(ValueError, match="does not fit: missing method probabilities"):
        make_curriculum(f"{tmp_path / 'cur.py'}:NoProbabilities", ["a"])
    with pytest.raises(ValueError, match=r"defines no 'Hardset' \(did you mean 'Hardest'\?\)"):
        make_curriculum(f"{tmp_path / 'cur.py'}:Hardset", ["a"])
    with pytest.raises(ValueError, match=f"file {tmp_path / 'gone.py'} does not exist"):
        make_curriculum(f"{tmp_path / 'gone.py'}:X", ["a"])


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(
        TypeError,
        match=(
            r"^curriculum 'ucb': unknown parameter 'cc' \(did you mean 'c'\?\); "
            r"valid parameters: c, window, temperature$"
        ),
    ):
        make_curriculum("ucb", ["a"], cc=1.0)
    with pytest.raises(TypeError, match=r"filter 'accuracy_band': unknown parameter 'hi'.*valid parameters: low, high"):
        make_filter("accuracy_band", hi=0.5)
    with pytest.raises(
        TypeError,
        match=(
            r"budget schedule 'exponential': missing parameter 'decay', 'every'; "
            r"valid parameters: initial, decay, every, minimum"
        ),
    ):
        make_budget_schedule("exponential", initial=5)
    with pytest.raises(
        TypeError, match=r"unknown parameter 'digit' \(did you mean 'digits'\?\); valid parameters: digits, ops"
    ):
        SOURCES.build("arithmetic", 3, np.random.default_rng(0), digit=2)


def _config(tmp_path, dist_overrides="", extra=""):
    path = tmp_path / "run.yaml"
    path.write_text(
        textwrap.dedent(f"""
        model: {{path: {tmp_path / "no-model"}}}
        run: {{run_dir: {tmp_path / "run"}}}
        data:
          eval_size: 1
          distributions:
            - name: mix
              source: file
              params: {{path: train.parquet, fields: {{prompt: prompt, answer: reward_model.ground_truth}}, \
split_by: data_source}}
              verifier: reward.py:compute_score
              {dist_overrides}
        {extra}
    """)
    )
    return path


@pytest.mark.parametrize(
    "dist, extra, args, message",
    [
        (
            "",
            "",
            ["data.distributions.0.verifier=missing.py:compute_score"],
            "verifier 'TMP/missing.py:compute_score': file TMP/missing.py does not exist",
        ),
        (
            "",
            "",
            ["data.distributions.0.verifier=reward.py:logic_rl"],
            "takes (solution_str, ground_truth), not verl's compute_score",
        ),
        (
            "",
            "",
            ["data.distributions.0.params.fields.prompt=extra_info.index"],
            "train.parquet: row 1 field 'extra_info.index' (prompt) is int 0",
        ),
        (
            "",
            "",
            ["data.distributions.0.params.fields.answer=reward_model.truth"],
            "train.parquet: row 1 has no field 'reward_model.truth'",
        ),
        (
            "",
            "curriculum: {kind: fixed, params: {weights: {mix/openai/gsm8K: 1}}}",
            [],
            (
                "fixed curriculum weights name unknown distributions ['mix/openai/gsm8K'] "
                "(did you mean 'mix/openai/gsm8k'?)"
            ),
        ),
        (
            "",
            "",
            ["curriculum.kind=ucb", "curriculum.params={c: 1, windw: 3}"],
            "unknown parameter 'windw' (did you mean 'window'?)",
        ),
        (
            "",
            "",
            ["data.distributions.0.params.split_byy=data_source"],
            "unknown parameter 'split_byy' (did you mean 'split_by'?); valid parameters: path, fields, where, split_by",
        ),
        ("", "", ["data.train_size=0"], "data.train_size: must be >= 1 or null"),
        (
            "",
            "",
            ["data.distributions.0.params.fields={promt: prompt}"],
            "fields.promt is not a row field (did you mean 'prompt'?)",
        ),
    ],
)
def test_bad_inputs_one_line_exit_2(data, monkeypatch, capsys, dist, extra, args, message):
    tmp_path, _ = data
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the launch directory
    assert cli(["train", str(_config(tmp_path, dist, extra)), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("gradus: error: ") and message.replace("TMP", str(tmp_path)) in lines[0]
    ), lines


def test_relative_paths_resolved_against_launch_dir(data, monkeypatch):
    from gradus.launch.config.load import load_config

    tmp_path, _ = data
    monkeypatch.chdir(tmp_path)
    cfg = load_config(_config(tmp_path), ["curriculum.kind=uniform", "curriculum.params={}"])
    assert cfg.data.distributions[0].verifier == f"{tmp_path}/reward.py:compute_score"
    assert cfg.data.distributions[0].params["path"] == f"{tmp_path}/train.parquet"


def test_metric_keys_with_slashes_in_names(tmp_path):
    step = {
        "dist/mix/openai/gsm8k/prob": 0.25,
        "dist/mix/openai/gsm8k/accuracy": 0.5,
        "dist/add1/prob": 0.75,
        "dist/add1/accuracy": 1.0,
        "reward/mean": 0.1,
        "accuracy": 0.9,
        "perf/gen_tokens_per_s": 10.0,
        "time/step": 1.0,
    }
    assert distributions([step]) == ["add1", "mix/openai/gsm8k"]
    logger = MetricsLogger.__new__(MetricsLogger)
    logger.total_steps = 2
    assert "[mix/openai/gsm8k=0.50@0.25 add1=1.00@0.75]" in logger.progress_line(0, step)


def test_gradus_data_kk_parquet_trains_through_split_by(tmp_path, capsys):
    assert cli(["data", "kk", "--people", "3", "4", "--rows", "6", "--out", str(tmp_path / "kk.parquet")]) == 0
    assert "wrote 12 rows" in capsys.readouterr().out
    spec = {
        "name": "kk",
        "source": "file",
        "verifier": "kk",
        "params": {
            "path": str(tmp_path / "kk.parquet"),
            "fields": {"prompt": "prompt", "answer": "reward_model.ground_truth"},
            "split_by": "data_source",
        },
    }
    s = CurriculumScheduler([spec], curriculum="ucb", eval_size=2)
    assert s.curriculum.names == ["kk/kk_3ppl", "kk/kk_4ppl"]
    for item in s.next_batch(0, 4):
        roles = json.loads(item["answer"])
        text = ", ".join(f"{name} is a {role}" for name, role in roles.items())
        assert verify("kk", f"<answer>{text}</answer>", item["answer"], row=item) == 1.0
        assert item["extra_info"]["people"] == len(roles) and item["prompt"][0]["role"] == "user"
    assert cli(["data", "kk", "--people", "9", "--out", str(tmp_path / "x.parquet")]) == 2
