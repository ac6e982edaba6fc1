"""PPO's weight sync: only the trained modules, under Hugging Face names, copied into an actor's policy in place."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.args import CONFIGS
from model.hf_format import to_hf_state_dict
from model.llama import Transformer
from operators.rlhf.weight_sync import trained_parts
from operators.rollout.actors import RolloutActor
from operators.training.config import LoRAConfig, TrainingConfig
from operators.training.lora import merge_adapters, peft_installed
from operators.training.parallel import apply_fsdp
from operators.training.trainable import select_trainable
from tests.chat.test_rollout import write_policy
from tests.model.tiny_tokenizer import train_llama_tokenizer, word_lines

LAYERS = CONFIGS["tiny"].n_layers


def trainer_copy(policy: Transformer, settings: TrainingConfig) -> Transformer:
    """The policy as a trainer holds it, its trained parameters moved away from the actor's."""
    trainer = Transformer(policy.args)
    trainer.load_state_dict(policy.state_dict())
    select_trainable(trainer, settings)
    with torch.no_grad():
        for p in trainer.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return trainer


def actor_for(policy: Transformer, tokenizer, tmp_path) -> RolloutActor:
    path = write_policy(tmp_path / "policy", policy, tokenizer)
    return RolloutActor(str(path), {}, None, eos_id=1, max_seq_len=64, batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    return train_llama_tokenizer(tmp_path_factory.mktemp("tok"), word_lines())


def tiny_policy(tied: bool = False) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(CONFIGS["tiny"].replace(vocab_size=300, max_seq_len=64, tie_word_embeddings=tied))
    model.init_weights()
    return model


@pytest.fixture
def policy() -> Transformer:
    return tiny_policy()


def test_only_the_modules_that_train_are_sent_under_hugging_face_names(policy):
    trainer = trainer_copy(policy, TrainingConfig(freeze_layers=LAYERS - 1))
    names = [name for part in trained_parts(trainer, None, trainer.args, torch.float32) for name in part]
    top = f"model.layers.{LAYERS - 1}."
    assert names and all(n.startswith(top) or n in ("model.norm.weight", "lm_head.weight") for n in names)
    assert {"model.norm.weight", "lm_head.weight", f"{top}self_attn.q_proj.weight"} <= set(names)


@pytest.mark.parametrize("tied", [False, True])
def test_an_actor_that_loads_the_parts_holds_the_trained_policy(tied, tokenizer, tmp_path):
    policy = tiny_policy(tied)
    trainer = trainer_copy(policy, TrainingConfig(freeze_layers=0 if tied else 1))  # tied: the embedding trains
    actor = actor_for(policy, tokenizer, tmp_path)
    for part in trained_parts(trainer, None, trainer.args, actor.policy_dtype()):
        actor.load_policy_part(part)
    got, want = actor.policy.state_dict(), trainer.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want if "rope_" not in k)


@pytest.mark.skipif(not peft_installed(), reason="LoRA needs peft (the dev extra)")
def test_lora_adapters_arrive_merged_into_their_weights(policy, tokenizer, tmp_path):
    lora = LoRAConfig(rank=4)
    trainer = trainer_copy(policy, TrainingConfig(freeze_layers=1, lora=lora))
    actor = actor_for(policy, tokenizer, tmp_path)
    for part in trained_parts(trainer, lora, trainer.args, torch.float32):
        assert not any("lora_" in name for name in part)
        actor.load_policy_part(part)
    merged = merge_adapters(trainer.state_dict(), lora.scaling)
    got = actor.policy.state_dict()
    assert all(torch.allclose(got[k], merged[k], atol=1e-6) for k in merged if "rope_" not in k)


def test_parts_are_sent_in_the_dtype_the_engine_holds(policy):
    trainer = trainer_copy(policy, TrainingConfig(freeze_layers=LAYERS - 1))
    assert {t.dtype for part in trained_parts(trainer, None, trainer.args, torch.bfloat16)
            for t in part.values()} == {torch.bfloat16}


def test_a_part_that_is_not_the_policys_is_refused_by_name(policy, tokenizer, tmp_path):
    actor = actor_for(policy, tokenizer, tmp_path)
    wrong = to_hf_state_dict({"norm.weight": torch.ones(7)}, policy.args)
    with pytest.raises(ValueError, match=r"model\.norm\.weight \(7,\)"):
        actor.load_policy_part(wrong)


def test_fsdp_ranks_send_what_one_process_sends(policy, tmp_path):
    """Two gloo ranks, the trainer sharded as the loop shards it: each module gathered by both, the
    same parts as from the unsharded model."""
    trainer = trainer_copy(policy, TrainingConfig(freeze_layers=1))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    out = tmp_path / "parts.pkl"
    mp.start_processes(_fsdp_parts, args=(trainer, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2,
                       start_method="spawn")
    sharded = pickle.loads(out.read_bytes())
    single = list(trained_parts(trainer, None, trainer.args, torch.float32))
    assert [list(p) for p in sharded] == [list(p) for p in single]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(sharded, single) for k in a)


def _fsdp_parts(rank: int, trainer: Transformer, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    apply_fsdp(trainer, dist.device_mesh.init_device_mesh("cpu", (2,)), bf16=False)
    parts = list(trained_parts(trainer, None, trainer.args, torch.float32, keep=rank == 0))  # every rank walks them
    if rank == 0:
        Path(out).write_bytes(pickle.dumps(parts))
    dist.barrier()
    dist.destroy_process_group()
