"""Fault injection for the resume tests: LLAMA2_TRAIN_FAULT_ONCE="STEP:PATH" makes every worker raise
once after STEP, the first time (PATH.<rank> is created as the "already failed" marker), so a test
can kill a run at a known step and watch it resume from its latest checkpoint.
LLAMA2_ROLLOUT_FAULT_ONCE="CALL:PATH" kills a rollout actor's process at the start of its CALL-th
rollout call, once (marker PATH): a dead actor of the PPO iteration that was running;
LLAMA2_SCORER_FAULT_ONCE does the same to a scoring actor (`rollout.placement: separate`) at its
CALL-th scoring call."""

from __future__ import annotations

import os
from pathlib import Path

FAULT_ENV = "LLAMA2_TRAIN_FAULT_ONCE"
ROLLOUT_FAULT_ENV = "LLAMA2_ROLLOUT_FAULT_ONCE"
SCORER_FAULT_ENV = "LLAMA2_SCORER_FAULT_ONCE"


class InjectedFault(RuntimeError):
    """Raised by `inject_fault`; never raised unless LLAMA2_TRAIN_FAULT_ONCE is set."""


def inject_fault(step: int, rank: int) -> None:
    """The loop's hook after each step: raise if LLAMA2_TRAIN_FAULT_ONCE names this step and this rank has not failed yet."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if step == int(at) and not Path(f"{marker}.{rank}").exists():
        Path(f"{marker}.{rank}").touch()
        raise InjectedFault(f"injected fault after step {step} on rank {rank} ({FAULT_ENV})")


def kill_actor_once(call: int, env: str = ROLLOUT_FAULT_ENV) -> None:
    """An engine actor's hook at each call: end the process, as a crash would, if `env` (its role's
    variable) names this call and no actor has died for it yet."""
    spec = os.environ.get(env)
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if call == int(at) and not Path(marker).exists():
        Path(marker).touch()
        os._exit(1)
