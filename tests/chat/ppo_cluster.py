"""A PPO round on a Ray cluster of three nodes on this machine, in a process of its own (a process holds
one Ray connection; the test session's is the local `ray_local`), run by
tests/chat/test_ppo_on_nodes.py:

    python -m tests.chat.ppo_cluster ARGS_JSON RESULT_JSON

Three nodes (tests/infra/three_nodes.py): a head with no CPUs (it hosts the Ray Train controller,
which asks for none) and two worker nodes of one CPU each: the trainer's worker (one CPU) and the rollout actor (one CPU)
cannot share a node, so the policy's weights go to the actor and its rollouts come back across nodes
through the object store. ARGS_JSON names the stage's inputs and output folder (paths every node sees:
one machine); RESULT_JSON gets the nodes and the node each role ran on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ray.util.state import list_actors

from operators.rlhf.ppo import run_ppo
from operators.rlhf.ppo_config import PPOConfig
from operators.stage_io import StageIO
from tests.infra.three_nodes import three_nodes
from tests.recording_tracker import RecordingTracker

ROLES = {"RayTrainWorker": "trainer", "RolloutActor": "rollout"}


def main(args_path: Path, result_path: Path) -> None:
    args = json.loads(args_path.read_text())
    with three_nodes(worker_cpus=1) as (cluster, workers):
        output = Path(args["output"])
        io = StageIO(output, {k: Path(v) for k, v in args["inputs"].items()}, stage="ppo_v1",
                     fingerprint="0123456789abcdef", scratch_dir=output.parent / "scratch", tracker=RecordingTracker())
        run_ppo(PPOConfig.model_validate(args["config"]), io)
        actors = list_actors(f"http://{cluster.webui_url}", limit=1000, raise_on_missing_output=False)
        result_path.write_text(json.dumps({
            "head": cluster.head_node.node_id,
            "workers": [w.node_id for w in workers],
            "roles": {role: sorted({a.node_id for a in actors if a.class_name == name}) for name, role in ROLES.items()},
        }))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
