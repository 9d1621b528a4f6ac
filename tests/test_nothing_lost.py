"""Nothing lost, nothing silent (no Ray, no model): checkpoints that verify
themselves, run directories that a rejected command never touches, resumes that
say what they change, user-code failures that reach the console, verifiers
that end within their deadline."""

import json
import math
import os
import time
from pathlib import Path

import pytest

from gradus.curriculum import registry
from gradus.curriculum.items import Item
from gradus.launch.config.load import load_config
from gradus.launch.config.schema import to_dict
from gradus.launch.errors import GradusError
from gradus.launch.run import checkpoint_dirs as ckpt
from gradus.launch.run.rundir import prepare_run_dir, truncate_metrics
from gradus.launch.run.user_errors import UserErrors
from gradus.rollout.file_reward import HOST, normalise
from gradus.rollout.records import Group, Sample
from gradus.rollout.rewards import judge, verify

DEFAULT = "configs/default.yaml"


def _checkpoint(run_dir: Path, step: int, payload: bytes = b"weights") -> Path:
    staging = ckpt.staging_dir(run_dir, step)
    (staging / "trainer").mkdir()
    (staging / "trainer" / "weights.safetensors").write_bytes(payload * 100)
    return ckpt.commit(staging, {"step": step, "version": step + 1}, keep=5)


def test_checkpoints_carry_a_manifest_and_broken_ones_are_skipped(tmp_path, capsys):
    first, second = _checkpoint(tmp_path, 1), _checkpoint(tmp_path, 3)
    manifest = json.loads((second / ckpt.MANIFEST).read_text())
    assert set(manifest) == {"state.json", "trainer/weights.safetensors"}
    assert ckpt.broken(second) is None and ckpt.resolve(tmp_path, "latest") == second
    weights = second / "trainer" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # torn by a crash
    assert "has 690 bytes, the manifest says 700" in ckpt.broken(second)
    assert ckpt.resolve(tmp_path, "latest") == first  # the newest *valid* one, the broken one named
    assert f"checkpoint {second} is broken" in capsys.readouterr().out
    with pytest.raises(GradusError, match="the checkpoint is broken .*; pass an earlier checkpoint"):
        ckpt.resolve(tmp_path, str(second))
    (first / "state.json").write_text('{"step": 1, "vers')  # truncated
    with pytest.raises(GradusError, match="holds no complete checkpoint"):
        ckpt.resolve(tmp_path, "latest")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    previous = _checkpoint(tmp_path, 1)
    staging = ckpt.staging_dir(tmp_path, 2)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.json, "dumps", full_disk)
    with pytest.raises(GradusError, match="writing checkpoint step-000002 failed .No space left on device.*intact"):
        ckpt.commit(staging, {"step": 2}, keep=1)
    monkeypatch.undo()
    assert not staging.exists() and ckpt.complete(tmp_path) == [previous] and ckpt.broken(previous) is None


def test_overwrite_sets_old_checkpoints_aside_and_leftovers_are_removed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = load_config(DEFAULT, [f"run.run_dir={run_dir}"])
    old = _checkpoint(run_dir, 4)
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    with pytest.raises(GradusError, match="already holds a run; pass --overwrite"):
        prepare_run_dir(cfg)
    prepare_run_dir(cfg, overwrite=True)
    out = capsys.readouterr().out
    assert f"moved to {run_dir / 'overwritten-1' / 'checkpoints'}" in out
    assert not old.exists() and ckpt.complete(run_dir) == []
    assert (run_dir / "overwritten-1" / "checkpoints" / old.name / "state.json").is_file()
    assert ckpt.resolve_auto(run_dir, False) == (None, True)  # --resume auto never continues the old run
    _checkpoint(run_dir, 2)  # checkpoints but no metrics: still an earlier run
    with pytest.raises(GradusError, match="already holds a run"):
        prepare_run_dir(cfg)
    half = ckpt.staging_dir(run_dir, 6)  # a save killed midway
    prepare_run_dir(cfg, resume=True)
    assert (
        not half.exists() and f"removed {half}, a checkpoint a killed save left half-written" in capsys.readouterr().out
    )


def test_run_dir_that_is_a_file_or_read_only_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(GradusError, match="is a file, not a directory"):
        prepare_run_dir(load_config(DEFAULT, [f"run.run_dir={tmp_path / 'file'}"]))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    with pytest.raises(GradusError, match="checkpoints is a file"):
        prepare_run_dir(load_config(DEFAULT, [f"run.run_dir={tmp_path / 'run'}"]))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(GradusError, match="is not writable"):
            prepare_run_dir(load_config(DEFAULT, [f"run.run_dir={locked / 'run'}"]))


def test_a_rejected_resume_touches_nothing(tmp_path, tiny_model):
    from gradus.launch.run.driver import Run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, text in [("metrics.jsonl", '{"step": 0}\n'), ("done.json", "{}"), ("config.yaml", "original")]:
        (run_dir / name).write_text(text)
    cfg = load_config(DEFAULT, [f"run.run_dir={run_dir}", f"model.path={tiny_model}"])
    with pytest.raises(GradusError, match="--resume typo: not a complete checkpoint"):
        Run(cfg, resume="typo")
    assert (run_dir / "done.json").read_text() == "{}" and (run_dir / "config.yaml").read_text() == "original"


def test_torn_metrics_line_is_dropped(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"st')
    truncate_metrics(path, 1)
    assert path.read_text() == '{"step": 0}\n{"step": 1}\n' and "line 4 is torn" in capsys.readouterr().out


def test_what_a_resume_may_change():
    saved = to_dict(load_config(DEFAULT))
    changes = ckpt.config_changes(saved, to_dict(load_config(DEFAULT, ["trainer.lr=1e-4", "run.steps=20"])))
    assert [(k, new) for k, _, new in changes] == [("run.steps", 20), ("trainer.lr", 1e-4)]
    assert {k for k, _, _ in changes if k in ckpt.APPLIED} == {"trainer.lr"}
    for override, key in [
        ("rollout.group_size=8", "rollout.group_size"),
        ("curriculum.params.c=2.0", "curriculum.bandit.c"),
        ("data.distributions.0.params.digits=5", "data.distributions"),
    ]:
        with pytest.raises(GradusError, match=f"a resume cannot change .*{key}"):
            ckpt.config_changes(saved, to_dict(load_config(DEFAULT, [override])))
    assert ckpt.config_changes(None, saved) == []  # a checkpoint from before configs were stored


def test_non_finite_reward_values_are_errors(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        normalise({"score": 1.0, "acc": math.nan})
    (tmp_path / "r.py").write_text(
        "def nan_acc(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return {'score': 1.0, 'acc': float('nan')}\n"
    )
    verdict = judge(f"{tmp_path / 'r.py'}:nan_acc", "x", "1")
    assert verdict.status == "error" and not verdict.correct and "non-finite" in verdict.message


def test_reward_process_gets_no_secrets(tmp_path, monkeypatch):
    (tmp_path / "r.py").write_text(
        "import os\ndef leaks(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    return float('MY_API_KEY' in os.environ) + 2 * float('MY_SETTING' in os.environ)\n"
    )
    HOST._kill()  # a fresh reward process, started with this environment
    monkeypatch.setenv("MY_API_KEY", "secret")
    monkeypatch.setenv("MY_SETTING", "plain")
    assert verify(f"{tmp_path / 'r.py'}:leaks", "x", "1") == 2.0
    HOST._kill()


@pytest.mark.parametrize(
    "body,message",
    [
        ("import sys\nsys.exit(0)\n", "failed: SystemExit: 0"),
        ("import time\ntime.sleep(30)\n", "did not finish within 0.5 s"),
        ("raise RuntimeError('boom')\n", "failed: RuntimeError: boom"),
    ],
)
def test_plugin_imports_fail_in_one_line_within_a_deadline(tmp_path, monkeypatch, body, message):
    monkeypatch.setattr(registry, "IMPORT_TIMEOUT_S", 0.5)
    (tmp_path / "plugin.py").write_text(body + "def fn(): pass\n")
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"plugin .*importing {tmp_path / 'plugin.py'} {message}"):
        registry.load_plugin(f"{tmp_path / 'plugin.py'}:fn")
    assert time.monotonic() - start < 5


def test_cli_turns_a_plugin_that_exits_into_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "cur.py").write_text("import sys\nsys.exit(0)\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradus.launch.cli",
            "train",
            DEFAULT,
            f"run.run_dir={tmp_path / 'run'}",
            f"curriculum.kind={tmp_path / 'cur.py'}:Cur",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "importing" in proc.stderr and "SystemExit" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text", ["9^{9^{7}}", "9^{9^{9^{9}}}", "9**9**9", "(9)^{9^7}", "123456!"])
def test_math_verifier_refuses_huge_results_within_its_deadline(text):
    start = time.monotonic()
    assert verify("math", f"<answer>{text}</answer>", "1") == 0.0
    assert time.monotonic() - start < 1.0
    assert verify("math", "<answer>2^{10}</answer>", "1024") == 1.0  # small powers are still evaluated


def _group(messages: list[str | None], errors: list[bool], row: int = 7) -> Group:
    samples = [Sample(verify_error=float(e), verify_message=m) for m, e in zip(messages, errors)]
    return Group(Item("add1", "q", "1", "r.py:f", row_id=row), [], samples, 0)


def test_user_code_failures_reach_the_console_and_errors_log(tmp_path, capsys):
    errors = UserErrors(tmp_path, max_frac=0.5)
    errors.check(0, [_group(["reward function r.py:f: KeyError: 'x'", None], [True, False])])
    errors.check(1, [_group(["reward function r.py:f: KeyError: 'x'", None], [True, False], row=9)])  # a repeat
    out = capsys.readouterr().out
    assert out.count("KeyError") == 1 and "step 1: distribution add1 row 7: reward function r.py:f: KeyError" in out
    assert (
        tmp_path / "errors.log"
    ).read_text() == "step 1: distribution add1 row 7: reward function r.py:f: KeyError: 'x'\n"
    with pytest.raises(GradusError, match=r"step 3: 3 of 4 verifications failed, more than reward.max_error_frac=0.5"):
        errors.check(2, [_group(["boom"] * 3 + [None], [True, True, True, False])])


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.eval_size=-1", "data.eval_size: must be >= 0"),
        ("curriculum.max_refill_rounds=-1", "curriculum.max_refill_rounds: must be >= 0"),
        ("trainer.lr=0", "trainer.lr: must be > 0"),
        ("rollout.top_p=1.5", r"rollout.top_p: must be in \(0, 1\]"),
        ("rollout.top_p=0", r"rollout.top_p: must be in \(0, 1\]"),
        ("reward.max_error_frac=2", "reward.max_error_frac: must be between 0 and 1"),
    ],
)
def test_more_settings_refused_before_anything_starts(override, message):
    with pytest.raises(GradusError, match=message):
        load_config(DEFAULT, [override])


def test_lora_dropout_with_several_updates_is_refused():
    with pytest.raises(GradusError, match="dropout .train-mode. forward with dropout-free old log-probs"):
        load_config(DEFAULT, ["trainer.lora={rank: 4, dropout: 0.1}", "trainer.ppo_epochs=2"])
    load_config(DEFAULT, ["trainer.lora={rank: 4, dropout: 0.1}"])  # one update per batch: the same forward


def test_null_answers_and_empty_data_dirs_are_refused(tmp_path):
    from gradus.curriculum.scheduler import CurriculumScheduler

    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": null}\n')
    (tmp_path / "empty").mkdir()
    for path, message in [
        (tmp_path / "rows.jsonl", "row 2 has a null answer"),
        (tmp_path / "empty", "is an empty directory"),
    ]:
        spec = {"name": "d", "source": "file", "params": {"path": str(path)}, "verifier": "numeric"}
        with pytest.raises(ValueError, match=message):
            CurriculumScheduler([spec])


def test_submit_never_uploads_secrets_or_ignored_files(tmp_path, monkeypatch):
    import json as _json

    from gradus.launch.cluster.submit import job_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.yaml").write_text(
        Path(__file__).resolve().parents[1].joinpath(DEFAULT).read_text()
    )
    (tmp_path / ".gitignore").write_text("# comment\nbig_data/\n*.ckpt\n")
    command = job_command("configs/default.yaml", [], "http://head:8265")
    excludes = _json.loads(next(w for w in command if w.startswith("--runtime-env-json=")).split("=", 1)[1])["excludes"]
    assert {".env", "*.pem", ".ssh/", "big_data/", "*.ckpt", "runs/"} <= set(excludes) and "# comment" not in excludes


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, tiny_model, capsys):
    """Resuming step 1 while step 3 exists (another line of the run): step 3 is moved
    where no restart looks, so it neither gets resumed later nor counts against keep."""
    from gradus.launch.run.driver import Run

    run_dir = tmp_path / "run"
    older, newer = _checkpoint(run_dir, 1), _checkpoint(run_dir, 3)
    (run_dir / "metrics.jsonl").write_text('{"step": 0}\n')
    Run(load_config(DEFAULT, [f"run.run_dir={run_dir}", f"model.path={tiny_model}"]), resume=str(older))
    assert ckpt.complete(run_dir) == [older] and not newer.exists()
    assert (run_dir / "overwritten-1" / "checkpoints" / newer.name / "state.json").is_file()
    assert f"checkpoints after {older.name} moved to" in capsys.readouterr().out


def test_checkpoint_rng_round_trip_includes_the_cuda_generator(monkeypatch):
    """A rank's RNG file restores python, numpy, torch and (on CUDA) the device
    generator; a GPU checkpoint resumed on CPU skips the latter. CUDA is faked."""
    import random

    import numpy as np
    import torch

    from gradus.trainer import engine_checkpoint

    device = {"state": torch.arange(16, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: device["state"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t: device.update(state=t))
    saved = json.loads(json.dumps(engine_checkpoint.rng_state()))
    draws = (random.random(), float(np.random.rand()), torch.rand(1).item())
    device["state"] = torch.zeros(16, dtype=torch.uint8)
    engine_checkpoint.set_rng_state(saved)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == draws
    assert device["state"].tolist() == list(range(16))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device["state"] = torch.zeros(16, dtype=torch.uint8)
    engine_checkpoint.set_rng_state(saved)
    assert device["state"].tolist() == [0] * 16 and (random.random(), float(np.random.rand())) == draws[:2]
