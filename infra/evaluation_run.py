"""`llama2 evaluate`'s record in MLflow: one run per evaluation, in the experiment the pipelines log to.

    params     model (the reference as given), benchmarks, limit, benchmark_dir
    tags       where the model came from (llama2.model.*: the stage run that made it, its registered
               version, the weights' path or URI), the code version, a one-line description
    inputs     the registered version's logged model, where the model is one (MLflow's model input)
    metrics    eval/<benchmark>/acc and /acc_norm, as the evaluate stage logs them
    artifacts  results.json, questions/<benchmark>.jsonl

The run starts before the model is scored, so a long evaluation shows as RUNNING; it ends
FINISHED; FAILED with the error's type and first line as tags, as a stage run does; KILLED and
tagged `llama2.interrupted` on Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import LoggedModelInput, Metric, Param
from mlflow.tracking import MlflowClient

from infra.run_lifecycle import TAG_ERROR, TAG_ERROR_TYPE, TAG_INTERRUPTED, error_summary
from infra.tracking import TAG_NOTE, param_value


class EvaluationRun:
    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def finish(self, metrics: Mapping[str, float], artifacts: Sequence[Path], note: str, tags: Mapping[str, str]
               ) -> None:
        """Log the scores, the result files (a folder under its own name) and the description."""
        now = int(time.time() * 1000)
        scores = [Metric(key, float(value), now, 0) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=scores)
        for path in artifacts:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))
        for key, value in {**tags, TAG_NOTE: note}.items():
            self.client.set_tag(self.run_id, key, value)


@contextmanager
def evaluation_run(
    tracking_uri: str, experiment_id: str, name: str, params: Mapping[str, object], tags: Mapping[str, str],
    logged_model_id: str | None,
) -> Iterator[EvaluationRun]:
    """A run for the evaluation inside the block, ended by how the block ends."""
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id
    client.log_batch(run_id, params=[Param(key, param_value(value)) for key, value in params.items()])
    if logged_model_id:
        client.log_inputs(run_id, models=[LoggedModelInput(logged_model_id)])
    try:
        yield EvaluationRun(client, run_id)
    except KeyboardInterrupt:
        client.set_tag(run_id, TAG_INTERRUPTED, "true")
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException as err:
        kind, message = error_summary(err)
        client.set_tag(run_id, TAG_ERROR_TYPE, kind)
        client.set_tag(run_id, TAG_ERROR, message)
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
