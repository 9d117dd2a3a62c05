"""The model card (`README.md`) of an exported model: front-matter and the run's facts.

Owns the wording and layout of the card: YAML front-matter the Hugging Face Hub reads
(license, language, tags, `library_name: transformers`, `pipeline_tag`), then what the model
is (architecture, parameter count, tokenizer), what it was trained on and for how long, the
evaluation figures the run holds, how to use it, and what it is not for. Every number comes
from the run folder through `tinygpt.export.report.collect` (config, `run.json`, `summary.json`,
`metrics.csv`, `eval/results.json`); nothing is measured here. Local paths are reduced to
their last part, so a card published on the Hub does not reveal the author's file system.

It knows nothing about weights or the transformers folder around it (`tinygpt.export.hf`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K, GPTConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.data.corpora import CORPORA
from tinygpt.data.tokenizer import Tokenizer
from tinygpt.export.hf import HF_CLASSES
from tinygpt.export.report import collect, fmt

FAMILY_NAMES = {"gpt2": "GPT-2", "llama": "Llama", "qwen3": "Qwen3"}


def language_of(source: str | None) -> str | None:
    """The language code of a built-in corpus name, else None.

    >>> language_of("ataturk"), language_of("notes.txt")
    ('tr', None)
    """
    info = CORPORA.get(source or "")
    return info.language if info else None


def _yaml_str(value: str) -> str:
    # JSON strings are valid YAML scalars: quotes and escapes cover any character.
    return json.dumps(value, ensure_ascii=False)


def front_matter(*, license: str, language: str | None, family: str, tags: list[str]) -> str:
    """The YAML block the Hub reads, between `---` lines."""
    lines = ["---", f"license: {_yaml_str(license)}"]
    if language:
        lines += ["language:", f"- {_yaml_str(language)}"]
    lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {_yaml_str(t)}" for t in ["tinygpt", family, "text-generation", *tags]]
    lines.append("---")
    return "\n".join(lines) + "\n"


def _short(source: Any) -> str:
    """A corpus name as it is; a path reduced to its last part."""
    if not source:
        return "unknown"
    text = str(source)
    if text.startswith("hf:"):
        return text
    return Path(text).name or text


def model_card(
    run_dir: str | Path | None,
    *,
    config: GPTConfig,
    tokenizer: Tokenizer,
    family: str,
    num_params: int,
    checkpoint: str = "",
    step: int | None = None,
    repo_id: str | None = None,
    license: str = "mit",
    language: str | None = None,
    chat_template: bool = False,
) -> str:
    """The card's Markdown. `run_dir` supplies training facts (None for a bare model);
    `config` is the model's `GPTConfig`; `repo_id`, when known, is used in the examples."""
    data = collect(run_dir) if run_dir is not None else None
    source = (data or {}).get("data", {}).get("source")
    language = language or language_of(source)
    name = repo_id or (Path(run_dir).name if run_dir is not None else "tinygpt-model")
    where = repo_id or "path/to/this/folder"
    kind = getattr(tokenizer, "kind", "") or "unknown"
    tags = [f"{kind}-level" if kind == "char" else kind] if kind != "unknown" else []
    out = [front_matter(license=license, language=language, family=family, tags=tags)]
    out += _model_section(name, config, tokenizer, family, num_params, chat_template)
    out += _training_section(data, fmt, checkpoint, step)
    out += _eval_section(data, fmt)
    out += _usage_section(where, tokenizer, language, config.block_size)
    out += _limits_section(num_params, config.block_size, kind)
    return "\n".join(out) + "\n"


def _model_section(
    name: str, c: GPTConfig, tokenizer: Tokenizer, family: str, num_params: int, chat_template: bool
) -> list[str]:
    """The title, what the model is and the table of its architecture and tokenizer."""
    kind = getattr(tokenizer, "kind", "") or "unknown"
    out = [
        f"# {name}",
        "",
        f"A small {FAMILY_NAMES[family]}-style causal language model trained from scratch"
        " with tinygpt and exported to the `transformers`"
        f" `{HF_CLASSES[family]}` format. It loads with `AutoModelForCausalLM`,"
        " `AutoTokenizer` and `pipeline` without `trust_remote_code`.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{HF_CLASSES[family]}` |",
        f"| parameters | {fmt(num_params)} |",
        f"| layers × heads × width | {c.n_layer} × {c.n_head} × {c.n_embd} |",
        f"| key/value heads | {c.kv_heads} |",
        f"| context | {fmt(c.block_size)} tokens |",
        f"| positions, norm, MLP | {c.pos}, {c.norm}, {c.mlp} |",
        f"| QK-norm | {fmt(c.qk_norm)} |",
        f"| biases | {fmt(c.bias)} |",
        f"| tied input/output embedding | {fmt(c.tie_weights)} |",
        f"| tokenizer | {kind}, {fmt(tokenizer.vocab_size)} ids |",
        "| special tokens | "
        + ", ".join(f"`{s}` = {i}" for s, i in tokenizer.special_tokens.items())
        + " |",
    ]
    if chat_template:
        out.append("| chat template | yes (`tokenizer.apply_chat_template`) |")
    out.append("")
    return out


def _usage_section(
    where: str, tokenizer: Tokenizer, language: str | None, block_size: int
) -> list[str]:
    """How to load and sample the model with transformers, and its generation defaults."""
    return [
        "## How to use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'generate = pipeline("text-generation", model="{where}")',
        f"print(generate({_example_prompt(tokenizer, language)!r}, max_new_tokens=100)"
        '[0]["generated_text"])',
        "```",
        "",
        "The generation defaults (`generation_config.json`) are tinygpt's: sampling with"
        f" temperature {SAMPLE_TEMPERATURE} and top-k {SAMPLE_TOP_K}, at most"
        f" {fmt(block_size)} tokens in all"
        " (prompt included): the model was trained on no longer a context, and"
        " `transformers` does not slide the window past it.",
        "",
    ]


def _limits_section(num_params: int, block_size: int, kind: str) -> list[str]:
    """What the model is for, and what it is not."""
    out = [
        "## Intended use",
        "",
        "Learning and experiments: reading how a small transformer behaves, comparing"
        " training settings, and as a starting point for fine-tuning on similar text. The"
        " model continues text in the style of its training data.",
        "",
        "## Limitations",
        "",
        f"- It is small ({fmt(num_params)} parameters) and was trained briefly on one corpus:"
        " its text is often ungrammatical or meaningless, and it knows no facts.",
        "- It reproduces the style, vocabulary and biases of its training text and was not"
        " trained to follow instructions or to be safe; do not use it to make decisions"
        " about people or for anything where correctness matters.",
        f"- Beyond {fmt(block_size)} tokens of context it has no trained positions.",
    ]
    if kind == "char":
        out.append(
            "- The tokenizer knows only the characters of its training text; any other"
            " character is an error (or `<unk>` when the vocabulary has one)."
        )
    return out


def _example_prompt(tokenizer: Tokenizer, language: str | None) -> str:
    """A prompt for the usage example that the tokenizer can encode (a character
    vocabulary may lack some letters)."""
    candidates = ["ROMEO:", "Türk milleti", "The", "a"]
    if language == "tr":
        candidates.insert(0, candidates.pop(1))
    for text in candidates:
        try:
            tokenizer.encode(text)
        except TinyGPTError:  # an unknown character: try the next one
            continue
        return text
    return tokenizer.decode([0])


def _training_section(data: Any, fmt: Any, checkpoint: str, step: int | None) -> list[str]:
    if data is None:
        return []
    s = data.get("summary") or {}
    t = data.get("training") or {}
    d = data.get("data") or {}
    tc = data["config"]["train"]
    rows = [
        ("data", _short(d.get("source"))),
    ]
    for split, info in (d.get("splits") or {}).items():
        if isinstance(info, dict):
            rows.append((f"{split} split", f"{fmt(info.get('tokens'))} tokens"))
    rows += [
        ("steps", fmt(s.get("step", t.get("last_step")))),
        ("tokens seen", fmt(s.get("tokens"))),
        ("training time", f"{fmt(s.get('train_time_s'), 1)} s"),
        ("device, precision", f"{fmt(s.get('device'))}, {fmt(s.get('precision'))}"),
        ("optimizer", f"{tc.get('optimizer')}, lr {tc.get('lr')}, {tc.get('schedule')} schedule"),
        ("batch", f"{tc.get('batch_size')} sequences"),
        ("final validation loss (full split)", fmt(s.get("val_loss"))),
        ("exported checkpoint", f"{checkpoint} (step {fmt(step)})" if checkpoint else "–"),
    ]
    lines = ["## Training", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return [*lines, ""]


def _eval_section(data: Any, fmt: Any) -> list[str]:
    e = (data or {}).get("eval")
    if not e:
        return []
    rows = [
        ("text", _short(e.get("data"))),
        ("checkpoint", f"{e.get('checkpoint')} (step {fmt(e.get('step'))})"),
        ("loss (nats/token)", fmt(e.get("val_loss"))),
        ("perplexity", fmt(e.get("val_ppl"), 3)),
        ("bits per byte", fmt(e.get("val_bpb"))),
        ("scored tokens", fmt(e.get("tokens"))),
    ]
    lines = ["## Evaluation", "", "`tinygpt eval` on held-out text:", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return [*lines, ""]
