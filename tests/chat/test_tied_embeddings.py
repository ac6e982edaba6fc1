"""A model whose output head is its embedding matrix (SmolLM2) stays tied through the training loop:
one matrix trained, one gradient for both uses, the same under two FSDP workers, one tensor exported."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from model.args import CONFIGS
from model.chat_template import llama2_chat_template
from model.convert import load_model, write_checkpoint
from model.hf_format import write_tokenizer_files
from model.llama import Transformer
from operators.chat.packing import collate, pack, sft_example
from operators.chat.sft_config import SFTConfig
from operators.chat.sft_task import SFTTask
from operators.training.checkpoint import LocalCheckpoints
from operators.training.loop import prepare_model, train
from operators.training.step import accumulate_gradients
from operators.training.task import WorkerEnv

DIALOGS = [[{"role": "user", "content": "the river"}, {"role": "assistant", "content": "is data " * n}] for n in (1, 7, 2, 12)]


@pytest.fixture(scope="module")
def tied_base(tmp_path_factory, chat_tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("tied") / "model"
    torch.manual_seed(0)
    args = CONFIGS["tiny"].replace(vocab_size=chat_tokenizer.n_words, max_seq_len=256, tie_word_embeddings=True)
    model = Transformer(args)
    model.init_weights()
    write_checkpoint(directory, "hf", args, model.state_dict())
    write_tokenizer_files(directory, chat_tokenizer, llama2_chat_template(chat_tokenizer))
    return directory


def sft_task(tied_base, chat_tokenizer, **changes) -> SFTTask:
    settings = SFTConfig(**{"seq_len": 128, "global_batch_sequences": 4, "micro_batch_size": 1, "num_workers": 1,
                            "log_every": 1, **changes})
    return SFTTask(settings, tied_base, [sft_example(chat_tokenizer, d) for d in DIALOGS])


def micro_batches(task: SFTTask) -> list[dict[str, torch.Tensor]]:
    return [collate(list(pack([e], [0], task.settings.seq_len))) for e in task.examples]


def test_a_tied_model_trains_and_exports_one_matrix(tied_base, chat_tokenizer, tmp_path):
    task = sft_task(tied_base, chat_tokenizer, seq_len=96, global_batch_sequences=1, peak_lr=1e-3)
    history = train(task, LocalCheckpoints(tmp_path), WorkerEnv())
    assert len(history) == task.total_steps >= 2
    export = max(tmp_path.glob("step-*")) / "export"
    assert json.loads((export / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(export / "model.safetensors")
    trained = load_model(export, "hf")
    assert trained.output.weight is trained.tok_embeddings.weight
    assert not torch.equal(trained.output.weight, load_model(tied_base, "hf").output.weight)


def _worker(rank: int, world: int, task: SFTTask, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    env = WorkerEnv(rank, world)
    model = prepare_model(task, env)
    accumulate_gradients(task, model, micro_batches(task)[rank * 2: rank * 2 + 2], env)
    grad = model.tok_embeddings.weight.grad.full_tensor()
    if rank == 0:
        Path(out).write_bytes(pickle.dumps((grad, model.output.weight is model.tok_embeddings.weight)))
    dist.barrier()
    dist.destroy_process_group()


def test_two_fsdp_workers_give_the_tied_matrix_one_workers_gradient(tied_base, chat_tokenizer, tmp_path):
    task = sft_task(tied_base, chat_tokenizer)
    single = prepare_model(task, WorkerEnv())
    accumulate_gradients(task, single, micro_batches(task), WorkerEnv())
    expected = single.tok_embeddings.weight.grad.clone()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_worker, args=(2, task, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "grad.pkl")),
                       nprocs=2, start_method="spawn")
    distributed, still_tied = pickle.loads((tmp_path / "grad.pkl").read_bytes())
    assert still_tied
    assert torch.allclose(expected, distributed, atol=1e-6, rtol=1e-4)
