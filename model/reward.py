"""Reward model: the Llama backbone with a scalar head in place of the LM head (Llama 2 §3.2.2).

The score of a sequence is read at its last non-pad token; batches are right-padded.
"""

from __future__ import annotations

import torch

from model.args import ModelArgs
from model.llama import Transformer


class RewardModel(Transformer):
    def __init__(self, args: ModelArgs):
        super().__init__(args, out_features=1)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Scores (batch,) for right-padded ``tokens`` (batch, seq) with ``lengths`` real tokens each."""
        if bool((lengths < 1).any()) or bool((lengths > tokens.shape[1]).any()):
            raise ValueError(f"lengths must lie in [1, {tokens.shape[1]}], got {lengths.tolist()}")
        h = self.hidden_states(tokens)
        last = h[torch.arange(tokens.shape[0], device=tokens.device), lengths - 1]
        return self.output(last).squeeze(-1)

    @classmethod
    def from_language_model(cls, lm: Transformer, head_std: float = 0.0) -> RewardModel:
        """Start from a (pretrained or SFT) language model: same backbone, a fresh scalar head.

        The head starts at zero by default, so every initial score is 0 (a neutral start).
        """
        rm = cls(lm.args).to(device=lm.output.weight.device, dtype=lm.output.weight.dtype)
        backbone = {k: v for k, v in lm.state_dict().items() if not k.startswith("output.")}
        rm.load_state_dict(backbone, strict=False)
        with torch.no_grad():
            if head_std:
                rm.output.weight.normal_(std=head_std)
            else:
                rm.output.weight.zero_()
        return rm
