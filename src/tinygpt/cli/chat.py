"""`tinygpt chat`: a conversation with a fine-tuned run in the terminal.

Parses arguments and runs the read-answer loop (`ChatSession`); the answers come from
`tinygpt.infer.generate.TextGenerator.chat_stream`, the rendering from the run's template
(`tinygpt.data.template`). Answers go to standard output as they are generated; notes (the banner,
commands' replies, turns left out of the context) go to standard error, so that piping
questions in gives only the answers out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from tinygpt.core.errors import TinyGPTError

DESCRIPTION = """\
A multi-turn conversation with a run that has a chat template (fine-tuned with
`tinygpt finetune`). Answers stream to standard output; the oldest turns are left out, with
a note, when the conversation outgrows the context. With -p, answer one message and exit.
With --seed S, turn i is sampled with seed S + i."""
HELP = """\
commands:
  /reset        forget the conversation (the system message stays)
  /system TEXT  set the system message (/system alone removes it)
  /temp T       sampling temperature (0 = greedy)
  /help         this list
  /quit         leave (also Ctrl-D)"""


def register(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.cli.model import add_sampling_arguments, add_threads_argument

    p = sub.add_parser(
        "chat",
        help="chat with a fine-tuned run in the terminal",
        description=DESCRIPTION + "\n\n" + HELP,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a fine-tuned run folder")
    p.add_argument("-p", "--prompt", default=None, help="answer this message and exit")
    p.add_argument("--system", default=None, metavar="S", help="a system message")
    p.add_argument("--checkpoint", default="best", help="best, latest or step-N")
    add_sampling_arguments(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_threads_argument(p)
    p.set_defaults(func=run_chat)


class ChatSession:
    """The conversation of one `tinygpt chat`: history, system message, sampling settings,
    and the slash commands."""

    def __init__(
        self,
        generator: Any,
        sampling: dict[str, Any],
        *,
        system: str | None = None,
        seed: int | None = None,
        out: TextIO | None = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.gen = generator
        self.sampling = dict(sampling)
        self.system = system or None
        self.seed = seed
        self.turn = 0
        self.history: list[dict[str, str]] = []
        self.out = out if out is not None else sys.stdout
        self.note = note or (lambda line: print(line, file=sys.stderr, flush=True))

    def messages(self, user: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": user}]

    def answer(self, user: str) -> str:
        """Stream the answer to `user` to `out`; keep both in the history."""
        kept, dropped = self.gen.fit_history(
            self.messages(user), self.sampling.get("max_new_tokens", 256)
        )
        if dropped:
            self.note(
                f"(the {dropped} oldest messages no longer fit the model's context and were"
                " left out)"
            )
            self.history = [m for m in kept if m["role"] != "system"][:-1]
        seed = None if self.seed is None else self.seed + self.turn
        self.turn += 1
        pieces = []
        try:
            for piece in self.gen.chat_stream(kept, seed=seed, **self.sampling):
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            self.out.write("\n")
            self.note("(answer interrupted; the turn is forgotten)")
            return "".join(pieces)
        self.out.write("\n")
        self.out.flush()
        text = "".join(pieces)
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        return text

    def command(self, line: str) -> bool:
        """Run a slash command; False when it says to leave."""
        from tinygpt.infer.generate import check_sampling

        name, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.history = []
            self.note("(conversation forgotten)")
        elif name == "/system":
            self.system = rest or None
            self.note(f"(system message: {rest!r})" if rest else "(no system message)")
        elif name == "/temp":
            try:
                value = float(rest)
            except ValueError:
                raise TinyGPTError(f"/temp needs a number, e.g. /temp 0.7 (got {rest!r})") from None
            check_sampling(**{**self._checkable(), "temperature": value})
            self.sampling["temperature"] = value
            self.note(f"(temperature {value:g})")
        elif name == "/help":
            self.note(HELP)
        else:
            raise TinyGPTError(f"unknown command {name}; /help lists the commands")
        return True

    def _checkable(self) -> dict[str, Any]:
        keys = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")
        return {k: self.sampling[k] for k in keys if k in self.sampling}


def run_chat(args: argparse.Namespace) -> int:
    from tinygpt.cli.model import set_threads
    from tinygpt.core.run import RunDir
    from tinygpt.infer.generate import check_sampling, load
    from tinygpt.infer.loader import load_text_side

    set_threads(args.threads)
    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )
    check_sampling(**sampling)
    run = RunDir(args.run).require()
    if load_text_side(run)[1] is None:
        raise TinyGPTError(
            f"{args.run} has no chat template: it was only pre-trained. Fine-tune it on"
            f" conversations first (tinygpt finetune {args.run} --input FILE.jsonl --out RUN),"
            f" or continue text with: tinygpt sample {args.run} --prompt TEXT"
        )
    gen = load(run.path, checkpoint=args.checkpoint, device=args.device)
    session = ChatSession(gen, sampling, system=args.system, seed=args.seed)
    if args.prompt is not None:
        session.answer(args.prompt)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        assert gen.template is not None  # a run without one was refused above
        session.note(
            f"chatting with {args.run} (template {gen.template.name}, context "
            f"{gen.model.config.block_size} tokens); /help lists the commands, /quit leaves"
        )
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        if not line.strip():
            continue
        try:
            if line.lstrip().startswith("/"):
                if not session.command(line):
                    break
            else:
                session.answer(line)
        except TinyGPTError as exc:  # a bad command or message: say so and go on
            print(f"tinygpt: error: {exc}", file=sys.stderr, flush=True)
    return 0
