"""A Turkish run end to end: the tr-bpe preset, a BPE tokenizer, Turkish letters intact."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tinygpt.cli import main
from tinygpt.data.prepare import open_dataset
from tinygpt.data.tokenizer import load_tokenizer
from tokenizer_text import TR_NAMES, TR_ROOTS, TR_SUFFIXES

TURKISH_LETTERS = set("ıİşŞğĞçÇöÖüÜ")


def _turkish_docs(n_docs: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            words = [
                rng.choice(TR_ROOTS) + rng.choice(TR_SUFFIXES) for _ in range(rng.randint(4, 10))
            ]
            if rng.random() < 0.3:
                words.insert(0, rng.choice(TR_NAMES))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?"]))
        docs.append(" ".join(sentences))
    return docs


def _run(tmp_path, source: list[str], *extra: str) -> tuple[int, str]:
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--preset",
            "tr-bpe",
            *source,
            "--out",
            str(run),
            "--no-progress",
            "--train.threads",
            "1",
            *extra,
        ]
    )
    return code, run


def test_tr_bpe_preset_trains_and_keeps_turkish_letters(tmp_path, capsys):
    docs = _turkish_docs()
    path = tmp_path / "tr.jsonl"
    path.write_text(
        "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    code, run = _run(
        tmp_path,
        ["--input", str(path)],
        "--max-steps",
        "40",
        "--data.vocab_size",
        "400",
        "--model.n_layer",
        "2",
        "--model.n_embd",
        "64",
        "--model.block_size",
        "64",
        "--train.sample_tokens",
        "200",
    )
    assert code == 0, capsys.readouterr().err
    tok = load_tokenizer(run / "tokenizer.json")
    assert tok.kind == "bpe"
    # Frequent Turkish letters became whole tokens (their two UTF-8 bytes merged) ...
    for letter in "ışğü":
        assert len(tok.encode(letter)) == 1, letter
    # ... the prepared tokens decode back to exactly the Turkish text ...
    ds = open_dataset(json.loads((run / "run.json").read_text())["dataset"]["path"])
    both = np.concatenate([np.asarray(ds.train), np.asarray(ds.val)]).tolist()
    text = tok.decode([t for t in both if t != tok.eot_id])
    assert sorted(text) == sorted("".join(docs))
    # ... and the model's sample speaks in Turkish letters.
    sample = (run / "samples" / "step-000040.txt").read_text(encoding="utf-8")
    assert TURKISH_LETTERS & set(sample), sample


@pytest.mark.network
def test_tr_bpe_on_the_builtin_ataturk_corpus(tmp_path, capsys):
    code, run = _run(tmp_path, ["--corpus", "ataturk"], "--max-steps", "3")
    assert code == 0, capsys.readouterr().err
    sample = (run / "samples" / "step-000003.txt").read_text(encoding="utf-8")
    tok = load_tokenizer(run / "tokenizer.json")
    assert all(len(tok.encode(ch)) == 1 for ch in "ışğİ")
    assert json.loads((run / "summary.json").read_text())["val_loss"] > 0
    assert sample
