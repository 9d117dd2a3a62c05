"""Generation from an ONNX export folder with onnxruntime and NumPy alone: no torch.

Owns: the layout of an ONNX export folder (`OnnxDir`: the names of its files, and the marker
file that says tinygpt wrote it and in which format version), one forward pass of its graph
in an onnxruntime session (`OnnxLM`), the token loop over the graph's KV cache
(`generate_tokens`, choosing tokens by `tinygpt.infer.sampler`'s rules, as every path does),
and `OnnxGenerator`, the text API (`generate`, `stream`, shared with the PyTorch backend through
`tinygpt.infer.textgen`) that `tinygpt sample ONNX_DIR` and `tinygpt.load(ONNX_DIR)` return.

It does not know how the graph was made (`tinygpt.export.onnx` writes these folders), nor
anything about run folders. Importing it loads NumPy but neither torch nor onnxruntime;
opening a folder loads onnxruntime, and the tokenizer is tinygpt's own pure-Python one, so a
deployment needs tinygpt's torch-free modules, `onnxruntime`, `numpy` and `regex` only.

The graph (format version 1, ONNX opset 18) has the input and output names other tools use:

    input_ids                (B, T)              int64
    attention_mask           (B, P + T)          int64, 1 for real tokens, over past and new
    position_ids             (B, T)              int64, each new token's position
    past_key_values.{i}.key  (B, K, P, D)        float32, layer i; .value the same
    logits                   (B, T, V)           float32
    present.{i}.key          (B, K, P + T, D)    float32: the past with the new tokens after it

B batch, T new tokens, P past slots, K key/value heads, D head dim, V vocabulary; B, T and P
are symbolic. The cache is "concatenated": every row holds P slots, and the attention mask
says which are real, so rows may hold different numbers of tokens (left-padded prompts).

How the loop uses it (`generate_tokens`, the same rules as `tinygpt.infer.generate`): the prompts
are fed left-padded (prefill), then each row's newest token (decode). A row whose tokens
outgrow the model's context (block_size) slides its window
(`tinygpt.infer.sampler.window_start`): its past slots are masked out
and its last block_size tokens are fed again, at positions 0..block_size-1, so every step
sees exactly the tokens the PyTorch path sees, and greedy tokens are the same. After such a
refill the cache is compacted: each row keeps its real slots only, right-aligned.

Example:

    import tinygpt
    gen = tinygpt.load("exports/shakespeare-onnx")       # an OnnxGenerator
    print(gen.generate("ROMEO:", max_new_tokens=50, seed=1))
    for piece in gen.stream("JULIET:", temperature=0.7, stop=["\\n\\n"]):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.core.errors import TinyGPTError
from tinygpt.data.template import template_for_jinja
from tinygpt.data.tokenizer import Tokenizer, load_tokenizer
from tinygpt.infer.sampler import row_generators, sample_rows, window_start
from tinygpt.infer.textgen import BaseTextGenerator, check_sampling

FORMAT = "tinygpt-onnx"
FORMAT_VERSION = 1
OPSET = 18
MODEL = "model.onnx"
MODEL_DATA = "model.onnx.data"  # the weights, when the graph keeps them outside (> 2 GB)
MARKER = "tinygpt_onnx.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
CHAT_TEMPLATE = "chat_template.jinja"
GENERATION_CONFIG = "generation_config.json"
INPUTS = ("input_ids", "attention_mask", "position_ids")
# The sizes the token loop needs, written into the marker by the exporter.
RUNTIME_FIELDS = ("n_layer", "n_kv_head", "head_dim", "block_size", "vocab_size")


def past_names(n_layer: int) -> list[str]:
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


# ---------------------------------------------------------------------------------- folder


class OnnxDir:
    """An ONNX export folder: the one place that knows its file names and its marker."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OnnxDir({str(self.path)!r})"

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def model_data_path(self) -> Path:
        return self.path / MODEL_DATA

    @property
    def marker_path(self) -> Path:
        return self.path / MARKER

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    def file(self, name: str) -> Path:
        return self.path / name

    def is_export(self) -> bool:
        """True when the folder carries our marker (whatever its format version)."""
        return self.marker_path.is_file()

    def read_marker(self) -> dict[str, Any]:
        """The marker, checked: our format, the version this code reads, the sizes it needs."""
        where = self.marker_path
        if not where.is_file():
            what = f"holds {MODEL} but" if self.model_path.is_file() else "has"
            raise TinyGPTError(
                f"{self.path} {what} no {MARKER}: it is not an ONNX export of tinygpt; give a "
                "folder that `tinygpt export RUN --format onnx` wrote"
            )
        try:
            info = json.loads(where.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TinyGPTError(f"{where} is not valid JSON ({exc}); export the run again") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise TinyGPTError(f"{where} does not describe a {FORMAT} folder; export the run again")
        version = info.get("version")
        if version != FORMAT_VERSION:
            raise TinyGPTError(
                f"{self.path} is an ONNX export in format version {version}, but this tinygpt "
                f"reads version {FORMAT_VERSION}; export the run again with this version "
                "(tinygpt export RUN --format onnx)"
            )
        runtime = info.get("runtime")
        if not isinstance(runtime, dict) or any(
            not isinstance(runtime.get(k), int) or runtime[k] < 1 for k in RUNTIME_FIELDS
        ):
            raise TinyGPTError(
                f"{where} lacks the model sizes ({', '.join(RUNTIME_FIELDS)}); export the run again"
            )
        if not self.model_path.is_file():
            raise TinyGPTError(f"{self.path} has no {MODEL}; export the run again")
        return info

    def read_json(self, name: str) -> dict[str, Any] | None:
        """One of the folder's JSON files (generation_config.json, ...), or None if absent."""
        try:
            data = json.loads(self.file(name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TinyGPTError(f"{self.file(name)} is not valid JSON ({exc})") from None
        return data if isinstance(data, dict) else None


def is_onnx_folder(path: str | Path) -> bool:
    """True for a folder that `tinygpt export --format onnx` wrote (any format version)."""
    return OnnxDir(path).is_export()


# ---------------------------------------------------------------------------------- graph


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise TinyGPTError(
            "running an ONNX export needs the `onnxruntime` package; install it with: "
            "pip install 'tinygpt[onnx]' (or pip install onnxruntime)"
        ) from exc
    return onnxruntime


class OnnxLM:
    """The graph of an ONNX export folder in an onnxruntime session.

    `lm(input_ids, attention_mask, position_ids, past)` -> (logits (B, T, V), present), the
    shapes in the module docstring; `past` and `present` are lists of 2 * n_layer arrays
    (key, value of layer 0, then layer 1, ...). `empty_past(B)` is the cache of no tokens.
    `threads` sets onnxruntime's intra-op threads (None: its default, one per core);
    `providers` its execution providers (default: the CPU).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        ort = _onnxruntime()
        self.folder = OnnxDir(path)
        self.info = self.folder.read_marker()
        rt = self.info["runtime"]
        self.n_layer: int = rt["n_layer"]
        self.n_kv_head: int = rt["n_kv_head"]
        self.head_dim: int = rt["head_dim"]
        self.block_size: int = rt["block_size"]
        self.vocab_size: int = rt["vocab_size"]
        if threads is not None and threads < 1:
            raise TinyGPTError(f"threads must be at least 1, got {threads}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no notes on stderr when a folder opens
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        chosen = list(providers or ["CPUExecutionProvider"])
        missing = [p for p in chosen if p not in ort.get_available_providers()]
        if missing:
            raise TinyGPTError(
                f"onnxruntime here has no {', '.join(missing)}; it has "
                f"{', '.join(ort.get_available_providers())}"
            )
        try:
            self.session = ort.InferenceSession(
                str(self.folder.model_path), options, providers=chosen
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TinyGPTError(
                f"onnxruntime cannot load {self.folder.model_path} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); export the run again"
            ) from None
        self.past_names = past_names(self.n_layer)
        self.output_names = ["logits", *present_names(self.n_layer)]
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        lacking = [n for n in (*INPUTS, *self.past_names) if n not in inputs]
        lacking += [n for n in self.output_names if n not in outputs]
        if lacking:
            raise TinyGPTError(
                f"{self.folder.model_path} lacks the inputs/outputs {', '.join(lacking[:4])}; "
                "export the run again"
            )

    def empty_past(self, batch: int) -> list[np.ndarray]:
        shape = (batch, self.n_kv_head, 0, self.head_dim)  # (B, K, 0, D)
        return [np.zeros(shape, dtype=np.float32) for _ in self.past_names]

    def __call__(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: Sequence[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            **dict(zip(self.past_names, past)),
        }
        logits, *present = self.session.run(self.output_names, feed)
        return logits, present


# ------------------------------------------------------------------------------ token loop


def generate_tokens(
    lm: OnnxLM,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    eot_id: int | None = None,
    vocab: int | None = None,
) -> Generator[np.ndarray, None, None]:
    """Yield the next token of every row, an int64 array (B,), up to max_new_tokens times.

    `prompts`: one list of ids per row (at least one id each; lengths may differ). Rows that
    have produced `eot_id` keep yielding it; the loop ends early once every row has. Tokens
    are chosen by `tinygpt.infer.sampler.sample_token`, row b drawing from its own generator
    (`row_generators(seed, B)[b]`), as in `tinygpt.infer.generate`; `vocab` limits the choice
    to ids below it, as there.
    """
    check_sampling(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    rows = [[int(t) for t in p] for p in prompts]
    if not rows or any(not r for r in rows):
        raise TinyGPTError("every prompt must hold at least one token; give non-empty prompts")
    bad = [t for r in rows for t in r if not 0 <= t < lm.vocab_size]
    if bad:
        raise TinyGPTError(f"token id {bad[0]} is outside the vocabulary [0, {lm.vocab_size})")
    B = len(rows)
    rngs = row_generators(seed, B)
    window = _Window(lm, B)
    done = np.zeros(B, dtype=bool)
    for _ in range(max_new_tokens):
        logits = window.logits(rows)[:, :vocab]  # (B, V)
        picked = sample_rows(
            logits,
            rows,
            rngs,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
        )
        nxt = np.array(picked, dtype=np.int64)  # (B,)
        if eot_id is not None:
            nxt[done] = eot_id
            done |= nxt == eot_id
        for row, t in zip(rows, nxt.tolist()):
            row.append(t)
        yield nxt
        if eot_id is not None and bool(done.all()):
            return


class _Window:
    """The graph's KV cache over the rows' windows, and the forward pass that extends it.

    Each step feeds every row the tokens it has not cached yet (the prompts first, left
    padded; then the newest token). A row whose window slides (`window_start`) has its past
    slots masked out and its last block_size tokens fed again, at positions 0..block_size-1;
    after such a refill the cache is compacted: each row keeps its real slots only,
    right-aligned.
    """

    def __init__(self, lm: OnnxLM, batch: int) -> None:
        self.lm = lm
        self.start = [0] * batch  # index of each row's first cached token
        self.cached = [0] * batch  # tokens of each row in the cache
        self.past = lm.empty_past(batch)
        self.kv_mask = np.zeros((batch, 0), dtype=np.int64)  # (B, P): which slots are real

    def logits(self, rows: list[list[int]]) -> np.ndarray:
        """(B, V): the logits of each row's last token, having seen its window."""
        B = len(rows)
        refilled = False
        for b, row in enumerate(rows):
            start = window_start(self.start[b], len(row), self.lm.block_size)
            if start != self.start[b]:  # context full: slide the window, refill the row
                self.start[b], self.cached[b] = start, 0
                self.kv_mask[b] = 0
                refilled = True
        new = [row[s + c :] for row, s, c in zip(rows, self.start, self.cached)]
        T = max(len(n) for n in new)
        ids = np.zeros((B, T), dtype=np.int64)  # left-padded new tokens
        real = np.zeros((B, T), dtype=np.int64)
        positions = np.zeros((B, T), dtype=np.int64)
        for b, n in enumerate(new):
            ids[b, T - len(n) :] = n
            real[b, T - len(n) :] = 1
            positions[b, T - len(n) :] = np.arange(self.cached[b], self.cached[b] + len(n))
        mask = np.concatenate([self.kv_mask, real], axis=1)  # (B, P + T)
        logits, self.past = self.lm(ids, mask, positions, self.past)
        self.kv_mask = mask
        self.cached = [c + len(n) for c, n in zip(self.cached, new)]
        if refilled:
            self.past, self.kv_mask = _compact(self.past, self.kv_mask, self.cached)
        return logits[:, -1]


def _compact(
    past: list[np.ndarray], kv_mask: np.ndarray, cached: list[int]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Keep each row's real slots only, right-aligned in max(cached) slots."""
    B, keep = kv_mask.shape[0], max(cached)
    slots = [np.flatnonzero(kv_mask[b]) for b in range(B)]  # real slots, in order
    new_mask = np.zeros((B, keep), dtype=np.int64)
    for b, c in enumerate(cached):
        new_mask[b, keep - c :] = 1
    out = []
    for t in past:  # (B, K, P, D) -> (B, K, keep, D)
        packed = np.zeros((*t.shape[:2], keep, t.shape[3]), dtype=t.dtype)
        for b, c in enumerate(cached):
            packed[b, :, keep - c :] = t[b][:, slots[b]]
        out.append(packed)
    return out, new_mask


# ---------------------------------------------------------------------------------- text


class OnnxGenerator(BaseTextGenerator):
    """An ONNX export and its tokenizer: `generate` and `stream` with the same arguments as
    the PyTorch `TextGenerator` (see `tinygpt.infer.textgen.BaseTextGenerator`).

    Also: `lm` (the `OnnxLM`), `info` (the folder's marker: format version, model config,
    quantization, source run), `generation_config` (generation_config.json as a dict) and
    `chat_template` (the Jinja template of tokenizer_config.json, or None). `token_steps`
    is the token-level loop (ids in, one id per row per step out) for servers.
    """

    def __init__(self, lm: OnnxLM, tokenizer: Tokenizer) -> None:
        tok_config = lm.folder.read_json(TOKENIZER_CONFIG) or {}
        jinja = tok_config.get("chat_template")
        self.chat_template: str | None = jinja if isinstance(jinja, str) else None
        # the exported Jinja names one of our templates: chat() then works as on the run
        super().__init__(
            tokenizer,
            template_for_jinja(self.chat_template) if self.chat_template else None,
        )
        self.lm = lm
        self.info = lm.info
        self.block_size = lm.block_size
        self.generation_config = lm.folder.read_json(GENERATION_CONFIG) or {}

    def token_steps(
        self,
        ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        repetition_penalty: float,
        seed: int | None,
        stop_ids: tuple[int, ...] = (),
        use_cache: bool = True,
    ) -> Generator[list[int], None, None]:
        # Rows that end with end-of-turn (`stop_ids`) are ended by the text side; the loop
        # itself stops early once every row has produced end-of-text.
        if not use_cache:
            raise TinyGPTError("an ONNX export always decodes with its KV cache; drop use_cache")
        for nxt in generate_tokens(
            self.lm,
            ids,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            seed=seed,
            eot_id=self.eot_id,
            vocab=self.tokenizer.vocab_size,
        ):
            yield nxt.tolist()


def load_onnx(
    path: str | Path,
    *,
    threads: int | None = None,
    providers: Sequence[str] | None = None,
) -> OnnxGenerator:
    """Open an ONNX export folder for generation (see `OnnxGenerator`)."""
    lm = OnnxLM(path, threads=threads, providers=providers)
    tokenizer = load_tokenizer(lm.folder.tokenizer_path)
    if tokenizer.vocab_size > lm.vocab_size:
        raise TinyGPTError(
            f"{lm.folder.tokenizer_path} has {tokenizer.vocab_size} ids but the graph only "
            f"{lm.vocab_size}; the folder's tokenizer does not belong to its model"
        )
    return OnnxGenerator(lm, tokenizer)
