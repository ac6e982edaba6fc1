"""SentencePiece tokenizer wrapper, as Meta's ``llama/tokenizer.py``: loads any Llama 2 ``tokenizer.model``
(Meta's own, or one trained by this project with the same settings)."""

from __future__ import annotations

from pathlib import Path

from sentencepiece import SentencePieceProcessor


class Tokenizer:
    def __init__(self, model_path: str | Path):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"tokenizer model not found at {model_path}; run the train_tokenizer stage "
                "or point to a Llama 2 tokenizer.model"
            )
        self.sp = SentencePieceProcessor(model_file=str(model_path))
        self.n_words: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()  # -1 for Llama 2: it has no pad token

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)
