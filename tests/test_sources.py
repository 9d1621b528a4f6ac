import json

import numpy as np
import pytest

from gradus.curriculum.sources import SOURCES, Distribution
from gradus.rollout.rewards import verify


def test_countdown_rows_are_solvable_and_scale():
    rows = SOURCES.build("countdown", 20, np.random.default_rng(0), numbers=4)
    assert len(rows) == 20
    for row in rows:
        assert len(row["answer"]["numbers"]) == 4 and 0 < row["answer"]["target"] <= 1000
        assert str(row["answer"]["target"]) in row["prompt"]


def test_kk_rows_have_unique_solution_that_verifies():
    rows = SOURCES.build("kk", 10, np.random.default_rng(1), people=3)
    for row in rows:
        assert set(row["answer"]) == {"Alice", "Bob", "Carol"}
        text = ", ".join(f"{name} is a {role}" for name, role in row["answer"].items())
        assert verify("kk", f"<answer>{text}</answer>", row["answer"]) == 1.0


def _write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_jsonl_with_field_mapping_and_where(tmp_path):
    data = tmp_path / "d.jsonl"
    _write_jsonl(data, [{"q": f"What is {i}?", "a": i, "level": i % 2} for i in range(40)])
    d = Distribution(
        "odd",
        "file",
        {"path": str(data), "fields": {"prompt": "q", "answer": "a"}, "where": {"level": 1}},
        "numeric",
        100,
        5,
        seed=0,
    )
    assert len(d.eval_rows) == 5 and len(d.train_rows) == 15
    assert all(int(r["answer"]) % 2 == 1 for r in d.eval_rows + d.train_rows)
    again = Distribution(
        "odd",
        "file",
        {"path": str(data), "fields": {"prompt": "q", "answer": "a"}, "where": {"level": 1}},
        "numeric",
        100,
        5,
        seed=0,
    )
    assert again.eval_rows == d.eval_rows


def test_parquet_and_hf_dir(tmp_path):
    import datasets

    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(12)]
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "hf"))
    for path in (tmp_path / "d.parquet", tmp_path / "hf"):
        d = Distribution("x", "file", {"path": str(path)}, "numeric", 100, 2, seed=0)
        assert sorted(r["prompt"] for r in d.eval_rows + d.train_rows) == sorted(r["prompt"] for r in rows)


def test_missing_field_names_file_row_and_field(tmp_path):
    data = tmp_path / "d.jsonl"
    _write_jsonl(data, [{"prompt": "a", "answer": 1}, {"prompt": "b"}])
    with pytest.raises(ValueError, match=r"d.jsonl: row 2 has no field 'answer'"):
        Distribution("x", "file", {"path": str(data)}, "numeric", 10, 0, seed=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl: line 2 is not valid JSON"):
        Distribution("x", "file", {"path": str(bad)}, "numeric", 10, 0, seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        Distribution("x", "file", {"path": str(tmp_path / "nope.jsonl")}, "numeric", 10, 0, seed=0)


@pytest.mark.parametrize(
    "source,params,verifier",
    [("arithmetic", {"digits": 2}, "numeric"), ("countdown", {}, "countdown"), ("kk", {"people": 3}, "kk")],
)
def test_corrupt_changes_only_answers_and_follows_the_seed(source, params, verifier):
    from gradus.curriculum.scheduler import CurriculumScheduler

    def rows(corrupt: float, seed: int = 3) -> list[dict]:
        spec = {"name": "d", "source": source, "params": {**params, "corrupt": corrupt}, "verifier": verifier}
        s = CurriculumScheduler([spec], train_size=90, eval_size=10, seed=seed)
        return s.distributions["d"].train_rows + s.distributions["d"].eval_rows

    clean, noisy = rows(0), rows(0.3)
    assert [r["prompt"] for r in clean] == [r["prompt"] for r in noisy]  # the rows and their order
    changed = [i for i, (a, b) in enumerate(zip(clean, noisy)) if a["answer"] != b["answer"]]
    assert len(changed) == 30  # 0.3 of 100 rows
    assert rows(0.3) == noisy  # the same rows in every run with that seed; another seed picks others
    assert [
        i for i, (a, b) in enumerate(zip(rows(0, seed=4), rows(0.3, seed=4))) if a["answer"] != b["answer"]
    ] != changed
    if source == "arithmetic":  # the clean answer now scores 0 against the corrupted label
        assert all(
            verify(verifier, f"<answer>{clean[i]['answer']}</answer>", noisy[i]["answer"]) == 0.0 for i in changed
        )
    with pytest.raises(ValueError, match="corrupt must be a fraction"):
        rows(1.5)


def test_a_distribution_holds_out_its_own_eval_size():
    from gradus.curriculum.scheduler import CurriculumScheduler

    small = {"name": "add1", "source": "arithmetic", "params": {"digits": 1}, "verifier": "numeric", "eval_size": 50}
    large = {"name": "add2", "source": "arithmetic", "params": {"digits": 2}, "verifier": "numeric"}
    s = CurriculumScheduler([small, large], eval_size=96, seed=0)
    add1, add2 = s.distributions["add1"], s.distributions["add2"]
    assert (len(add1.eval_rows), len(add1.train_rows)) == (50, 50)  # 1-digit sums: 100 distinct rows in all
    assert (len(add2.eval_rows), len(add2.train_rows)) == (96, 2000)
    assert {r["prompt"] for r in add1.eval_rows}.isdisjoint(r["prompt"] for r in add1.train_rows)
    assert [len(v) for v in s.eval_rows().values()] == [50, 96]
    with pytest.raises(ValueError, match="only 100 distinct rows, need more than eval_size=100"):
        CurriculumScheduler([{**small, "eval_size": 100}], seed=0)
