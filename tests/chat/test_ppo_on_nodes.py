"""A PPO round with its trainer and its rollout actor on different nodes of a three-node Ray cluster
(tests/chat/ppo_cluster.py) completes and matches the same round on one node: the weight sync and the
rollouts cross nodes through the object store, and nothing of the run depends on where a role is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators.rlhf.ppo import run_ppo
from operators.rlhf.ppo_config import PPOConfig
from operators.rollout.config import RolloutConfig
from tests.chat.conftest import stage_io
from tests.infra.local_ray_head import stop_process_group

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# One CPU for the trainer's worker and one for the rollout actor, one thread each in both runs (a
# different thread count could round the same sums differently).
CONFIG = PPOConfig(prompts_per_iteration=8, minibatch_prompts=4, iterations=2, micro_batch_size=2, num_workers=1,
                   max_new_tokens=10, peak_lr=1e-4, critic_lr=1e-3, critic_warmup_iterations=1, kl_coef=0.05,
                   seq_len=128, log_every=1, kl_limit=50.0,
                   rollout=RolloutConfig(actors=1, cpus_per_actor=1, batch_size=8, chunk_prompts=4))
COMPARED = ("ppo/reward", "ppo/kl", "ppo/response_tokens", "ppo/eos_rate")


@pytest.fixture(scope="module")
def runs(ray_local, sft_run, reward_run, chat_data, tmp_path_factory) -> tuple[list, list, dict]:
    """(one-node iterations, three-node iterations, where each role ran): the three-node process starts
    first, and this process's local Ray makes the one-node reference meanwhile."""
    rm = reward_run[0].output_dir
    inputs = {"policy": sft_run[0].output_dir, "helpfulness": rm, "safety": rm, "data": chat_data}
    workdir = tmp_path_factory.mktemp("ppo-cluster")
    (workdir / "ppo").mkdir()
    (workdir / "args.json").write_text(json.dumps({"inputs": {k: str(v) for k, v in inputs.items()},
                                                   "output": str(workdir / "ppo"), "config": CONFIG.model_dump()}))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    with (workdir / "log.txt").open("w") as log:
        cluster = subprocess.Popen([sys.executable, "-m", "tests.chat.ppo_cluster", str(workdir / "args.json"),
                                    str(workdir / "result.json")],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        io = stage_io(tmp_path_factory.mktemp("ppo-one-node"), "ppo_v1", inputs)
        run_ppo(CONFIG, io)
        cluster.wait(timeout=900)
    finally:
        stop_process_group(cluster)  # stops its Ray nodes too, should it still run
    assert cluster.returncode == 0, (workdir / "log.txt").read_text()[-6000:]
    return (json.loads((io.output_dir / "iterations.json").read_text()),
            json.loads((workdir / "ppo" / "iterations.json").read_text()),
            json.loads((workdir / "result.json").read_text()))


def test_the_trainer_and_the_rollout_actor_ran_on_different_worker_nodes(runs):
    _, _, placed = runs
    trainer, rollout = placed["roles"]["trainer"], placed["roles"]["rollout"]
    assert len(trainer) == 1 and len(rollout) == 1 and trainer != rollout
    assert {*trainer, *rollout} == set(placed["workers"])  # the head has no CPU: neither ran there


def test_the_round_matches_the_one_node_run(runs):
    one_node, three_nodes, _ = runs
    assert [i["ppo/iteration"] for i in three_nodes] == [0, 1]
    for name in COMPARED:
        assert [i[name] for i in three_nodes] == pytest.approx([i[name] for i in one_node], rel=1e-4, abs=1e-6), name
