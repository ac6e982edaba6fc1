"""The pretrain stage on Ray Train: 2 gloo workers with FSDP2 match one process, publish an HF model with
its tokenizer, log through the stage's tracker, and resume from their latest checkpoint after a failure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from infra.tracking import MlflowTracker
from model.convert import load_model
from model.hf_format import load_hf
from model.tokenizer import load_tokenizer
from operators.pretrain.stage import run_pretrain
from operators.stage_io import StageIO, StageStats
from operators.training.checkpoint import LocalCheckpoints
from operators.pretrain.task import PretrainTask
from operators.training.fault_injection import FAULT_ENV
from operators.training.loop import train
from operators.training.task import WorkerEnv
from pipelines.cli import main
from tests.model.tiny_tokenizer import VOCAB_SIZE, train_llama_tokenizer, word_lines
from tests.pretrain.token_shards import write_token_shards
from tests.training.tiny_run import arithmetic_docs, tiny_config

MIXING = {"a": 1.0, "b": 2.0}
PRODUCERS = {"tokens": "tokenize", "tokenizer": "train_tokenizer"}
STEPS = 8  # checkpoints at 4 and 8; the injected faults strike after step 6
LOGGED_STEPS = [1, 4, 8]  # step 1 and every log_every = 4


def two_worker_config(**overrides):
    return tiny_config(num_workers=2, micro_batch_size=2, max_steps=STEPS, **overrides)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> dict[str, Path]:
    """The tokens and tokenizer inputs, as the tokenize and train_tokenizer stages publish them."""
    tokens = tmp_path_factory.mktemp("tokenize")
    write_token_shards(tokens, arithmetic_docs())
    summary = {"tokenizer": {"vocab_size": VOCAB_SIZE}, "mixing_weights": MIXING}
    (tokens / "manifest.json").write_text(json.dumps({"summary": summary}))
    tokenizer = train_llama_tokenizer(tmp_path_factory.mktemp("train_tokenizer"), word_lines())
    return {"tokens": tokens, "tokenizer": tokenizer.parent}


@pytest.fixture(scope="module")
def alone(upstream, tmp_path_factory) -> list[float]:
    """The loss curve of the same global batches in one process without Ray, FSDP or gloo."""
    shards = sorted((upstream["tokens"] / "tokens").glob("*.arrow"))
    job = PretrainTask(tiny_config(max_steps=STEPS), shards, MIXING, VOCAB_SIZE)
    return train(job, LocalCheckpoints(tmp_path_factory.mktemp("alone")), WorkerEnv())


@pytest.fixture(scope="module")
def mlflow_runs(tmp_path_factory):
    """Makes a fresh MLflow run and its tracker, as the runner does for each attempt of a stage."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("pretrain-tests")
    return lambda: MlflowTracker(uri, client.create_run(experiment).info.run_id)


@dataclass
class Attempt:
    """One call of the stage function, laid out as the runner does: a fresh output dir and MLflow run,
    the scratch dir of its fingerprint (which a later attempt of the same fingerprint finds again)."""

    io: StageIO
    tracker: MlflowTracker
    stats: StageStats | None = None

    @classmethod
    def make(cls, upstream: dict[str, Path], mlflow_runs, root: Path, fingerprint: str, name: str) -> Attempt:
        work = root / "store" / "pretrain" / f".work-{fingerprint}"
        (work / f"output-{name}").mkdir(parents=True)
        tracker = mlflow_runs()
        io = StageIO(work / f"output-{name}", upstream, stage="pretrain", fingerprint=fingerprint,
                     scratch_dir=work / "scratch", producers=PRODUCERS, tracker=tracker)
        return cls(io, tracker)

    def run(self, config) -> StageStats:
        self.stats = run_pretrain(config, self.io)
        return self.stats

    @property
    def out(self) -> Path:
        return self.io.output_dir

    @property
    def fault_marker(self) -> Path:
        """Where the injected fault of this fingerprint marks that it struck (`<marker>.<rank>`)."""
        return self.out.parent / "failed"

    def history(self) -> list[float]:
        return json.loads((self.out / "loss_history.json").read_text())

    def logged(self, metric: str) -> list[tuple[int, float]]:
        """(step, value) of each value of `metric` in this attempt's MLflow run."""
        return [(m.step, m.value) for m in self.tracker.client.get_metric_history(self.tracker.run_id, metric)]

    def logged_steps(self, metric: str = "train/loss") -> list[int]:
        return [step for step, _ in self.logged(metric)]


@pytest.fixture(scope="module", autouse=True)
def quick_ray_train():
    """Ray Train polls its workers every 2 s (a report with a checkpoint waits for a poll) and starts a
    preemption watcher actor per run; at 0.5 s and without the watcher a run here takes ~5 s less."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
        patch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        yield


@pytest.fixture(scope="module")
def fsdp_run(upstream, mlflow_runs, ray_local, tmp_path_factory) -> Attempt:
    """The stage with 2 workers, both of which fail once after step 6: FailureConfig restarts the
    worker group from the step-4 checkpoint and the run finishes. One Ray Train run for every test
    that reads it: Ray Train start-up, not training, is what takes the time."""
    attempt = Attempt.make(upstream, mlflow_runs, tmp_path_factory.mktemp("two_workers"), "0123456789abcdef", "a")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_ENV, f"6:{attempt.fault_marker}")
        attempt.run(two_worker_config(max_failures=1))
    return attempt


@pytest.mark.slow
def test_two_fsdp_workers_train_like_one_process(fsdp_run, alone):
    assert fsdp_run.history() == pytest.approx(alone, rel=1e-4)  # the restart after step 6 included
    final = fsdp_run.out / "checkpoints" / f"step-{STEPS:06d}"
    assert sorted(p.name for p in final.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]  # one shard per rank


@pytest.mark.slow
def test_failure_config_restarts_a_failed_worker_group_from_the_latest_checkpoint(fsdp_run):
    assert all(Path(f"{fsdp_run.fault_marker}.{rank}").exists() for rank in (0, 1))  # the fault did strike
    assert fsdp_run.logged_steps() == LOGGED_STEPS  # steps 1-4 ran once: the restarted group went on from step 4


@pytest.mark.slow
def test_rank_0_logs_the_step_metrics_to_the_stages_tracker(fsdp_run):
    history = fsdp_run.history()
    assert fsdp_run.logged("train/loss") == [(s, pytest.approx(history[s - 1])) for s in LOGGED_STEPS]
    assert fsdp_run.logged_steps("train/lr") == fsdp_run.logged_steps("train/tokens_seen") == LOGGED_STEPS


@pytest.mark.slow
def test_the_stats_account_for_every_token_of_the_shards(fsdp_run):
    stats = fsdp_run.stats
    assert stats.unit == "tokens"
    assert stats.count_in == stats.count_out + stats.count_rejected
    shard_tokens = sum(len(body) + 2 for docs in arithmetic_docs() for _, _, body in docs)  # + BOS and EOS
    assert stats.count_in == shard_tokens
    assert stats.inputs_read[0].role == "tokens" and stats.inputs_read[0].rows == 80
    held_out = json.loads((fsdp_run.out / "data_split.json").read_text())["validation_tokens"]
    assert stats.rejected["validation"] == held_out > 0
    assert stats.metrics["train/final_loss"] == fsdp_run.history()[-1]
    assert stats.summary["ray_train_run"] == "pretrain-0123456789abcdef"


@pytest.mark.slow
def test_ray_train_keeps_its_run_in_the_stages_scratch_directory(fsdp_run):
    assert (fsdp_run.io.scratch() / "ray_train" / "pretrain-0123456789abcdef").is_dir()
    assert not any(p.name == "ray_train" for p in fsdp_run.out.rglob("*"))


@pytest.mark.slow
def test_the_published_model_loads_and_carries_a_tokenizer_transformers_encodes_with_bos(fsdp_run, upstream):
    transformers = pytest.importorskip("transformers")
    model_dir = fsdp_run.out / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"
    ]
    model = load_model(model_dir, "hf")
    assert model.args.vocab_size == VOCAB_SIZE
    with torch.no_grad():
        assert torch.isfinite(model(torch.arange(3, 35)[None])).all()

    assert (model_dir / "tokenizer.model").read_bytes() == (upstream["tokenizer"] / "tokenizer.model").read_bytes()
    sentencepiece = load_tokenizer(model_dir)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    for text in ("the lazy dog 42", " a leading space", "naïve über\nfox", ""):
        assert hf_tokenizer(text)["input_ids"] == sentencepiece.encode(text, bos=True), text


@pytest.mark.slow
def test_the_sharded_final_checkpoint_exports_to_the_published_weights(fsdp_run, tmp_path):
    final = fsdp_run.out / "checkpoints" / f"step-{STEPS:06d}"
    assert main(["-q", "convert", "--from", "checkpoint", str(final), "--to", "hf", str(tmp_path / "hf")]) == 0
    _, exported = load_hf(tmp_path / "hf")
    _, published = load_hf(fsdp_run.out / "model")
    assert exported.keys() == published.keys()
    assert all(torch.equal(exported[k], published[k]) for k in published)


@pytest.mark.slow
def test_a_stage_killed_mid_run_resumes_from_its_latest_checkpoint_when_run_again(
    upstream, alone, mlflow_runs, ray_local, tmp_path, monkeypatch
):
    config = two_worker_config(max_failures=0)
    killed = Attempt.make(upstream, mlflow_runs, tmp_path, "fedcba9876543210", "a")
    monkeypatch.setenv(FAULT_ENV, f"6:{killed.fault_marker}")  # both workers die after step 6 (checkpoint: 4)
    with pytest.raises(Exception, match="injected fault"):
        killed.run(config)
    assert killed.logged_steps() == [1, 4]

    # The runner calls the stage again: a new output dir and MLflow run, the same fingerprint and scratch dir.
    again = Attempt.make(upstream, mlflow_runs, tmp_path, "fedcba9876543210", "b")
    again.run(config)
    assert again.logged_steps() == [8]  # it went on from step 4
    assert again.history() == pytest.approx(alone, rel=1e-4)
