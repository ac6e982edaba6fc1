"""The SFT loss is normalized by the supervised tokens of the whole global batch: 1 worker x 4
micro-batches and 2 FSDP workers x 2 micro-batches give the same gradient, even when the
micro-batches hold different numbers of supervised tokens (where per-micro-batch means differ)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from operators.chat.packing import collate, pack, sft_example
from operators.chat.sft_config import SFTConfig
from operators.chat.sft_task import SFTTask
from operators.training.loop import prepare_model
from operators.training.step import accumulate_gradients
from operators.training.task import WorkerEnv

DIALOGS = [
    [{"role": "user", "content": "the river"}, {"role": "assistant", "content": "is data " * n}] for n in (1, 7, 2, 12)
]


def micro_batches(task: SFTTask) -> list[dict[str, torch.Tensor]]:
    """Four micro-batches of one row each, with 1 to 12 answer words: very different token counts."""
    return [collate(list(pack([e], [0], task.settings.seq_len))) for e in task.examples]


def full_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {}
    for name, param in model.named_parameters():
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        grads[name] = grad.detach().clone()
    return grads


def _worker(rank: int, world: int, task: SFTTask, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    env = WorkerEnv(rank, world)
    model = prepare_model(task, env)
    batches = micro_batches(task)
    mine = batches[rank * 2: rank * 2 + 2]
    accumulate_gradients(task, model, mine, env)
    grads = full_gradients(model)
    if rank == 0:
        Path(out).write_bytes(pickle.dumps(grads))
    # Both ranks tear gloo down together: a rank that destroys its group while the other still
    # holds the connection can die in gloo's teardown (SIGABRT, seen once in CI).
    dist.barrier()
    dist.destroy_process_group()


def test_two_workers_of_two_micro_batches_give_one_workers_gradient_of_four(base_output, chat_tokenizer, tmp_path):
    examples = [sft_example(chat_tokenizer, d) for d in DIALOGS]
    settings = SFTConfig(seq_len=128, global_batch_sequences=4, micro_batch_size=1, num_workers=1)
    task = SFTTask(settings, base_output / "model", examples)

    single = prepare_model(task, WorkerEnv())
    accumulate_gradients(task, single, micro_batches(task), WorkerEnv())
    expected = full_gradients(single)

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.start_processes(_worker, args=(2, task, init, str(tmp_path / "grads.pkl")), nprocs=2, start_method="spawn")
    distributed = pickle.loads((tmp_path / "grads.pkl").read_bytes())

    assert expected.keys() == distributed.keys()
    for name in expected:
        assert torch.allclose(expected[name], distributed[name], atol=1e-6, rtol=1e-4), name


def test_a_mean_per_micro_batch_would_have_given_another_gradient(base_output, chat_tokenizer):
    """The check above can fail: averaging per micro-batch weighs the tokens of short answers more."""
    examples = [sft_example(chat_tokenizer, d) for d in DIALOGS]
    task = SFTTask(SFTConfig(seq_len=128, global_batch_sequences=4, micro_batch_size=1, num_workers=1),
                   base_output / "model", examples)
    model = prepare_model(task, WorkerEnv())
    accumulate_gradients(task, model, micro_batches(task), WorkerEnv())
    global_norm = full_gradients(model)
    model.zero_grad()
    for batch in micro_batches(task):
        (task.loss(model, batch).total / task.units(batch) / 4).backward()
    per_micro = full_gradients(model)
    assert not torch.allclose(global_norm["output.weight"], per_micro["output.weight"], atol=1e-6, rtol=1e-4)
