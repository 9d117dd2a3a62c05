"""`tinygpt eval`: what a run is scored on, and the quality of what it generates.

The loss itself and bits per byte are `tinygpt.infer.scoring`'s, computed one way everywhere.

**Which text.** The run's validation split (the dataset recorded in the run folder), another
prepared folder (its tokenizer must be the run's), or any text source that
`tinygpt.data.sources.iter_documents` reads, encoded with the run's tokenizer, every document
followed by one end-of-text token (as `tinygpt prepare` lays them out). A run fine-tuned on
conversations is scored on the assistant tokens of its held-out examples instead
(`score_examples`, as `tinygpt.infer.scoring.ExampleEvaluator` does during fine-tuning), with
bits per byte over the bytes of those tokens.

**Generation quality.** A prompt set is a JSONL file of `{"prompt", "reference"}` lines;
`make_prompts` cuts one from a token split (the first K tokens of a window as prompt, the
next M as reference). Continuations are scored against the references with sacrebleu's
corpus BLEU and chrF (0..100; identical text scores 100).

Results go to the run's `eval/` folder (`tinygpt.core.run`): `results.json` (the last loss
evaluation), `generations.jsonl`, `prompts.jsonl` and `scores.json`. This module knows
nothing about optimisers, argument parsing or report layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.files import (
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
    read_text,
    require_file,
    require_folder,
)
from tinygpt.core.run import RunDir
from tinygpt.core.runtime import resolve_device
from tinygpt.data.examples import fit_to_context, is_examples, open_examples
from tinygpt.data.prepare import largest_id, open_dataset
from tinygpt.data.sources import iter_documents
from tinygpt.data.tokenizer import Tokenizer, file_hash
from tinygpt.infer.generate import TextGenerator, usable_prompts
from tinygpt.infer.loader import load_run
from tinygpt.infer.scoring import (
    LossResult,
    bits_per_byte,
    count_bytes,
    evaluate_examples,
    score_lines,
    score_tokens,
    token_byte_lengths,
)

# The fixed prompts of `--samples`: a document start, then openings that suit prose,
# verse or dialogue in either built-in language.
SAMPLE_PROMPTS = ["\n", "The ", "ROMEO:\n", "Bir "]


def read_lines(path: str | Path, errors: str = "strict") -> list[str]:
    """The non-blank lines of a text file (line breaks removed)."""
    path = Path(path)
    if errors == "replace":
        text = require_file(path, "input file").read_bytes().decode("utf-8", errors="replace")
    else:
        text = read_text(path, "input file")
    return [line for line in text.splitlines() if line.strip()]


def encode_documents(documents: Iterable[str], tokenizer: Tokenizer) -> np.ndarray:
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


def open_checked_dataset(data_dir: str | Path, run_dir: str | Path) -> Any:
    """A prepared dataset folder whose tokenizer is the run's (same file hash)."""
    run = RunDir(run_dir)
    data_dir = require_folder(
        data_dir,
        "dataset folder",
        "give --data DIR (a folder made by `tinygpt prepare`) or --input PATH",
    )
    dataset = open_dataset(data_dir)
    theirs = dataset.meta.get("tokenizer_hash") or file_hash(dataset.tokenizer_path)
    if theirs != file_hash(run.tokenizer_path):
        raise TinyGPTError(
            f"{data_dir} was prepared with another tokenizer than the run {run.path}; prepare"
            f" the text with --tokenizer {run.tokenizer_path}, or use --input PATH"
        )
    return dataset


def resolve_eval_tokens(
    run_dir: str | Path,
    tokenizer: Tokenizer,
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
        docs = iter_documents(input, text_field=text_field, errors=errors)
        return encode_documents(docs, tokenizer), f"input {input}"
    if data is None:
        data = RunDir(run_dir).dataset_dir()
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
    per_line: bool = False,
) -> LossResult:
    """Load a run and score it (module docstring); with `save`, write RUN/eval/results.json.
    `per_line` scores each line of the text file `input` on its own (`score_lines`)."""
    run_dir = RunDir(run_dir).require().path
    if per_line and (not input or data):
        raise TinyGPTError("--per-line scores the lines of a text file: give --input FILE")
    run = load_run(run_dir, checkpoint=checkpoint, device=resolve_device(device))
    device_of_model = str(next(run.model.parameters()).device)
    block = run.config.model.block_size
    if per_line and input:  # per_line without input was refused above
        if stride is not None or max_tokens is not None:
            raise TinyGPTError("--per-line scores whole lines: drop --stride and --max-tokens")
        lines = read_lines(input, errors)
        result = score_lines(
            run.model, lines, run.tokenizer, block, batch_size=batch_size, device=device_of_model
        )
        result.data = f"{len(lines)} lines of {input}"
    examples = None if input else _examples_of(run_dir, data)
    if examples is not None:
        if stride is not None or max_tokens is not None:
            raise TinyGPTError(
                "--stride and --max-tokens apply to text; held-out examples are scored whole"
            )
        result = score_examples(
            run.model, examples, run.tokenizer, block, batch_size=batch_size, device=device_of_model
        )
    if per_line or examples is not None:
        result.checkpoint, result.step = run.checkpoint_dir.name, run.step
        if save:
            RunDir(run_dir).write_eval("results.json", result.to_dict())
        return result
    tokens, what = resolve_eval_tokens(
        run_dir, run.tokenizer, data=data, input=input, text_field=text_field, errors=errors
    )
    vocab = run.config.model.vocab_size
    if len(tokens) and largest_id(tokens) >= vocab:
        raise TinyGPTError(
            f"the {what} holds token id {largest_id(tokens):,}, beyond the model's vocabulary"
            f" of {vocab:,}; the dataset is damaged or was made with another tokenizer"
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
        RunDir(run_dir).write_eval("results.json", result.to_dict())
    return result


def _examples_of(run_dir: str | Path, data: str | Path | None) -> Any:
    """The examples folder to score: `data` when it is one; without `data`, the one a
    fine-tuned run was trained on (None when the text to score is not examples)."""
    path = Path(data) if data else RunDir(run_dir).dataset_dir()
    if path is None or not is_examples(path):
        return None
    examples = open_examples(path)
    if examples.meta.get("tokenizer_hash") != file_hash(RunDir(run_dir).tokenizer_path):
        raise TinyGPTError(
            f"{path} was prepared with another tokenizer than the run {run_dir}; prepare the"
            f" examples with --tokenizer {run_dir}"
        )
    return examples


def score_examples(
    model: Any,
    examples: Any,
    tokenizer: Tokenizer,
    block_size: int,
    *,
    batch_size: int = 16,
    device: str = "cpu",
) -> LossResult:
    """Loss, perplexity and bits per byte of `model` on the assistant tokens of the held-out
    examples of an examples folder (`tinygpt.data.examples.open_examples`); examples longer than
    the context are left out, as fine-tuning leaves them out."""
    split = examples.val
    keep, dropped = fit_to_context(split, block_size)
    if not len(keep):
        raise TinyGPTError(
            f"none of the {len(split)} held-out examples of {examples.path} fits the model's"
            f" context of {block_size} tokens"
        )
    result = evaluate_examples(
        model, split, keep.tolist(), batch_size=batch_size, device=device,
        pad_id=tokenizer.eot_id,
    )  # fmt: skip
    lengths = token_byte_lengths(tokenizer)
    n_bytes = 0
    for i in keep.tolist():
        ids, mask = split.example(i)
        n_bytes += count_bytes(ids[1:][mask[1:] > 0], lengths)
    left_out = f", {dropped} longer than the context left out" if dropped else ""
    return LossResult(
        val_loss=result.loss,
        val_ppl=result.perplexity,
        val_bpb=bits_per_byte(result.nll, n_bytes),
        nll=result.nll,
        tokens=result.tokens,
        bytes=n_bytes,
        data=f"assistant tokens of {len(keep)} held-out examples of {examples.path}{left_out}",
    )


# ------------------------------------------------------------------------ prompt sets


def make_prompts(
    tokens: np.ndarray,
    tokenizer: Tokenizer,
    prompt_tokens: int,
    reference_tokens: int,
    count: int = 20,
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
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_prompts(path: str | Path) -> list[dict[str, str]]:
    """Read a prompts JSONL file; every line needs string fields `prompt` and `reference`."""
    path = require_file(path, "prompts file")
    out = []
    for lineno, record in read_jsonl(path):
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
    scores: dict[str, float | None] = {
        **text_scores([r["generation"] for r in rows], [r["reference"] for r in rows]),
        "prompts": len(rows),
        "temperature": temperature,
        "top_k": top_k,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
    }
    write_prompts(out_dir / "generations.jsonl", rows)
    atomic_write_json(out_dir / "scores.json", scores)
    return scores


def write_samples(
    generator: Any,
    run_dir: str | Path,
    n: int,
    *,
    prompts: Sequence[str] = SAMPLE_PROMPTS,
    max_new_tokens: int = 200,
    temperature: float = SAMPLE_TEMPERATURE,
    top_k: int | None = SAMPLE_TOP_K,
    seed: int = 0,
    label: str = "eval",
) -> list[Path]:
    """`n` samples, cycling through `prompts`, as RUN/samples/<label>-NN.txt (prompt + text).

    Prompts with characters the tokenizer cannot encode are skipped (`usable_prompts`).
    """
    if n < 1:
        raise TinyGPTError(f"--samples {n} must be at least 1")
    usable = usable_prompts(generator.tokenizer, prompts)
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
        paths.append(RunDir(run_dir).write_sample(f"{label}-{i + 1:02d}", prompt + text))
    return paths


def evaluate_run_generation(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    prompts_file: str | Path | None = None,
    make: tuple[int, int] | None = None,
    num_prompts: int = 20,
    samples: int = 0,
    data: str | Path | None = None,
    input: str | None = None,
    text_field: str = "text",
    errors: str = "strict",
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """What `eval --prompts/--make-prompts/--samples` does to a run.

    With `prompts_file` (JSONL) or `make` = (K, M) — prompts cut from the evaluation text,
    written to eval/prompts.jsonl — continuations are scored with BLEU and chrF
    (`evaluate_generation`); `samples` > 0 writes that many samples to samples/. Returns the
    figures; `report` receives a line for each file written.
    """
    say = report or (lambda line: None)
    if prompts_file and make:
        raise TinyGPTError("give either --prompts FILE or --make-prompts K,M, not both")
    if samples < 0:
        raise TinyGPTError(f"--samples {samples} must be 0 or more")
    folder = RunDir(run_dir).require()
    prompts = read_prompts(prompts_file) if prompts_file else None
    run = load_run(folder.path, checkpoint=checkpoint, device=resolve_device(device))
    if make:
        tokens, _ = resolve_eval_tokens(
            folder.path,
            run.tokenizer,
            data=data,
            input=input,
            text_field=text_field,
            errors=errors,
        )
        prompts = make_prompts(tokens, run.tokenizer, make[0], make[1], num_prompts)
        path = write_prompts(folder.eval_file("prompts.jsonl"), prompts)
        say(f"wrote {len(prompts)} prompts to {path}")
    gen = TextGenerator(run.model, run.tokenizer)
    out: dict[str, Any] = {}
    if prompts is not None:
        scores = evaluate_generation(
            gen, prompts, folder.eval_dir, temperature=temperature, top_k=top_k, seed=seed
        )
        out.update(bleu=scores["bleu"], chrf=scores["chrf"], prompts=scores["prompts"])
        say(
            f"BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f} (sacrebleu, 0-100) over"
            f" {scores['prompts']} prompts; generations in {folder.eval_file('generations.jsonl')}"
        )
    if samples:
        paths = write_samples(
            gen,
            folder.path,
            samples,
            temperature=temperature or SAMPLE_TEMPERATURE,
            top_k=top_k,
            seed=seed,
        )
        out["samples"] = [str(p) for p in paths]
        say(f"wrote {len(paths)} samples to {folder.samples_dir}")
    return out
