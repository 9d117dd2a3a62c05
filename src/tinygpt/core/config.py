"""Typed run configuration: model, data and training sections, presets and overrides.

A run is described by one `RunConfig` made of three dataclasses:

- `model`: `tinygpt.core.model.GPTConfig` (owned by the model module, validated there),
- `data`:  where the tokens come from and how they are tokenized (`DataConfig`),
- `train`: the optimisation loop (`TrainConfig`).

A configuration is resolved in layers, each overriding the one before:
defaults → preset (`presets/<name>.toml`) → `--config FILE` → dotted overrides
(`--model.n_layer 6`). Unknown keys are errors that name the closest valid key. The resolved
configuration is written to `RUN/config.toml`, from which every later command rebuilds it.
The command line's further rules (dedicated flags, budgets, resuming a run) are
`tinygpt.core.resolution`'s.

This module knows nothing about tensors, files of tokens or the training loop.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import read_text
from tinygpt.core.numbers import Range, check_fields, number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

DEFAULT_PRESET = "shakespeare-char"
BUDGETS = ("max_steps", "max_tokens", "max_time", "max_epochs")
# Sampling defaults shared by `tinygpt sample`, the samples written during training and
# evaluation, and the Python API: temperature below 1 sharpens, top-k drops the long tail.
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 200
SEED = Range(lo=0, hi=2**63 - 1, integer=True)
# What sampling accepts, wherever it is asked for (flags, the Python API, the server).
SAMPLING = {
    "max_new_tokens": Range(
        lo=0, hi=2**20, integer=True, why="the prompt and new tokens share one buffer"
    ),
    "temperature": Range(lo=0, hi=100, why="0 is greedy; above a few the text is noise"),
    "top_k": Range(lo=1, hi=2**24, integer=True),
    "top_p": Range(lo=0, hi=1, lo_open=True),
    "repetition_penalty": Range(lo=0, hi=100, lo_open=True, why="1 is off"),
    "seed": SEED,
    "num_samples": Range(
        lo=1, hi=1024, integer=True, why="every sample is a row of one batch, with its KV cache"
    ),
}


def _choice(section: str, name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TinyGPTError(f"{section}.{name} = {value!r} is not one of {', '.join(allowed)}{hint}")


NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "swiglu")
POSITIONS = ("learned", "rope")
ATTENTIONS = ("sdpa", "manual")


def _model_choice(field: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TinyGPTError(
            f"model.{field} = {value!r} is not known; choose one of {', '.join(options)}{hint}"
        )


# Limits that keep a typo from asking for all the memory there is (a model this wide or
# deep does not fit any single machine; train() also compares the model's size with RAM).
_WIDTH = "wider models do not fit in memory"
_MODEL = "a larger model does not fit in memory"


@dataclass
class GPTConfig:
    vocab_size: int = number(50304, lo=1, hi=2**24, why="ids are stored as 32-bit integers")
    block_size: int = number(256, lo=1, hi=2**20, why="attention memory grows with its square")
    n_layer: int = number(4, lo=1, hi=1024, why=_MODEL)
    n_head: int = number(4, lo=1, hi=1024, why=_MODEL)
    n_embd: int = number(128, lo=1, hi=65536, why=_WIDTH)
    # None: same as n_head; fewer: grouped-query attention
    n_kv_head: int | None = number(None, lo=1, hi=1024, integer=True)
    dropout: float = number(0.0, lo=0, hi=1, hi_open=True)
    bias: bool = True  # biases in linear layers and LayerNorm
    norm: str = "layernorm"
    norm_eps: float = number(1e-5, lo=0, hi=1, lo_open=True)
    mlp: str = "gelu_tanh"
    # None: 4*C for GELU, Llama's rounded 8/3*C for SwiGLU
    mlp_hidden: int | None = number(None, lo=1, hi=2**20, integer=True, why=_WIDTH)
    pos: str = "learned"
    rope_theta: float = number(10000.0, lo=0, hi=1e12, lo_open=True, why="RoPE's base")
    qk_norm: bool = False  # RMSNorm on each head's queries and keys (before RoPE)
    attn: str = "sdpa"
    tie_weights: bool = True  # LM head shares the token embedding matrix
    init_std: float = number(0.02, lo=0, hi=10, lo_open=True, why="the weights' spread")

    def __post_init__(self) -> None:
        check_fields(self, "model")
        _model_choice("norm", self.norm, NORMS)
        _model_choice("mlp", self.mlp, MLPS)
        _model_choice("pos", self.pos, POSITIONS)
        _model_choice("attn", self.attn, ATTENTIONS)
        if self.n_embd % self.n_head:
            raise TinyGPTError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"change one of them, e.g. n_head = {_nearest_divisor(self.n_embd, self.n_head)}"
            )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise TinyGPTError(
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head "
                f"({self.n_kv_head}); use a divisor of n_head, or leave n_kv_head unset"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise TinyGPTError(
                f"rotary positions need an even head dimension, but n_embd / n_head = "
                f"{self.head_dim}; change n_embd or n_head, or use model.pos = 'learned'"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        """Width of the MLP's hidden layer."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            # Llama: 2/3 of 4*C keeps the parameter count of a 4*C GELU MLP with three
            # matrices instead of two; rounded up to a multiple of 32 for fast matmuls.
            return 32 * math.ceil(int(2 * 4 * self.n_embd / 3) / 32)
        return 4 * self.n_embd


def _nearest_divisor(n: int, near: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - near), d))


@dataclass
class DataConfig:
    """Where training tokens come from.

    `source` is a built-in corpus name (`tinygpt corpus list`), a path (file, folder, glob,
    `.jsonl`) or `hf:NAME[:CONFIG]`; `dir` points at a folder made by `tinygpt prepare` and,
    when set, wins over `source`.
    """

    source: str = "shakespeare"
    dir: str = ""
    tokenizer: str = "char"  # char | bpe | gpt2 | path to a tokenizer.json
    # bpe only; 0 = the preset's model.vocab_size
    vocab_size: int = number(0, lo=0, hi=2**24, why="ids are stored as 32-bit integers")
    backend: str = "native"  # native | hf (bpe trainer)
    min_frequency: int = number(1, lo=1)  # bpe only: a pair merges only when seen this often
    lowercase: str = ""  # "" (keep case) | default | tr (Turkish İ→i, I→ı); char and bpe only
    normalize_whitespace: bool = False  # collapse runs of spaces and tabs; char and bpe only
    val_fraction: float = number(0.1, lo=0, hi=1, lo_open=True, hi_open=True, hint="0.1")
    text_field: str = "text"
    errors: str = "strict"  # strict | replace: what to do with bytes that are not UTF-8

    def __post_init__(self) -> None:
        check_fields(self, "data")
        _choice("data", "errors", self.errors, ["strict", "replace"])
        _choice("data", "backend", self.backend, ["native", "hf"])
        _choice("data", "lowercase", self.lowercase, ["", "default", "tr"])


@dataclass
class TrainConfig:
    """The optimisation loop. Budgets: the first of max_steps / max_tokens / max_time /
    max_epochs to run out ends training, and the learning-rate schedule decays towards
    whichever is set."""

    # batch and budget
    batch_size: int = number(32, lo=1, hi=2**16)  # sequences per micro-batch (per process)
    tokens_per_step: int = number(0, lo=0)  # 0 = one micro-batch per step; else accumulate
    max_steps: int = number(0, lo=0)
    max_tokens: int = number(0, lo=0)
    # seconds of the optimisation loop; at most 10 years, so that a budget always ends
    max_time: float = number(0.0, lo=0, hi=3.2e8, why="10 years: a budget has to end")
    max_epochs: float = number(
        0.0, lo=0, hi=1e9, why="a budget has to end"
    )  # passes over the training data (0 = none)
    # optimiser
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest)
    # AdamW's learning rate (all parameters, or the non-Muon ones)
    lr: float = number(1e-3, lo=0, lo_open=True, hint="1e-3")
    # Muon's learning rate; follows the same warm-up and schedule
    muon_lr: float = number(0.02, lo=0, lo_open=True, hint="0.02")
    muon_momentum: float = number(0.95, lo=0, hi=1, hi_open=True)
    min_lr_ratio: float = number(0.1, lo=0, hi=1)  # final lr = lr * min_lr_ratio
    schedule: str = "cosine"  # cosine | wsd (constant then linear warm-down) | constant
    warmup_steps: int = number(100, lo=0)
    # warm-up as a share of the budget (like its learning-rate schedule); 0 = use warmup_steps
    warmup_frac: float = number(0.0, lo=0, hi=1, hi_open=True)
    warmdown_frac: float = number(0.2, lo=0, hi=1)  # wsd: fraction of the budget spent decaying
    weight_decay: float = number(0.1, lo=0)
    beta1: float = number(0.9, lo=0, hi=1, hi_open=True)
    beta2: float = number(0.99, lo=0, hi=1, hi_open=True)
    # AdamW's epsilon, added to the root of the second moment: it bounds a step where the
    # gradients have been near zero (1e-8: torch's default and GPT-2-style recipes')
    eps: float = number(1e-8, lo=0, hi=1, lo_open=True, hint="1e-8")
    grad_clip: float = number(1.0, lo=0)  # 0 = off
    # numerics and device
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | mps
    threads: int = number(0, lo=0, hi=4096)  # 0 = torch's default
    seed: int = number(1337, lo=SEED.lo, hi=SEED.hi)
    # watching
    log_interval: int = number(10, lo=1)
    eval_interval: int = number(250, lo=1)
    eval_windows: int = number(32, lo=1, hi=2**20)  # windows of the val split behind val_loss_est
    eval_batch_size: int = number(64, lo=1, hi=2**16)
    sample_interval: int = number(0, lo=0)  # 0 = only at the end
    sample_tokens: int = number(200, lo=0, hi=2**20)
    sample_prompt: str = "\n"
    sample_temperature: float = number(0.8, lo=0, hi=100)  # of those samples; 0 = greedy
    checkpoint_interval: int = number(0, lo=0)  # 0 = at evaluations and at the end
    keep_last: int = number(2, lo=1)
    early_stop_patience: int = number(0, lo=0)  # evaluations without improvement; 0 = off
    skip_nonfinite: bool = False  # skip steps with a non-finite loss or gradient norm
    skip_nonfinite_limit: int = number(10, lo=1)  # ... but stop after this many in a row
    tensorboard: bool = True  # used when the package is installed
    wandb: bool = False
    wandb_project: str = "tinygpt"

    def __post_init__(self) -> None:
        check_fields(self, "train")
        if self.warmup_frac and self.warmup_steps:
            raise TinyGPTError(
                f"train.warmup_frac = {self.warmup_frac} and train.warmup_steps ="
                f" {self.warmup_steps} both set the warm-up; give one of them"
            )
        _choice("train", "schedule", self.schedule, ["cosine", "wsd", "constant"])
        _choice("train", "precision", self.precision, ["auto", "fp32", "bf16", "fp16"])
        _choice("train", "optimizer", self.optimizer, ["adamw", "muon"])
        _choice("train", "device", self.device, ["auto", "cpu", "cuda", "mps"])

    @property
    def has_budget(self) -> bool:
        return any(getattr(self, name) for name in BUDGETS)


SECTIONS: dict[str, type] = {"model": GPTConfig, "data": DataConfig, "train": TrainConfig}


@dataclass
class RunConfig:
    """Everything that defines a run; `config.toml` in a run folder is this, resolved."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS},
        }

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, origin: str = "config") -> RunConfig:
        merged = _defaults()
        _merge(merged, raw, origin)
        return _build(merged)

    @classmethod
    def from_toml(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(_read_toml(Path(path)), origin=str(path))


# ---------------------------------------------------------------------------- resolution


def _defaults() -> dict[str, Any]:
    return {
        "preset": "",
        **{
            name: {f.name: _default_of(f) for f in dataclasses.fields(cls)}
            for name, cls in SECTIONS.items()
        },
    }


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default")


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _merge(base: dict[str, Any], raw: dict[str, Any], origin: str) -> None:
    """Merge a parsed TOML mapping into `base`, refusing unknown sections and keys."""
    for key, value in raw.items():
        if key == "preset":
            base["preset"] = str(value)
            continue
        if key not in SECTIONS:
            raise TinyGPTError(
                f"{origin}: unknown section [{key}]{_suggest(key, list(SECTIONS))};"
                f" valid sections are {', '.join(SECTIONS)}"
            )
        if not isinstance(value, dict):
            raise TinyGPTError(f"{origin}: [{key}] must be a table of settings")
        valid = base[key]
        for name, item in value.items():
            if name not in valid:
                dotted = [f"{key}.{k}" for k in valid]
                raise TinyGPTError(
                    f"{origin}: unknown setting {key}.{name}{_suggest(f'{key}.{name}', dotted)}"
                )
            valid[name] = _coerce(SECTIONS[key], name, item, origin)
        if key == "train":
            _one_warmup(valid, value)


# Two ways to say how long the warm-up is; a layer that gives one replaces the other.
_WARMUPS = ("warmup_steps", "warmup_frac")


def _one_warmup(merged: dict[str, Any], layer: dict[str, Any]) -> None:
    """A layer (preset, file, overrides) that sets one warm-up length zeroes the other one
    an earlier layer set; one layer that sets both is refused by TrainConfig."""
    for given, other in (_WARMUPS, _WARMUPS[::-1]):
        if given in layer and other not in layer:
            merged[other] = 0


def _field_type(cls: type, name: str) -> Any:
    hints = typing.get_type_hints(cls)
    return hints[name]


def _coerce(cls: type, name: str, value: Any, origin: str) -> Any:
    """Turn a TOML or command-line value into the field's declared type."""
    hint = _field_type(cls, name)
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    where = f"{origin}: {_section_of(cls)}.{name}"
    if isinstance(value, str):
        if optional and value.lower() in ("none", "null", ""):
            return None
        try:
            if hint is bool:
                low = value.lower()
                if low not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                return low in ("true", "1", "yes", "on")
            if hint is int:
                return int(value)
            if hint is float:
                return float(value)
        except ValueError:
            raise TinyGPTError(f"{where} expects {hint.__name__}, got {value!r}") from None
        return value
    if value is None and optional:
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = hint if isinstance(hint, type) else object
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such fields yet
        return value
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise TinyGPTError(f"{where} expects {expected.__name__}, got {value!r}")
    return value


def _section_of(cls: type) -> str:
    return next(name for name, c in SECTIONS.items() if c is cls)


def _build(merged: dict[str, Any]) -> RunConfig:
    sections = {name: cls(**merged[name]) for name, cls in SECTIONS.items()}
    return RunConfig(**sections, preset=merged.get("preset", ""))


def _read_toml(path: Path) -> dict[str, Any]:
    text = read_text(path, "config file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TinyGPTError(f"{path} is not valid TOML: {exc}") from None


def list_presets() -> list[str]:
    """Names of the presets shipped in `tinygpt/presets/`."""
    folder = resources.files("tinygpt") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def preset_text(name: str) -> str:
    presets = list_presets()
    if name not in presets:
        close = difflib.get_close_matches(name, presets, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TinyGPTError(f"unknown preset {name!r}{hint}; presets: {', '.join(presets)}")
    return (resources.files("tinygpt") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


Overrides = Sequence[str] | Mapping[str, Any]


def parse_overrides(items: Overrides) -> dict[str, Any]:
    """Dotted overrides as `{section: {name: value}}`, from any of three spellings.

    - command line: `["--model.n_layer", "6", "--train.lr=3e-4"]`
    - Python strings: `["model.n_layer=6", "train.lr=3e-4"]`
    - a mapping: `{"model.n_layer": 6, "train.lr": 3e-4}` (typed values stay typed)

    String values stay strings here; `_coerce` gives them the field's type.

    >>> parse_overrides(["--model.n_layer", "6", "train.lr=3e-4", "--train.seed=1"])
    {'model': {'n_layer': '6'}, 'train': {'lr': '3e-4', 'seed': '1'}}
    >>> parse_overrides({"train.max_steps": 30})
    {'train': {'max_steps': 30}}
    """
    pairs: list[tuple[str, Any]] = []
    if isinstance(items, Mapping):
        pairs = list(items.items())
    else:
        items = list(items)
        i = 0
        while i < len(items):
            item = str(items[i])
            flag = item.startswith("--")
            key = item[2:] if flag else item
            if "." not in key.split("=", 1)[0] or (not flag and "=" not in key):
                raise TinyGPTError(
                    f"unexpected argument {item!r}; overrides look like --section.key VALUE"
                    " (or section.key=VALUE from Python), for example --model.n_layer 6"
                )
            if "=" in key:
                key, value = key.split("=", 1)
            else:
                if i + 1 >= len(items):
                    raise TinyGPTError(f"override --{key} needs a value, e.g. --{key} VALUE")
                i += 1
                value = items[i]
            pairs.append((key, value))
            i += 1
    out: dict[str, Any] = {}
    for key, value in pairs:
        section, _, name = str(key).partition(".")
        if not name:
            raise TinyGPTError(
                f"override {key!r} needs a section and a name, for example model.n_layer"
            )
        out.setdefault(section, {})[name] = value
    return out


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Overrides = (),
) -> RunConfig:
    """Resolve defaults → preset → config file → dotted overrides into a validated RunConfig.

    With neither a preset nor a config file, the default preset is used. `overrides` takes
    any spelling `parse_overrides` reads.
    """
    merged = _defaults()
    file_raw = _read_toml(Path(config_file)) if config_file else {}
    name = preset or file_raw.get("preset") or (None if config_file else DEFAULT_PRESET)
    if name:
        _merge(merged, tomllib.loads(preset_text(name)), f"preset {name}")
        merged["preset"] = name
    if file_raw:
        _merge(merged, file_raw, str(config_file))
        if preset:
            merged["preset"] = preset
    _merge(merged, parse_overrides(overrides), "override")
    return _build(merged)


# ---------------------------------------------------------------------------- TOML writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        for raw, esc in (("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
            escaped = escaped.replace(raw, esc)
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a two-level mapping (scalars, then tables of scalars) as TOML. `None` is omitted."""
    lines = [
        f"{k} = {_toml_value(v)}"
        for k, v in data.items()
        if not isinstance(v, dict) and v is not None
    ]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{key}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"
