"""Two Ray nodes on this machine (`ray start --head` + `ray start --address`, each
with its own ports and a custom resource): the rollout worker is placed on one,
the trainer on the other, weights go over the gloo broadcast transport in
several buckets, and 2 steps run. Slow (~2 minutes)."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import ray

from gradus.launch.config.load import load_config
from gradus.launch.run.driver import Run
from tests.conftest import stop_own_ray
from gradus.trainer.rank_setup import free_port

pytestmark = pytest.mark.e2e


# Two Ray nodes on one machine need their own agent ports (the dashboard agent's
# default, 52365, would clash and take the second raylet down with it).
AGENT_PORTS = """
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("", 0))
flags = [
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
]
print(" ".join(f"{f}={s.getsockname()[1]}" for f, s in zip(flags, socks)))
"""


def agent_ports() -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", AGENT_PORTS], check=True, capture_output=True, text=True
    ).stdout.split()


@pytest.fixture
def two_node_cluster(own_ray_dir):
    port = free_port()  # RAY_AUTH_MODE=disabled for every test cluster: tests/conftest.py
    common = ["--num-cpus=2", "--object-store-memory=500000000", "--disable-usage-stats"]
    subprocess.run(
        [
            "ray",
            "start",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            '--resources={"rollout_node": 4}',
            *common,
            *agent_ports(),
        ],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            ["ray", "start", f"--address=127.0.0.1:{port}", '--resources={"trainer_node": 4}', *common, *agent_ports()],
            check=True,
            capture_output=True,
        )
        yield f"127.0.0.1:{port}"
    finally:
        stop_own_ray(own_ray_dir)


def test_rollout_and_trainer_on_separate_nodes(two_node_cluster, tiny_model, tmp_path):
    cfg = load_config(
        "configs/uniform.yaml",
        [
            f"model.path={tiny_model}",
            f"run.run_dir={tmp_path / 'run'}",
            "run.steps=2",
            "eval.every=0",
            "run.checkpoint_every=0",
            f"cluster.address={two_node_cluster}",
            "rollout.resources={rollout_node: 1}",
            "trainer.resources={trainer_node: 1}",
            "sync.transport=broadcast",
            "sync.bucket_mb=0.1",
            "rollout.threads=1",
            "trainer.threads=1",
            "rollout.max_tokens=16",
            "trainer.lr=1e-3",
            "trainer.max_tokens_per_micro_batch=400",
            "reward.length=1.0",
            "curriculum.budget={kind: constant, budget: 4}",  # rewards vary, so every step trains
        ],
    )
    run = Run(cfg)
    try:
        run.start()
        assert len(run.rollout.layout) > 3  # the 0.1 MB buckets split the tiny model
        for step in range(2):
            metrics = run.step(step)
            assert metrics["train/skipped"] == 0.0 and metrics["policy_version"] == step + 1
            trainer, (engine,) = run.trainers.param_sums(), run.rollout.param_sums()
            assert set(trainer) == set(engine)
            for name, value in trainer.items():
                assert math.isclose(value, engine[name], rel_tol=1e-9, abs_tol=1e-6), (name, value, engine[name])
        resources = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    finally:
        run.close()

    placement = json.loads((tmp_path / "run" / "placement.json").read_text())
    assert placement["transport"] == "broadcast" and placement["device"] == "cpu" and placement["cluster_nodes"] == 2
    trainer_node, rollout_node = placement["trainer_ranks"][0]["node_id"], placement["rollout_workers"][0]["node_id"]
    assert trainer_node != rollout_node
    assert "trainer_node" in resources[trainer_node] and "rollout_node" in resources[rollout_node]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [0, 1] and all(m["time/sync"] > 0 for m in lines)


SHIMS = {
    # Two "nodes" that are both this machine: scontrol lists them, srun runs the step's command here
    # (a `ray start` with agent ports of its own, as on a machine of its own).
    "scontrol": '#!/usr/bin/env bash\nprintf "node-a\\nnode-b\\n"\n',
    "srun": (
        '#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do case "$1" in -w) shift 2 ;; *) shift ;; esac; done\n'
        f'if [[ "$1 $2" == "ray start" ]]; then set -- "$@" $({sys.executable} -c \'{AGENT_PORTS}\'); fi\nexec "$@"\n'
    ),
}


def test_sbatch_script_starts_ray_on_every_node_and_trains(tiny_model, tmp_path, own_ray_dir):
    """launch/cluster/gradus.sbatch under stand-in srun/scontrol: head + worker Ray
    nodes come up, the script waits for both and their (declared) GPUs, and `gradus train` runs on them
    (colocated: the rollout worker sits in the trainer rank's placement bundle).
    Its clean-up's `ray stop` stops only this test's daemons here (a job owns its
    nodes; this machine may run another Ray)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray_cli = shutil.which("ray")
    shims = {
        **SHIMS,
        "ray": (
            "#!/usr/bin/env bash\n"
            f'if [[ "$1" == stop ]]; then exec pkill -9 -f "{own_ray_dir}"; fi\nexec {ray_cli} "$@"\n'
        ),
    }
    for name, text in shims.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "GRADUS_RAY_PORT": str(free_port()),
        # each node declares a GPU (no GPU needed): the script waits for both nodes' GPUs,
        # and cluster.device=cpu runs on CPU beside them
        "SLURM_GPUS_ON_NODE": "gpu:1",
        "GRADUS_RAY_ARGS": "--num-cpus=2 --num-gpus=1 --object-store-memory=300000000",
    }
    run_dir = tmp_path / "run"
    try:
        result = subprocess.run(
            [
                "bash",
                "launch/cluster/gradus.sbatch",
                "configs/uniform.yaml",
                f"model.path={tiny_model}",
                f"run.run_dir={run_dir}",
                "run.steps=1",
                "run.checkpoint_every=0",
                "rollout.max_tokens=16",
                "rollout.threads=1",
                "trainer.threads=1",
                "cluster.colocate=true",
                "cluster.device=cpu",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        stop_own_ray(own_ray_dir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0]
    placement = json.loads((run_dir / "placement.json").read_text())
    assert placement["cluster_nodes"] == 2 and placement["colocate"]
    assert placement["rollout_workers"][0]["node_id"] == placement["trainer_ranks"][0]["node_id"]
