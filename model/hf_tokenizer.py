"""The Hugging Face backend of the tokenizer interface: a ``tokenizer.json`` through the ``tokenizers``
library, as SmolLM2 and most Hugging Face models ship theirs (byte-level BPE).

Special ids come from the files beside it, as transformers reads them: ``tokenizer_config.json``
names the BOS / EOS / PAD tokens (else ``config.json`` gives their ids). Whether the model starts a
sequence with BOS is the tokenizer's own post-processor's answer (what ``add_special_tokens=True``
puts in front), unless ``tokenizer_config.json`` says ``add_bos_token``: SmolLM2 names
``<|im_start|>`` as its BOS token but never adds it, so its ``bos_id`` is None.

Text is encoded as text: a special token's spelling inside a message is not a control token
(``encode_special_tokens``), as SentencePiece reads ``<s>`` in text; only a rendered chat template,
which spells its special tokens out, is read with them (``encode_with_specials``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from model.tokenizer import HF_TOKENIZER_FILE, TokenizerError, copy_into

TOKENIZER_CONFIG = "tokenizer_config.json"
SUPPORTED_MODELS = ("BPE",)  # Llama-architecture models use BPE (SentencePiece's or byte-level)


class HFTokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer not found at {path}")
        try:
            kind = json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("type")
            self.backend = Backend.from_file(str(path)) if kind in SUPPORTED_MODELS else None
        except Exception as err:  # invalid JSON, or the Rust side's plain Exception with its parser's message
            raise TokenizerError(f"{path} is not a Hugging Face tokenizer.json: {err}") from None
        if self.backend is None:
            raise TokenizerError(f"{path} is a {kind} tokenizer; Llama-architecture models use BPE")
        self.backend.encode_special_tokens = True
        self.path = path
        self.n_words: int = self.backend.get_vocab_size(with_added_tokens=True)
        settings = _settings(path.parent)
        self.eos_id: int = self._special(settings, "eos")
        if self.eos_id is None:
            raise TokenizerError(f"{path}: no EOS token in {TOKENIZER_CONFIG} (eos_token) or config.json (eos_token_id)")
        self.pad_id: int | None = self._special(settings, "pad")
        self.bos_id: int | None = self._bos(settings)

    def _special(self, settings: dict[str, Any], name: str) -> int | None:
        token = settings.get(f"{name}_token")
        if isinstance(token, dict):  # an AddedToken as transformers serializes it
            token = token.get("content")
        if isinstance(token, str):
            found = self.backend.token_to_id(token)
            if found is None:
                raise TokenizerError(f"{self.path}: its {name}_token {token!r} is not in the vocabulary")
            return found
        value = settings.get(f"{name}_token_id")
        return value[0] if isinstance(value, list) else value

    def _bos(self, settings: dict[str, Any]) -> int | None:
        if "add_bos_token" in settings:
            return self._special(settings, "bos") if settings["add_bos_token"] else None
        with self._specials_read():  # the post-processor's own special tokens, not text
            added = self.backend.encode("a", add_special_tokens=True).ids
            plain = self.backend.encode("a", add_special_tokens=False).ids
        prefix = added[: len(added) - len(plain)] if added[-len(plain):] == plain else added[:0]
        return prefix[0] if prefix else None

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        head = [self.bos_id] if bos and self.bos_id is not None else []
        return head + ids + [self.eos_id] * eos

    def encode_with_specials(self, text: str) -> list[int]:
        with self._specials_read():
            return self.backend.encode(text, add_special_tokens=False).ids

    @contextmanager
    def _specials_read(self) -> Iterator[None]:
        """Within the block, the backend reads special tokens' spellings in text as those tokens."""
        self.backend.encode_special_tokens = False
        try:
            yield
        finally:
            self.backend.encode_special_tokens = True

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # The _fast variant (tokenizers >= 0.20) skips the character offsets, which ids never need:
        # the same ids for ~20% less CPU (bench/tokenizer_backends.py).
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    def token(self, token_id: int) -> str:
        return self.backend.id_to_token(token_id)

    def save(self, directory: Path) -> Path:
        return copy_into(self.path, Path(directory) / HF_TOKENIZER_FILE)


def _settings(directory: Path) -> dict[str, Any]:
    """``config.json`` overlaid by ``tokenizer_config.json`` (the tokenizer's own file wins), where present."""
    settings: dict[str, Any] = {}
    for name in ("config.json", TOKENIZER_CONFIG):
        file = directory / name
        if file.is_file():
            try:
                settings.update(json.loads(file.read_text(encoding="utf-8")))
            except json.JSONDecodeError as err:
                raise TokenizerError(f"{file} is not valid JSON ({err})") from None
    return settings
