"""`llama2 chat MODEL`: talk to a model in its chat format, each answer shown as it is written.

    llama2 chat MODEL [--prompt TEXT] [--system TEXT] [--chat-format {model,llama2}] [--temperature T]
                      [--top-p P] [--max-new-tokens N] [--seed S]

MODEL: models:/NAME/VERSION, a stage of the current config (`llama2 chat sft --pipeline chat`), an
MLflow stage run id, a model directory or a .gguf file. The dialog is written in the chat template
the model declares (`chat_template` in its tokenizer_config.json, or chat_template.jinja; a GGUF's
tokenizer.chat_template), rendered as transformers renders it, special tokens in it read as such,
and an answer ends at the tokenizer's EOS: the Llama 2 format for a model fine-tuned here, its own
(e.g. SmolLM2's ChatML) for one imported. A model that declares none, or --chat-format llama2, is
talked to in the Llama 2 chat format ([INST] ... [/INST]). Which one is used is said on stderr.

Without --prompt the chat is interactive: the dialog keeps its history (when it outgrows the
model's context the oldest exchanges are dropped, and it says so), /reset forgets it, /system TEXT
sets the system prompt (/system alone clears it), Ctrl-D ends. With --prompt the answer to that one
message is printed and the command exits. Answers go to stdout, everything else to stderr.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from pipelines.cli.model_options import ModelOptions, add_model_options, load_model_source
from pipelines.cli.options import at_least, probability

if TYPE_CHECKING:
    from pathlib import Path

    from model.chat_template import ChatTemplate
    from model.dialog import Dialog
    from model.generate import Generator
    from model.tokenizer import Tokenizer

CHAT_FORMATS = ("model", "llama2")  # --chat-format: the template the model declares, or Llama 2's format
LLAMA2_FORMAT = "the Llama 2 chat format ([INST] ... [/INST])"


def add_chat_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    chat = commands.add_parser(
        "chat", help="talk to a model: a registered version, a stage of the config, a run, a directory or a GGUF file",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(chat)
    chat.add_argument("--prompt", metavar="TEXT", help="answer this one message on stdout and exit (for scripts)")
    chat.add_argument("--system", metavar="TEXT", help="system prompt of the dialog")
    add_chat_format_option(chat)
    chat.add_argument("--temperature", type=at_least(0.0, float), default=0.6,
                      help="sampling temperature, 0 = greedy (default: 0.6, Meta's chat default)")
    chat.add_argument("--top-p", type=probability, default=0.9, help="nucleus sampling mass (default: 0.9)")
    chat.add_argument("--max-new-tokens", type=at_least(1, int), default=512,
                      help="longest answer, in tokens (default: 512)")
    chat.add_argument("--seed", type=int, help="seed of the sampling, for answers that repeat (default: a fresh one)")
    chat.set_defaults(handler=_cmd_chat)
    return chat


def add_chat_format_option(parser: argparse.ArgumentParser) -> None:
    """--chat-format, which `llama2 chat` and `llama2 serve` share."""
    parser.add_argument("--chat-format", choices=CHAT_FORMATS, default="model",
                        help="model: the chat template the model declares (Llama 2's format where it declares none); "
                        "llama2: the Llama 2 chat format whatever it declares (default: model)")


@dataclass
class ChatSession:
    generator: Generator
    tokenizer: Tokenizer
    dialog: Dialog
    temperature: float
    top_p: float

    def answer(self, message: str, out: TextIO, notes: TextIO) -> None:
        """Write the answer to `message` to `out` as its tokens arrive, and keep the exchange."""
        from model.dialog import AnswerText

        prompt = self.dialog.prompt(message)
        if prompt.dropped:
            print(f"(the dialog outgrew the model's context of {self.dialog.max_seq_len} tokens: its {prompt.dropped} "
                  f"oldest exchange{'s' if prompt.dropped > 1 else ''} dropped)", file=notes)
        text, ended = AnswerText(self.tokenizer), False
        for token in self.generator.stream(prompt.tokens, self.dialog.answer_tokens, self.temperature, self.top_p,
                                           eos_id=self.tokenizer.eos_id):
            if token == self.tokenizer.eos_id:
                ended = True
                break
            out.write(text.add(token))
            out.flush()
        out.write(text.rest() + "\n")
        out.flush()
        if not ended:
            print(f"(the answer was cut at {len(text.ids)} tokens: --max-new-tokens or the model's context)",
                  file=notes)
        elif not text.ids:
            print("(the model wrote its end of sequence before any word: an empty answer)", file=notes)
        self.dialog.record(message, text.text())


def converse(session: ChatSession, out: TextIO, notes: TextIO) -> int:
    """The interactive chat: one message per line of stdin until its end (Ctrl-D)."""
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401  (input() then edits the line and keeps a history)
    while True:
        try:
            message = input("> " if interactive else "").strip()
        except EOFError:
            out.write("\n" if interactive else "")
            return 0
        if message == "/reset":
            session.dialog.reset()
            print("(dialog forgotten; the system prompt stays)", file=notes)
        elif message == "/system" or message.startswith("/system "):
            session.dialog.system = message.removeprefix("/system").strip() or None
            print(f"(system prompt {'set' if session.dialog.system else 'cleared'})", file=notes)
        elif message.startswith("/"):
            print(f"(unknown command {message.split()[0]}: /reset, /system TEXT; Ctrl-D ends)", file=notes)
        elif message:
            session.answer(message, out, notes)


def chat_template(directory: Path, tokenizer: Tokenizer, chat_format: str) -> tuple[ChatTemplate | None, str]:
    """The template a dialog with the model in ``directory`` is rendered with (None: the Llama 2 chat
    format of model/chat_format.py) and the line that tells the user which format that is."""
    from model.chat_template import declared_chat_template, llama2_chat_template

    if chat_format == "llama2":
        return None, f"chat format: {LLAMA2_FORMAT}, as --chat-format llama2 asks"
    template = declared_chat_template(directory)
    if template is None:
        return None, f"chat format: {LLAMA2_FORMAT}: the model declares no chat template"
    if template.source == llama2_chat_template(tokenizer):
        return template, f"chat format: {LLAMA2_FORMAT}, the chat template the model declares"
    return template, "chat format: the model's own chat template"


def _cmd_chat(args: argparse.Namespace) -> int:
    import torch

    from model.dialog import Dialog
    from model.generate import Generator

    with ModelOptions(args).model() as source:
        model, tokenizer = load_model_source(source)
        template, says = chat_template(source.directory, tokenizer, args.chat_format)
        print(says, file=sys.stderr)
        if args.seed is None:
            torch.seed()
        else:
            torch.manual_seed(args.seed)
        session = ChatSession(Generator(model, prefix_cache=True), tokenizer,
                              Dialog(tokenizer, model.args.max_seq_len, args.max_new_tokens, system=args.system,
                                     template=template),
                              args.temperature, args.top_p)
        if args.prompt is not None:
            session.answer(args.prompt, sys.stdout, sys.stderr)
            return 0
        print(f"chatting with {source.reference} ({model.args.max_seq_len} tokens of context): /reset forgets the "
              "dialog, /system TEXT sets the system prompt, Ctrl-D ends", file=sys.stderr)
        return converse(session, sys.stdout, sys.stderr)

