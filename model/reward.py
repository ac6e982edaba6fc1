"""Reward model: the Llama backbone with a scalar head in place of the LM head (Llama 2 §3.2.2).

The score of a sequence is read at its last real token (its EOS), whatever the padding: the
mask says which tokens are real; positions count real tokens only and padding is attended by
nothing, so left-, right- and un-padded rows of the same sequence score the same.
"""

from __future__ import annotations

import torch

from model.args import ModelArgs
from model.llama import Transformer


class RewardModel(Transformer):
    def __init__(self, args: ModelArgs):
        super().__init__(args, out_features=1)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Scores (batch,) of ``tokens`` (batch, seq) whose real tokens ``mask`` (batch, seq, bool) marks."""
        mask = mask.bool()
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every row needs at least one real token")
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        segments = torch.where(mask, 0, -1)
        h = self.hidden_states(tokens, positions=positions, segments=segments)
        index = torch.arange(tokens.shape[1], device=tokens.device)
        last = torch.where(mask, index, -1).argmax(dim=1)
        # sum over the 1-wide head rather than squeeze: a new tensor, not a view, which FSDP's hooks need
        return self.output(h[torch.arange(tokens.shape[0], device=tokens.device), last]).sum(-1)

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
