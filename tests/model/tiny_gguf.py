"""A tiny Llama GGUF written with the gguf package's own writer: a seeded model's float32 weights
(query/key rows in Meta's layout, as llama.cpp's converter stores them) and a byte-level BPE
vocabulary, so the GGUF reader is tested in seconds without the 98 MB SmolLM2 file."""

from __future__ import annotations

from pathlib import Path

import gguf
import torch

from model.args import ModelArgs
from model.llama import Transformer

_TOP = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_LAYER = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
          "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
          "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The ChatML template SmolLM2-135M-Instruct's GGUF declares (tokenizer.chat_template), for these specials.
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
WORDS = ["the", "river", "data", "dog", "lazy"]


def byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            spelled[byte] = chr(byte)
        else:
            spelled[byte], extra = chr(256 + extra), extra + 1
    return [spelled[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[str]]:
    """Special tokens, the byte alphabet, and whole words with the merges that build them ("Ġthe" too)."""
    tokens, merges = [*SPECIALS, *byte_alphabet()], []
    for word in WORDS:
        for end in range(2, len(word) + 1):
            merges.append(f"{word[:end - 1]} {word[end - 1]}")
            tokens.append(word[:end])
        merges.append(f"Ġ {word}")
        tokens.append("Ġ" + word)
    return tokens, merges


def write_tiny_gguf(path: Path, args: ModelArgs, architecture: str = "llama", seed: int = 0,
                    chat_template: str | None = None) -> Transformer:
    """Write a GGUF of a seeded model with `args` (tied: no output tensor), declaring `chat_template`
    where one is given; return the model."""
    tokens, merges = vocabulary()
    args = args.replace(vocab_size=len(tokens))
    torch.manual_seed(seed)
    model = Transformer(args)
    model.init_weights()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(args.n_layers)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_feed_forward_length(args.ffn_hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.kv_heads)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS)))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for name, weight in model.state_dict().items():
        if args.tie_word_embeddings and name == "output.weight":
            continue
        writer.add_tensor(_gguf_name(name), weight.float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


def _gguf_name(name: str) -> str:
    parts = name.removesuffix(".weight").split(".")
    if parts[0] == "layers":
        return f"blk.{parts[1]}.{_LAYER['.'.join(parts[2:])]}.weight"
    return f"{_TOP[parts[0]]}.weight"
