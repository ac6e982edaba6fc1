"""Scores of whole batches of rollouts, on the device the scoring model lives on: a reward model's
score at each sequence's last token, and the reference policy's log-probs of each response token.

Sequences are right-padded. Under causal attention a real token sees only the tokens before it,
all real, so the padding needs no mask and changes nothing a real position reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model.llama import Transformer
from model.reward import RewardModel
from operators.rollout.sequences import collate_sequences


def reward_scores(model: RewardModel, sequences: Sequence[Sequence[int]]) -> list[float]:
    """The model's score of each sequence, read at its last token."""
    device = model.output.weight.device
    batch = collate_sequences(sequences)
    return model(batch["tokens"].to(device), batch["mask"].to(device)).float().tolist()


def reference_logprobs(model: Transformer, prompts: Sequence[list[int]],
                       responses: Sequence[list[int]]) -> list[list[float]]:
    """log p(response token | everything before it) under `model`, per response, in one forward.

    Only the states that predict a response token go through the output head: the (tokens x vocab)
    logits of the prompts are never made."""
    device = model.output.weight.device
    tokens = collate_sequences([p + r for p, r in zip(prompts, responses)])["tokens"].to(device)
    # the state at position j predicts token j + 1: a response of n tokens after a prompt of m is
    # predicted by the states m - 1 ... m + n - 2
    predicts = torch.zeros(tokens.shape, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        predicts[i, len(p) - 1: len(p) - 1 + len(r)] = True
    predicts = predicts.to(device)
    states = model.hidden_states(tokens)[predicts]
    targets = tokens[:, 1:][predicts[:, :-1]]
    logprobs = torch.log_softmax(model.output(states).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    return [chunk.tolist() for chunk in logprobs.cpu().split([len(r) for r in responses])]
