"""Chat templates: how a conversation becomes text, token ids and a loss mask.

Owns: the built-in templates (`default`, `chatml`, `inst`), checking a list of messages,
rendering it to text, encoding it to ids with the mask of the tokens a fine-tuning loss
scores, the equivalent Hugging Face Jinja template, and the template file of a run folder
(`RUN/chat_template.json`). Each template is defined once, as data (`ChatTemplate`); the
text, the ids, the mask and the Jinja are all derived from that one definition, so training,
`tinygpt chat`, the Python API, a server and an exported Hugging Face tokenizer render a
conversation identically. Knows nothing about models, training or sampling: it is handed a
tokenizer and gives back ids.

Messages are `[{"role": "system" | "user" | "assistant", "content": str}, ...]`: an
optional system message first, then user and assistant messages alternating, starting with
a user message (`validate_messages`).

The special-token rule, one for every path:

    In training data, only template rendering produces special ids; in user prompts,
    special strings are text unless a template put them there.

- `tinygpt prepare` encodes its text with special tokens off: a literal `<INST>` in a
  corpus is the characters `<`, `I`, `N`, ... .
- `ChatTemplate.encode` gives special ids only where the template writes its markers.
  Message contents are always text, so a user who types `<|end|>` gets those seven
  characters, never the end-of-turn id. Each stretch of text between two template markers
  (template text and message content together, as rendered) is encoded as one string with
  special tokens off; the markers are looked up. So the ids equal
  `tokenizer.encode(template.render(messages), allowed_special=True)` whenever no content
  holds a special string, and differ only there otherwise.
- `TextGenerator.encode_prompt` (`tinygpt sample`, the Python API) and `tinygpt attention`
  encode a prompt as text; an empty prompt starts at a document boundary, the
  `<|endoftext|>` id.

Hugging Face `transformers` renders our Jinja to the same text and, tokenizing it with the
markers as added tokens, to the same ids (tests/test_chat.py checks both). With
`sanitize_control_tokens=True` it also keeps user-typed markers as text, but encodes such a
marker apart from the text around it, so near one the ids may differ from ours while the
text is the same.

The loss mask marks, by default, every assistant message's tokens and the end-of-turn token
that closes it, and nothing else: not the system or user messages, not the role headers,
not the text a template adds after the end-of-turn token. `train_on_prompt=True` marks every
token. A token that straddles a boundary (byte-level BPE can join a header's newline with a
newline that opens the assistant's message) is scored when any of its bytes is: the rule
`transformers` uses for `return_assistant_tokens_mask`. The mask is over ids; the model
predicts ids[t + 1] from ids[:t + 1], so the targets are ids[1:] with -1 where mask[1:] is 0
(`tinygpt.train.finetune.masked_targets`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import atomic_write_json
from tinygpt.core.run import CHAT_TEMPLATE as TEMPLATE_FILE
from tinygpt.data.tokenizer import Tokenizer

ROLES = ("system", "user", "assistant")
TEMPLATE_FORMAT = 1
DEFAULT_TEMPLATE = "default"

Message = dict[str, Any]


# ------------------------------------------------------------------------------ messages


def validate_messages(
    messages: Any, *, add_generation_prompt: bool = False, training: bool = False
) -> None:
    """Raise a `TinyGPTError` naming the message at fault unless `messages` is a well-formed
    conversation: a list of {"role", "content"} dicts with string contents, an optional
    system message first, then user and assistant alternating from a user message.

    `add_generation_prompt` also needs the last message to be the user's (the assistant
    answers it); `training` needs at least one assistant message (something to learn).
    Keys other than role and content are ignored.

    >>> validate_messages([{"role": "user", "content": "hi"}])
    >>> validate_messages([{"role": "user", "content": "hi"}], training=True)
    Traceback (most recent call last):
    ...
    tinygpt.core.errors.TinyGPTError: the conversation has no assistant message; a training example needs at least one answer to learn from
    """
    if not isinstance(messages, (list, tuple)):
        raise TinyGPTError(
            f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise TinyGPTError("the conversation is empty; give at least one user message")
    start = 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TinyGPTError(
                f"message {i} is a {type(m).__name__}, not a {{'role': ..., 'content': ...}} dict"
            )
        for key in ("role", "content"):
            if key not in m:
                raise TinyGPTError(f"message {i} has no {key!r}; every message needs both")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            close = difflib.get_close_matches(str(role), ROLES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TinyGPTError(f"message {i} has role {role!r}{hint}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TinyGPTError(
                f"message {i}'s content is a {type(content).__name__}, not a string; "
                "give the text of the message"
            )
        if role == "system":
            if i != 0:
                raise TinyGPTError(
                    f"message {i} is a system message; only the first message may be one"
                )
            start = 1
            continue
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if role != expected:
            raise TinyGPTError(
                f"message {i} is from the {role} where the {expected} was expected; after an "
                "optional system message, roles alternate user, assistant, user, ..."
            )
    if len(messages) == start:
        raise TinyGPTError("the conversation has no user message; give at least one")
    if add_generation_prompt and messages[-1]["role"] != "user":
        raise TinyGPTError(
            f"the last message (message {len(messages) - 1}) is the assistant's; asking for "
            "the assistant's answer needs the conversation to end with a user message"
        )
    if training and not any(m["role"] == "assistant" for m in messages):
        raise TinyGPTError(
            "the conversation has no assistant message; a training example needs at least "
            "one answer to learn from"
        )


# ------------------------------------------------------------------------------ templates


@dataclass(frozen=True)
class Segment:
    """A piece of a rendered conversation: a special token the template placed, or text
    (template text or message content); `scored` when the default loss mask covers it."""

    text: str
    special: bool
    scored: bool


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format, as data.

    A message renders as prefix + content + suffix of its role. The assistant's prefix is
    also the generation prompt; its suffix begins with `end_of_turn`, the token that ends
    the assistant's turn (generation stops there). `system` is None for a format without a
    system turn: then a system message's content, when not empty, is put in front of the
    first user message's content, joined by `system_joiner`, inside the user's markers.
    `special_tokens` are the strings that must be single special tokens; the templates'
    other text (role names, newlines) is ordinary text.
    """

    name: str
    description: str
    special_tokens: tuple[str, ...]
    end_of_turn: str
    user: tuple[str, str]
    assistant: tuple[str, str]
    system: tuple[str, str] | None = None
    system_joiner: str = "\n\n"

    def __post_init__(self) -> None:
        if self.end_of_turn not in self.special_tokens:
            raise TinyGPTError(f"template {self.name}: end_of_turn must be a special token")
        if not self.assistant[1].startswith(self.end_of_turn):
            raise TinyGPTError(
                f"template {self.name}: the assistant's suffix must begin with end_of_turn"
            )

    # --- text --------------------------------------------------------------------------
    def segments(
        self, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> list[Segment]:
        """The rendered conversation as a list of segments (see `Segment`), validated."""
        validate_messages(messages, add_generation_prompt=add_generation_prompt)
        out: list[Segment] = []
        pending_system = ""
        for i, m in enumerate(messages):
            role, content = m["role"], m["content"]
            if role == "system":
                if self.system is None:
                    pending_system = content
                else:
                    self._literal(out, self.system[0])
                    self._text(out, content, scored=False)
                    self._literal(out, self.system[1])
            elif role == "user":
                self._literal(out, self.user[0])
                if pending_system and i == 1:
                    self._text(out, pending_system + self.system_joiner, scored=False)
                self._text(out, content, scored=False)
                self._literal(out, self.user[1])
            else:
                before, after = self.assistant
                self._literal(out, before)
                self._text(out, content, scored=True)
                out.append(Segment(self.end_of_turn, special=True, scored=True))
                self._literal(out, after[len(self.end_of_turn) :])
        if add_generation_prompt:
            self._literal(out, self.assistant[0])
        return out

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as text, markers written as their strings; with
        `add_generation_prompt`, followed by the assistant's prefix (the model answers next)."""
        return "".join(s.text for s in self.segments(messages, add_generation_prompt))

    def _literal(self, out: list[Segment], text: str) -> None:
        """Template text: its special-token strings become special segments."""
        start = 0
        for m in self._special_re.finditer(text):
            self._text(out, text[start : m.start()], scored=False)
            out.append(Segment(m.group(), special=True, scored=False))
            start = m.end()
        self._text(out, text[start:], scored=False)

    @staticmethod
    def _text(out: list[Segment], text: str, *, scored: bool) -> None:
        if text:
            out.append(Segment(text, special=False, scored=scored))

    @property
    def _special_re(self) -> re.Pattern[str]:
        names = sorted(self.special_tokens, key=len, reverse=True)
        return re.compile("|".join(re.escape(s) for s in names))

    # --- ids ---------------------------------------------------------------------------
    def encode(
        self,
        tokenizer: Tokenizer,
        messages: Sequence[Message],
        add_generation_prompt: bool = False,
        train_on_prompt: bool = False,
    ) -> tuple[list[int], list[int]]:
        """(ids, loss_mask) of the rendered conversation; mask[t] is 1 where the loss scores
        token t (see the module docstring), 0 elsewhere.

        Without `add_generation_prompt` the ids are a training example, so the conversation
        must hold an assistant message. The tokenizer must have the template's special
        tokens (`tokenizer.with_special_tokens(template.special_tokens)` adds them).
        """
        validate_messages(
            messages,
            add_generation_prompt=add_generation_prompt,
            training=not add_generation_prompt,
        )
        specials = tokenizer.special_tokens
        missing = [s for s in self.special_tokens if s not in specials]
        if missing:
            raise TinyGPTError(
                f"the tokenizer lacks the special token(s) {', '.join(missing)} of template "
                f"{self.name!r}; add them with tokenizer.with_special_tokens(...) (fine-tuning "
                "does this and grows the model's vocabulary)"
            )
        ids: list[int] = []
        mask: list[int] = []
        run: list[Segment] = []
        for seg in [*self.segments(messages, add_generation_prompt), None]:
            if seg is not None and not seg.special:
                run.append(seg)
                continue
            if run:
                run_ids, run_mask = _encode_run(tokenizer, run)
                ids += run_ids
                mask += run_mask
                run = []
            if seg is not None:
                ids.append(specials[seg.text])
                mask.append(int(seg.scored))
        if train_on_prompt:
            mask = [1] * len(ids)
        return ids, mask

    # --- Jinja -------------------------------------------------------------------------
    def jinja(self, *, generation_blocks: bool = False) -> str:
        """The Hugging Face chat template (Jinja) that renders exactly what `render` does,
        with the same checks on the roles (it calls `raise_exception`, as `transformers`
        provides). `generation_blocks` wraps each assistant message and its end-of-turn
        token in `{% generation %}` so that `transformers`' `return_assistant_tokens_mask`
        gives our loss mask; not every Jinja engine knows that tag, so exports leave it out.
        """
        q = _jinja_str
        gen_open, gen_close = (
            ("{%- generation -%}", "{%- endgeneration -%}") if generation_blocks else ("", "")
        )
        lines = [
            "{%- if messages | length == 0 -%}",
            "{{ raise_exception('the conversation is empty') }}",
            "{%- endif -%}",
            "{%- if messages[0]['role'] == 'system' -%}",
            "{%- set offset = 1 -%}",
            "{%- else -%}",
            "{%- set offset = 0 -%}",
            "{%- endif -%}",
            "{%- if messages | length == offset -%}",
            "{{ raise_exception('the conversation has no user message') }}",
            "{%- endif -%}",
            "{%- for message in messages -%}",
            "{%- if message['role'] == 'system' and loop.index0 != 0 -%}",
            "{{ raise_exception('only the first message may be a system message') }}",
            "{%- elif message['role'] != 'system' and "
            "(message['role'] == 'user') != ((loop.index0 - offset) % 2 == 0) -%}",
            "{{ raise_exception('roles must alternate user, assistant, user, ...') }}",
            "{%- endif -%}",
            "{%- if message['role'] == 'system' -%}",
        ]
        if self.system is not None:
            lines.append(
                f"{{{{ {q(self.system[0])} + message['content'] + {q(self.system[1])} }}}}"
            )
        # A message is one line: a line break between two {{ }} would be output (only the
        # `-` of a {%- -%} tag eats the whitespace next to it).
        system_first = (
            "{%- if loop.index0 == 1 and offset == 1 and messages[0]['content'] -%}"
            f"{{{{ messages[0]['content'] + {q(self.system_joiner)} }}}}"
            "{%- endif -%}"
            if self.system is None
            else ""
        )
        question = (
            f"{{{{ {q(self.user[0])} }}}}{system_first}"
            f"{{{{ message['content'] + {q(self.user[1])} }}}}"
        )
        after = self.assistant[1][len(self.end_of_turn) :]
        answer = (
            f"{{{{ {q(self.assistant[0])} }}}}{gen_open}"
            f"{{{{ message['content'] + {q(self.end_of_turn)} }}}}{gen_close}"
            + (f"{{{{ {q(after)} }}}}" if after else "")
        )
        lines += [
            "{%- elif message['role'] == 'user' -%}",
            question,
            "{%- elif message['role'] == 'assistant' -%}",
            answer,
            "{%- else -%}",
            "{{ raise_exception('roles are system, user and assistant') }}",
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}",
            "{%- if messages[-1]['role'] != 'user' -%}",
            "{{ raise_exception('the assistant answers a user message: end with one') }}",
            "{%- endif -%}",
            f"{{{{ {q(self.assistant[0])} }}}}",
            "{%- endif -%}",
        ]
        return "\n".join(lines)


def _jinja_str(text: str) -> str:
    """A Jinja string literal for `text` (Jinja reads literals with Python's escapes).

    >>> print(_jinja_str("<|user|>\\n"))
    '<|user|>\\n'
    """
    escaped = (
        text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    )
    return f"'{escaped}'"


def _encode_run(tokenizer: Tokenizer, run: list[Segment]) -> tuple[list[int], list[int]]:
    """Ids and mask of consecutive text segments, encoded as one string (specials off)."""
    text = "".join(s.text for s in run)
    ids = tokenizer.encode(text)
    flags = {s.scored for s in run}
    if len(flags) == 1:
        return ids, [int(flags.pop())] * len(ids)
    parts = [tokenizer.encode(s.text) for s in run]
    if [i for p in parts for i in p] == ids:  # the tokens break where the segments do
        return ids, [int(s.scored) for s, p in zip(run, parts) for _ in p]
    # A token spans a boundary: score it when any of its bytes is scored.
    scored_bytes: list[bool] = []
    for s in run:
        scored_bytes += [s.scored] * len(s.text.encode("utf-8"))
    mask: list[int] = []
    pos = 0
    for i in ids:
        n = len(tokenizer.token_bytes(i))
        mask.append(int(any(scored_bytes[pos : pos + n])))
        pos += n
    if pos != len(scored_bytes):
        raise TinyGPTError("the tokenizer's tokens do not add up to the text's bytes")
    return ids, mask


# ---------------------------------------------------------------------------- built-ins

_TEMPLATES: dict[str, ChatTemplate] = {
    t.name: t
    for t in (
        ChatTemplate(
            name="default",
            description="tinygpt's own: one marker per role, <|end|> closes every message "
            "(the layout Phi-3 uses)",
            special_tokens=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            end_of_turn="<|end|>",
            system=("<|system|>\n", "<|end|>\n"),
            user=("<|user|>\n", "<|end|>\n"),
            assistant=("<|assistant|>\n", "<|end|>\n"),
        ),
        ChatTemplate(
            name="chatml",
            description="ChatML (OpenAI; used by Qwen and many others): "
            "<|im_start|>role, newline, message, <|im_end|>",
            special_tokens=("<|im_start|>", "<|im_end|>"),
            end_of_turn="<|im_end|>",
            system=("<|im_start|>system\n", "<|im_end|>\n"),
            user=("<|im_start|>user\n", "<|im_end|>\n"),
            assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
        ),
        ChatTemplate(
            name="inst",
            description="instruction and response tags, as in the Turkish fine-tuning "
            "guide: <INST>question</INST><RESP>answer</RESP>",
            special_tokens=("<INST>", "</INST>", "<RESP>", "</RESP>"),
            end_of_turn="</RESP>",
            user=("<INST>", "</INST>"),
            assistant=("<RESP>", "</RESP>"),
            system=None,
            system_joiner="\n\n",
        ),
    )
}


def list_templates() -> list[str]:
    """Names of the built-in templates, the default first."""
    return list(_TEMPLATES)


def get_template(name: str) -> ChatTemplate:
    """The built-in template called `name`; an unknown name suggests the closest."""
    try:
        return _TEMPLATES[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(str(name), list(_TEMPLATES), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TinyGPTError(
            f"unknown chat template {name!r}; {hint}choose one of: {', '.join(_TEMPLATES)}"
        ) from None


def template_for_jinja(jinja: str) -> ChatTemplate | None:
    """The built-in template whose Jinja is exactly `jinja` (as an export of ours holds),
    or None."""
    for t in _TEMPLATES.values():
        if jinja in (t.jinja(), t.jinja(generation_blocks=True)):
            return t
    return None


# ------------------------------------------------------------------------------ history


def fit_history(
    template: ChatTemplate, tokenizer: Tokenizer, messages: Sequence[Message], budget: int
) -> tuple[list[Message], int]:
    """(kept messages, number left out): the conversation (ending with a user message)
    with its oldest exchanges left out, one user message and the answer to it at a time,
    until its prompt — rendered with the generation prompt — is at most `budget` tokens.
    A system message stays. When the last user message alone does not fit, an error says
    so.

    >>> from tinygpt.data.tokenizer import CharTokenizer
    >>> tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz "))
    >>> tok = tok.with_special_tokens(get_template("inst").special_tokens)
    >>> turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
    ...          {"role": "user", "content": "how are you"}]
    >>> kept, dropped = fit_history(get_template("inst"), tok, turns, 16)
    >>> [m["content"] for m in kept], dropped
    (['how are you'], 2)
    """
    validate_messages(messages, add_generation_prompt=True)
    head = list(messages[:1]) if messages[0]["role"] == "system" else []
    turns = list(messages[len(head) :])
    dropped = 0
    while True:
        kept = head + turns
        ids, _ = template.encode(tokenizer, kept, add_generation_prompt=True)
        if len(ids) <= budget:
            return kept, dropped
        if len(turns) == 1:
            raise TinyGPTError(
                f"the last message takes {len(ids)} tokens with the template, more than the "
                f"{budget} the model's context leaves for it; shorten it (or the system "
                "message), or ask for fewer new tokens"
            )
        turns = turns[2:]  # the oldest user message and the answer to it
        dropped += 2


# --------------------------------------------------------------------------- run folder


def save_template(run_dir: str | os.PathLike[str], template: ChatTemplate) -> Path:
    """Write RUN/chat_template.json, {"format": 1, "name": ..., "jinja": ...}, atomically."""
    path = Path(run_dir) / TEMPLATE_FILE
    body = {"format": TEMPLATE_FORMAT, "name": template.name, "jinja": template.jinja()}
    return atomic_write_json(path, body, indent=2)


def load_template(run_dir: str | os.PathLike[str]) -> ChatTemplate | None:
    """The template saved in a run folder, or None for a run without one (a model that was
    only pre-trained)."""
    path = Path(run_dir) / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TinyGPTError(f"{path} is not valid JSON ({exc}); delete it or rewrite it") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise TinyGPTError(f"{path} does not name a chat template; delete it or rewrite it")
    if data.get("format") != TEMPLATE_FORMAT:
        raise TinyGPTError(
            f"{path} has format {data.get('format')!r}; this tinygpt reads format "
            f"{TEMPLATE_FORMAT} (was it written by a newer version?)"
        )
    template = get_template(data["name"])
    if data.get("jinja") != template.jinja():
        raise TinyGPTError(
            f"{path}: template {template.name!r} differs from this version's {template.name!r}; "
            "the model was trained on the other rendering, so use the tinygpt that trained it"
        )
    return template
