import re
import subprocess
import sys

import pytest

from gradus.launch.config.load import load_config
from gradus.launch.errors import GradusError

DEFAULT = "configs/default.yaml"


def test_default_preset_and_overrides():
    cfg = load_config(DEFAULT, ["trainer.lr=1e-6", "rollout.group_size=4", "data.distributions.1.params.digits=4"])
    assert cfg.trainer.lr == 1e-6 and isinstance(cfg.trainer.lr, float)
    assert cfg.rollout.group_size == 4
    assert [d.name for d in cfg.data.distributions] == ["add1", "add2", "add3"]
    assert cfg.data.distributions[1].params == {"digits": 4}
    assert cfg.wandb.mode == "offline"


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(GradusError, match=r"unknown config key 'trainer.lrr' \(did you mean 'lr'\?\)"):
        load_config(DEFAULT, ["trainer.lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  group_sise: 4\n")
    with pytest.raises(GradusError, match="rollout.group_sise.*group_size"):
        load_config(bad)


def test_bad_values():
    with pytest.raises(GradusError, match="trainer.lr: expected a number, got 'fast'"):
        load_config(DEFAULT, ["trainer.lr=fast"])
    with pytest.raises(GradusError, match="rollout.group_size: expected an integer"):
        load_config(DEFAULT, ["rollout.group_size=2.5"])
    with pytest.raises(GradusError, match="curriculum.kind.*did you mean 'ucb'"):
        load_config(DEFAULT, ["curriculum.kind=ucbb"])
    with pytest.raises(GradusError, match="must be >= 1"):
        load_config(DEFAULT, ["rollout.group_size=0"])
    with pytest.raises(GradusError, match="distributions"):
        load_config(None)
    with pytest.raises(GradusError, match="run.preempt_signal: 'SIGKILL' is not one of"):
        load_config(DEFAULT, ["run.preempt_signal=SIGKILL"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rollout.group_size=1"], "use rollout.group_size >= 2"),
        (["rollout.temperature=0"], "rollout.temperature=0.0: greedy training samples"),
        (
            ["data.distributions.0.source=kk", "data.distributions.0.params={people: 3}"],
            "verifier 'numeric' cannot score 'kk' answers",
        ),
        (["trainer.scale_rewards=batchh"], "did you mean 'batch'"),
        (["trainer.estimator=rloo", "trainer.scale_rewards=batch"], "applies to estimator grpo only"),
        (["trainer.clip_ratio_c=0.5"], "dual-clip bound must be > 1"),
        (
            ["trainer.importance.on=all", "trainer.old_logprobs=rollout", "trainer.ppo_epochs=2"],
            "which is 1 with trainer.old_logprobs=rollout",
        ),
        (["trainer.importance.mode=clip"], "trainer.importance.mode: unknown value 'clip'"),
        (["eval.samples=4"], "greedy samples are identical"),
        (["eval.samples=4", "eval.temperature=1.0", "eval.k=[1, 8]"], "pass@k needs 1 <= k <= eval.samples=4, got [8]"),
        (
            ["curriculum.prompts={kind: pass_rate, retire: 3}"],
            "curriculum.prompts: prompt sampler 'pass_rate': unknown parameter 'retire'",
        ),
        (
            ["curriculum.params={c: 1.0, windw: 3}"],
            "curriculum.params: curriculum 'ucb': unknown parameter 'windw' (did you mean 'window'?)",
        ),
        (["eval.every=5", "data.eval_size=0"], "needs held-out rows"),
        (
            ["data.distributions=[{name: a, eval_size: -2}]"],
            "data.distributions.0.eval_size (a): must be >= 0, got -2",
        ),
        (  # pass_rate's old default decay: 8 samples of evidence give P(p >= 0.9) <= 0.61, so no row retires
            ["curriculum.prompts={kind: pass_rate, decay: 0.5}"],
            "pass_rate with decay=0.5 keeps at most 8.0 samples of a row's evidence (groups of 4), short of the 20.9",
        ),
        (["curriculum.prompts={kind: pass_rate, decay: 0.2}"], "Use decay <= 0.192"),
        (["rollout.group_rule={min: 2, max: 8, kind: cures}"], "kind: greedy, the one rule, may be named"),
    ],
)
def test_settings_that_cannot_learn_are_refused(overrides, message):
    with pytest.raises(GradusError, match=re.escape(message)):
        load_config(DEFAULT, overrides)


def test_settings_at_the_edge_are_accepted():
    load_config(DEFAULT, ["curriculum.prompts={kind: pass_rate, decay: 0.19}"])  # 4 / 0.19 = 21.1 > 20.9 samples
    load_config(DEFAULT, ["curriculum.prompts={kind: pass_rate, decay: 0.5}", "rollout.group_rule={min: 2, max: 16}"])
    load_config(DEFAULT, ["rollout.group_rule={min: 2, max: 8, kind: greedy}"])


def test_renamed_importance_cap_still_works(capsys):
    cfg = load_config(DEFAULT, ["trainer.importance_cap=3.5"])
    assert cfg.trainer.importance.cap == 3.5 and cfg.trainer.importance_cap is None
    assert "trainer.importance.cap" in capsys.readouterr().out
    explicit = load_config(DEFAULT, ["trainer.importance_cap=3.5", "trainer.importance.cap=1.5"])  # the new name wins
    assert explicit.trainer.importance.cap == 1.5
    gspo = load_config(
        DEFAULT, ["trainer.ratio_level=sequence", "eval.samples=4", "eval.temperature=1", "eval.k=[1,4]"]
    )
    assert gspo.eval.k == [1, 4] and gspo.trainer.clip_low is None  # resolved by trainer.grpo.loss_options


def _cli(*args, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "gradus.launch.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    return proc.returncode, proc.stderr.strip().splitlines()


@pytest.mark.parametrize(
    "args,message",
    [
        (["model.path=/nonexistent/model"], "model.path: /nonexistent/model does not exist"),
        (["trainer.lrr=1"], "did you mean 'lr'"),
        (["rollout.group_size=many"], "rollout.group_size: expected an integer, got 'many'"),
        (["rollout.group_size=1"], "rollout.group_size=1: every group advantage would be 0"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    code, lines = _cli("train", DEFAULT, f"run.run_dir={tmp_path / 'run'}", *args)
    assert code == 2
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("gradus: error:")


def test_cli_not_a_model_dir(tmp_path):
    (tmp_path / "m").mkdir()
    code, lines = _cli("train", DEFAULT, f"model.path={tmp_path / 'm'}", f"run.run_dir={tmp_path / 'run'}")
    assert code == 2 and lines == [
        f"gradus: error: model.path: {tmp_path / 'm'} is not a model directory (no config.json); "
        "point it at a directory made by save_pretrained"
    ]


def test_presets_share_tasks_through_base(tmp_path):
    names = {}
    for preset, kind in [("default", "ucb"), ("uniform", "uniform"), ("dump", "ucb"), ("sec", "td0")]:
        cfg = load_config(f"configs/{preset}.yaml")
        assert cfg.curriculum.kind == kind
        names[preset] = [(d.name, d.params) for d in cfg.data.distributions]
    assert names["default"] == names["uniform"] == names["dump"] == names["sec"]
    loop = tmp_path / "a.yaml"
    loop.write_text("base: a.yaml\n")
    with pytest.raises(GradusError, match="loops"):
        load_config(loop)


def test_params_replace_rather_than_merge():
    cfg = load_config("configs/sec.yaml")
    assert cfg.curriculum.params == {"alpha": 0.5, "temperature": 1.0}
    assert load_config("configs/uniform.yaml").curriculum.params == {}


def test_too_little_disk_for_checkpoints_is_a_clear_error(tmp_path, monkeypatch):
    import shutil as shutil_module

    from gradus.launch.run.rundir import check_disk

    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"x" * 1000)
    cfg = load_config(DEFAULT, ["run.keep_checkpoints=2"])
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=8999))
    with pytest.raises(GradusError, match=r"checkpoints need about .*run.checkpoint_every=0"):
        check_disk(cfg, tmp_path, model)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage._replace(free=9000))
    check_disk(cfg, tmp_path, model)  # 3 x 1000 bytes x (2 + 1) fits exactly
    check_disk(load_config(DEFAULT, ["run.checkpoint_every=0"]), tmp_path, model)


def test_submit_builds_a_ray_job_command_after_checking_the_config():
    from gradus.launch.cluster.submit import job_command

    command = job_command(
        "configs/default.yaml", ["run.steps=3", "rollout.resources={rollout_node: 1}"], "http://head:8265", wait=False
    )
    assert command[:5] == ["ray", "job", "submit", "--address=http://head:8265", "--working-dir=."]
    assert "--no-wait" in command
    entry = command[command.index("--") + 1 :]
    assert entry[:5] == ["python", "-m", "gradus.launch.cli", "train", "configs/default.yaml"]
    assert entry[-1] == "'rollout.resources={rollout_node: 1}'"  # quoted: ray joins the words into a shell line
    with pytest.raises(GradusError, match="did you mean 'steps'"):
        job_command("configs/default.yaml", ["run.stepz=3"], "http://head:8265")
    assert job_command("configs/default.yaml", [], "http://head:8265", resume="auto")[-2:] == ["--resume", "auto"]


def test_a_row_history_sampler_on_rows_that_seldom_recur_gets_one_note(capsys, monkeypatch):
    from gradus.launch import errors

    monkeypatch.setattr(errors, "_NOTED", set())
    for _ in range(2):  # an ablation loads each cell's config: said once
        load_config("configs/default.yaml", ["curriculum.prompts={kind: greso}"])
    out = capsys.readouterr().out
    assert out.count("kind=greso decides from each row's own earlier groups") == 1
    assert "draws 80 prompts from 6000 training rows (0.01 per row)" in out and "data.train_size" in out
    load_config("configs/default.yaml", ["curriculum.prompts={kind: thompson}", "data.train_size=20"])
    load_config("configs/default.yaml", ["curriculum.prompts={kind: shuffle}"])
    assert "decides from each row" not in capsys.readouterr().out  # rows recur; a sampler without row history
