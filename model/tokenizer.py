"""The one way to load a Llama 2 SentencePiece ``tokenizer.model``, as Meta's ``llama/tokenizer.py`` does
(Meta's own, or one trained by this project with the same settings), checked on load.

Every consumer (training data, chat format, evaluation, exports) goes through ``Tokenizer``;
``Tokenizer.sp`` is the SentencePiece processor for batched, multi-threaded encoding.
"""

from __future__ import annotations

from pathlib import Path

from sentencepiece import SentencePieceProcessor, sentencepiece_model_pb2


class TokenizerError(ValueError):
    """A tokenizer.model that is missing or cannot serve as a Llama tokenizer; the message names it."""


class Tokenizer:
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
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()  # -1 for Llama 2: it has no pad token
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(f"{model_path} has no BOS/EOS piece (bos_id={self.bos_id}, eos_id={self.eos_id})")

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)
