"""Evaluation of a trained run: loss, perplexity, bits per byte, BLEU/chrF, sample files.

Owns what `tinygpt eval` computes on top of the core loss (`tinygpt.evaluate.evaluate`):

- **Bits per byte.** The summed negative log-likelihood of the scored targets, in nats,
  divided by ln 2 and by the number of UTF-8 bytes those same targets decode to:
  bpb = nll / ln 2 / bytes. A tokenizer with long tokens has a high loss per token but
  few tokens per byte, so bpb compares char-level and BPE models on the same text. An
  end-of-text target stands for no bytes, yet its loss still counts: predicting where a
  document ends is part of modelling the text.
- **Which text.** The run's validation split (the dataset folder recorded in `run.json`),
  another prepared folder (its tokenizer must be the run's), or any text source that
  `tinygpt.corpora.iter_documents` reads, encoded with the run's tokenizer, every
  document followed by one end-of-text token (as `tinygpt prepare` lays them out).
- **Generation quality.** A prompt set is a JSONL file of `{"prompt", "reference"}` lines;
  `make_prompts` cuts one from a token split (the first K tokens of a window as prompt,
  the next M as reference). Continuations are scored against the references with
  sacrebleu's corpus BLEU and chrF (0..100; identical text scores 100).

Results go to `RUN/eval/`: `results.json` (the last loss evaluation), `generations.jsonl`
and `scores.json`. This module knows nothing about argument parsing or report layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.errors import TinyGPTError

LN2 = math.log(2.0)
EVAL_DIR = "eval"
# The fixed prompts of `--samples`: a document start, then openings that suit prose,
# verse or dialogue in either built-in language.
SAMPLE_PROMPTS = ["\n", "The ", "ROMEO:\n", "Bir "]


# ------------------------------------------------------------------------ bits per byte


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """UTF-8 length of every token id, (V,) int64; special tokens have length 0.

    >>> from tinygpt.tokenizer import CharTokenizer
    >>> token_byte_lengths(CharTokenizer(["a", "é"])).tolist()  # a, é, <|endoftext|>
    [1, 2, 0]
    """
    return np.array(
        [len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=np.int64
    )


def count_bytes(tokens: np.ndarray | Sequence[int], lengths: np.ndarray) -> int:
    """Total UTF-8 bytes of `tokens` given per-token `lengths`."""
    ids = np.asarray(tokens, dtype=np.int64)
    return int(lengths[ids].sum()) if ids.size else 0


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """nll (nats, summed) / ln 2 / bytes; nan when there are no bytes.

    >>> round(bits_per_byte(math.log(4) * 3, 3), 6)  # three bytes, each 1 in 4 likely
    2.0
    """
    return nll_nats / LN2 / n_bytes if n_bytes else float("nan")


@dataclass
class LossResult:
    """The numbers `tinygpt eval --json` prints (and `results.json` holds)."""

    val_loss: float
    val_ppl: float
    val_bpb: float
    nll: float  # summed, nats
    tokens: int  # scored targets
    bytes: int  # UTF-8 bytes of the scored targets
    checkpoint: str = ""
    step: int = 0
    data: str = ""
    stride: int | None = None
    max_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_tokens(
    model: Any,
    tokens: np.ndarray,
    tokenizer: Any,
    block_size: int,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    stride: int | None = None,
    max_tokens: int | None = None,
) -> LossResult:
    """Loss, perplexity and bits per byte of `model` on `tokens` (see the module docstring).

    The targets `evaluate` scores are tokens[first:last]; their bytes are the denominator.
    """
    from tinygpt.evaluate import evaluate

    if len(tokens) < 2:
        raise TinyGPTError(
            f"the evaluation text has {len(tokens)} token(s); at least 2 are needed (one to"
            " read, one to predict); give more text"
        )
    if stride is not None and not 1 <= stride <= block_size:
        raise TinyGPTError(
            f"--stride {stride} must be between 1 and the model's context ({block_size})"
        )
    if max_tokens is not None and max_tokens < 1:
        raise TinyGPTError(f"--max-tokens {max_tokens} must be at least 1")
    result = evaluate(
        model,
        tokens,
        block_size,
        batch_size=batch_size,
        device=device,
        stride=stride,
        max_tokens=max_tokens,
    )
    n_bytes = count_bytes(tokens[result.first : result.last], token_byte_lengths(tokenizer))
    return LossResult(
        val_loss=result.loss,
        val_ppl=result.perplexity,
        val_bpb=bits_per_byte(result.nll, n_bytes),
        nll=result.nll,
        tokens=result.tokens,
        bytes=n_bytes,
        stride=stride,
        max_tokens=max_tokens,
    )


# --------------------------------------------------------------------------- which text


def encode_documents(documents: Iterable[str], tokenizer: Any) -> np.ndarray:
    """Token ids of `documents`, each followed by one end-of-text token, as (N,) int64."""
    ids: list[int] = []
    chars = 0
    for doc in documents:
        chars += len(doc)
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eot_id)
    if chars == 0:
        raise TinyGPTError("the evaluation text is empty; give a file or folder that holds text")
    return np.asarray(ids, dtype=np.int64)


def _dataset_path_of(run_dir: Path) -> Path | None:
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    path = (info.get("dataset") or {}).get("path")
    return Path(path) if path else None


def open_checked_dataset(data_dir: str | Path, run_dir: Path) -> Any:
    """A prepared dataset folder whose tokenizer is the run's (same file hash)."""
    from tinygpt.data import open_dataset
    from tinygpt.tokenizer import file_hash

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TinyGPTError(
            f"dataset folder {data_dir} does not exist; give --data DIR (a folder made by"
            " `tinygpt prepare`) or --input PATH"
        )
    dataset = open_dataset(data_dir)
    theirs = dataset.meta.get("tokenizer_hash") or file_hash(dataset.tokenizer_path)
    if theirs != file_hash(run_dir / "tokenizer.json"):
        raise TinyGPTError(
            f"{data_dir} was prepared with another tokenizer than the run {run_dir}; prepare"
            f" the text with --tokenizer {run_dir / 'tokenizer.json'}, or use --input PATH"
        )
    return dataset


def resolve_eval_tokens(
    run_dir: Path,
    tokenizer: Any,
    *,
    data: str | Path | None = None,
    input: str | None = None,
    split: str = "val",
    text_field: str = "text",
    errors: str = "strict",
) -> tuple[np.ndarray, str]:
    """(tokens, description) for the text asked for; the run's validation split by default.

    `text_field` and `errors` say how to read `input` (JSONL field; bytes that are not UTF-8).
    """
    if data and input:
        raise TinyGPTError("give either --data DIR or --input PATH, not both")
    if input:
        from tinygpt.corpora import iter_documents

        docs = iter_documents(input, text_field=text_field, errors=errors)
        return encode_documents(docs, tokenizer), f"input {input}"
    if data is None:
        data = _dataset_path_of(run_dir)
        if data is None or not Path(data).is_dir():
            where = f" ({data})" if data else ""
            raise TinyGPTError(
                f"the dataset the run was trained on{where} is gone; evaluate on a prepared"
                " folder with --data DIR or on any text with --input PATH"
            )
    dataset = open_checked_dataset(data, run_dir)
    tokens = dataset.val if split == "val" else dataset.train
    return tokens, f"{split} split of {dataset.path}"


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    data: str | Path | None = None,
    input: str | None = None,
    text_field: str = "text",
    errors: str = "strict",
    stride: int | None = None,
    max_tokens: int | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    save: bool = True,
) -> LossResult:
    """Load a run and score it (module docstring); with `save`, write RUN/eval/results.json."""
    from tinygpt.checkpoint import load_run
    from tinygpt.generate import resolve_device

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TinyGPTError(
            f"run folder {run_dir} does not exist; give a folder `tinygpt train` wrote"
        )
    run = load_run(run_dir, checkpoint=checkpoint, device=resolve_device(device))
    tokens, what = resolve_eval_tokens(
        run_dir, run.tokenizer, data=data, input=input, text_field=text_field, errors=errors
    )
    result = score_tokens(
        run.model,
        tokens,
        run.tokenizer,
        run.config.model.block_size,
        batch_size=batch_size,
        device=str(next(run.model.parameters()).device),
        stride=stride,
        max_tokens=max_tokens,
    )
    result.checkpoint = run.checkpoint_dir.name
    result.step = run.step
    result.data = what
    if save:
        write_json(run_dir / EVAL_DIR / "results.json", result.to_dict())
    return result


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------ prompt sets


def make_prompts(
    tokens: np.ndarray, tokenizer: Any, prompt_tokens: int, reference_tokens: int, count: int = 20
) -> list[dict[str, str]]:
    """`count` prompt/reference pairs cut from windows spread evenly over `tokens`.

    Each window holds `prompt_tokens` then `reference_tokens` tokens; windows that contain
    an end-of-text token are skipped, since their reference would belong to another
    document.
    """
    if prompt_tokens < 1 or reference_tokens < 1 or count < 1:
        raise TinyGPTError(
            f"--make-prompts K,M needs K >= 1 and M >= 1 (got {prompt_tokens},"
            f" {reference_tokens}), and at least one prompt"
        )
    span = prompt_tokens + reference_tokens
    n = len(tokens)
    if n < span:
        raise TinyGPTError(
            f"the split has {n} tokens, fewer than one prompt plus reference ({span});"
            " choose smaller K,M"
        )
    eot = tokenizer.eot_id
    starts = np.linspace(0, n - span, num=max(count * 4, 1), dtype=np.int64)
    out: list[dict[str, str]] = []
    for s in dict.fromkeys(starts.tolist()):
        window = np.asarray(tokens[s : s + span], dtype=np.int64)
        if (window == eot).any():
            continue
        prompt = tokenizer.decode(window[:prompt_tokens].tolist())
        reference = tokenizer.decode(window[prompt_tokens:].tolist())
        out.append({"prompt": prompt, "reference": reference})
        if len(out) == count:
            break
    if not out:
        raise TinyGPTError(
            "every window of the split crosses a document boundary; choose smaller K,M"
        )
    return out


def write_prompts(path: str | Path, records: Sequence[dict[str, str]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_prompts(path: str | Path) -> list[dict[str, str]]:
    """Read a prompts JSONL file; every line needs string fields `prompt` and `reference`."""
    path = Path(path)
    if not path.is_file():
        raise TinyGPTError(f"prompts file {path} does not exist")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TinyGPTError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(k), str) for k in ("prompt", "reference")
        ):
            raise TinyGPTError(
                f'{path}:{lineno}: each line must be {{"prompt": "...", "reference": "..."}}'
                " with text values"
            )
        out.append({"prompt": record["prompt"], "reference": record["reference"]})
    if not out:
        raise TinyGPTError(f"prompts file {path} holds no prompts")
    return out


def text_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (sacrebleu, 0..100) of hypotheses against one reference each."""
    try:
        import sacrebleu
    except ImportError:
        raise TinyGPTError(
            "BLEU and chrF need the sacrebleu package: pip install 'tinygpt[eval]'"
        ) from None
    if len(hypotheses) != len(references):
        raise TinyGPTError(f"{len(hypotheses)} generations for {len(references)} references")
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    return {"bleu": float(bleu.score), "chrf": float(chrf.score)}


def evaluate_generation(
    generator: Any,
    prompts: Sequence[dict[str, str]],
    out_dir: str | Path,
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Continue every prompt, score against the references, write generations and scores.

    `max_new_tokens` defaults to the reference's length in tokens (per prompt), so a
    continuation is compared with a reference of the same size. Greedy by default
    (temperature 0); a positive temperature samples with `seed`.
    """
    out_dir = Path(out_dir)
    rows = []
    for i, rec in enumerate(prompts):
        budget = max_new_tokens
        if budget is None:
            budget = max(1, len(generator.tokenizer.encode(rec["reference"])))
        text = generator.generate(
            rec["prompt"],
            max_new_tokens=budget,
            temperature=temperature,
            top_k=top_k,
            seed=seed + i,
        )
        rows.append({**rec, "generation": text})
    scores = text_scores([r["generation"] for r in rows], [r["reference"] for r in rows])
    scores.update(
        prompts=len(rows),
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_prompts(out_dir / "generations.jsonl", rows)
    write_json(out_dir / "scores.json", scores)
    return scores


def write_samples(
    generator: Any,
    run_dir: str | Path,
    n: int,
    *,
    prompts: Sequence[str] = SAMPLE_PROMPTS,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = 200,
    seed: int = 0,
    label: str = "eval",
) -> list[Path]:
    """`n` samples, cycling through `prompts`, as RUN/samples/<label>-NN.txt (prompt + text).

    Prompts with characters the tokenizer cannot encode are skipped.
    """
    if n < 1:
        raise TinyGPTError(f"--samples {n} must be at least 1")
    usable = []
    for p in prompts:
        try:
            generator.tokenizer.encode(p)
        except TinyGPTError:
            continue
        usable.append(p)
    if not usable:
        usable = [""]
    folder = Path(run_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        prompt = usable[i % len(usable)]
        text = generator.generate(
            prompt,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed + i,
        )
        path = folder / f"{label}-{i + 1:02d}.txt"
        path.write_text(prompt + text, encoding="utf-8")
        paths.append(path)
    return paths
