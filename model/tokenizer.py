"""The one tokenizer interface, with two backends: SentencePiece (``tokenizer.model``: Meta's Llama 2
tokenizer, or one this project trains with the same settings) and Hugging Face ``tokenizers``
(``tokenizer.json``: byte-level BPE models such as SmolLM2, or one rebuilt from a GGUF's metadata).

Every consumer (training data, chat format, SFT masks, reward scoring, rollouts, evaluation,
exports) holds a ``Tokenizer`` and asks it for its special ids: BOS, EOS and PAD are the model's,
never literals. ``bos_id`` is None for a model that starts a sequence with no BOS (SmolLM2), and
``encode(..., bos=True)`` then adds nothing; ``pad_id`` is None for one without a pad token
(Llama 2).

    load_tokenizer(path)   a model directory (tokenizer.model preferred, else tokenizer.json) or a file
"""

from __future__ import annotations

import re
import shutil
from functools import cached_property
from pathlib import Path
from typing import Protocol

from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2

SENTENCEPIECE_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """A tokenizer that is missing or cannot serve a Llama model; the message names the file."""


class Tokenizer(Protocol):
    path: Path  # the file it was read from
    n_words: int  # vocabulary size, special tokens included
    bos_id: int | None  # what encode(bos=True) puts first; None: the model uses no BOS
    eos_id: int
    pad_id: int | None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings inside it are text, never control tokens."""

    def encode_with_specials(self, text: str) -> list[int]:
        """Token ids of ``text`` in which a special token's spelling is that token, as transformers
        tokenizes a rendered chat template (which writes BOS, EOS, ``<|im_start|>`` as text)."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of many texts at once, on the backend's own threads."""

    def decode(self, ids: list[int]) -> str: ...

    def token(self, token_id: int) -> str:
        """The vocabulary's spelling of one id (a piece, or a special token's text)."""

    def save(self, directory: Path) -> Path:
        """Copy the tokenizer's file into a model directory; return the copy."""


class SentencePieceTokenizer:
    """A Llama 2 ``tokenizer.model``, as Meta's ``llama/tokenizer.py`` loads it, checked on load.
    ``sp`` is the processor itself, for the tokenizer-training stage's own statistics."""

    def __init__(self, model_path: str | Path):
        model_path = Path(model_path)
        if not model_path.is_file():
            raise TokenizerError(
                f"tokenizer model not found at {model_path}; run the train_tokenizer stage "
                "or point to a Llama 2 tokenizer.model"
            )
        proto = sentencepiece_model_pb2.ModelProto()
        try:
            proto.ParseFromString(model_path.read_bytes())
            self.sp = SentencePieceProcessor(model_proto=proto.SerializeToString())
        except Exception as err:  # protobuf and sentencepiece raise several unrelated types
            raise TokenizerError(f"{model_path} is not a SentencePiece model: {err}") from None
        if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
            kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
            raise TokenizerError(f"{model_path} is a {kind} model; Llama 2 uses BPE")
        self.path = model_path
        self.n_words: int = self.sp.vocab_size()
        if self.sp.bos_id() < 0 or self.sp.eos_id() < 0:
            raise TokenizerError(f"{model_path} has no BOS/EOS piece (bos_id={self.sp.bos_id()}, eos_id={self.sp.eos_id()})")
        self.bos_id: int | None = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int | None = self.sp.pad_id() if self.sp.pad_id() >= 0 else None  # Llama 2 has none

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return [self.bos_id] * bos + self.sp.encode(text) + [self.eos_id] * eos

    def encode_with_specials(self, text: str) -> list[int]:
        ids: list[int] = []
        for part in self._special_spellings.split(text):
            special = self._specials.get(part)
            ids += self.sp.encode(part) if special is None else [special]
        return ids

    @cached_property
    def _specials(self) -> dict[str, int]:
        """The pieces SentencePiece never reads in text (``<s>``, ``</s>``, ``<unk>``), which transformers
        adds as special tokens; user-defined pieces SentencePiece matches itself."""
        return {self.sp.id_to_piece(i): i for i in range(self.n_words) if self.sp.IsControl(i) or self.sp.IsUnknown(i)}

    @cached_property
    def _special_spellings(self) -> re.Pattern:
        return re.compile("(" + "|".join(re.escape(s) for s in sorted(self._specials, key=len, reverse=True)) + ")")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)

    def token(self, token_id: int) -> str:
        return self.sp.id_to_piece(token_id)

    def save(self, directory: Path) -> Path:
        return copy_into(self.path, Path(directory) / SENTENCEPIECE_FILE)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer at ``path``: a ``tokenizer.model``, a ``tokenizer.json``, or a model directory
    holding either (a SentencePiece model wins: it is what Meta's Llama 2 checkpoints were trained with,
    and transformers' ``tokenizer.json`` beside it is a conversion of it)."""
    path = Path(path)
    if path.is_dir():
        for name in (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE):
            if (path / name).is_file():
                return load_tokenizer(path / name)
        raise TokenizerError(f"{path} holds no tokenizer: expected {SENTENCEPIECE_FILE} or {HF_TOKENIZER_FILE}")
    if path.suffix == ".json":
        from model.hf_tokenizer import HFTokenizer

        return HFTokenizer(path)
    return SentencePieceTokenizer(path)


def copy_into(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != target.resolve():
        shutil.copy2(source, target)
    return target
