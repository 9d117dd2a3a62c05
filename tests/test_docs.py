"""The walkthrough cannot drift from the code: generated blocks are up to date, every
`tinygpt.…` path imports, every picture exists and is small."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from tinygpt.core.errors import TinyGPTError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import docsgen  # noqa: E402  (scripts/docsgen.py)

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [DOCS / name for name in docsgen.DOCS if (DOCS / name).is_file()]
WALKTHROUGHS = [p for p in PAGES if p.name.startswith("walkthrough")]
NUMBER = re.compile(r"[-+]?\d+\.\d+")


def _same_up_to_last_digit(expected: str, actual: str) -> bool:
    """Equal text, except decimals may differ by one unit in their last place (float
    summation order differs between CPU instruction sets)."""
    if NUMBER.sub("#", expected) != NUMBER.sub("#", actual):
        return False
    for a, b in zip(NUMBER.findall(expected), NUMBER.findall(actual)):
        unit = 10.0 ** -len(a.split(".")[1])
        if abs(float(a) - float(b)) > 1.5 * unit:
            return False
    return True


def test_walkthrough_exists():
    assert (DOCS / "walkthrough.md").is_file()


def test_chat_page_shows_every_template():
    from tinygpt.data.template import list_templates

    text = (DOCS / "chat.md").read_text(encoding="utf-8")
    for name in list_templates():
        assert f"<!-- gen:chat-template {name} -->" in text and f"| `{name}` |" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_generated_blocks_are_up_to_date(page):
    text = page.read_text(encoding="utf-8")
    blocks = list(docsgen.BLOCK.finditer(text))
    assert len(blocks) >= (8 if page in WALKTHROUGHS else 1)
    fresh = list(docsgen.BLOCK.finditer(docsgen.regenerate(text)))
    assert len(fresh) == len(blocks)
    for old, new in zip(blocks, fresh):
        assert _same_up_to_last_digit(new["body"], old["body"]), (
            f"{page.name}: block gen:{old['name']}{old['args']} is out of date; run"
            " python scripts/docsgen.py --write"
        )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_code_references_resolve(page):
    text = page.read_text(encoding="utf-8")
    refs = set(re.findall(r"`(tinygpt(?:\.[A-Za-z_]\w*)+)`", text))
    assert len(refs) >= (20 if page in WALKTHROUGHS else 5)
    for ref in sorted(refs):
        parts = ref.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{page.name}: {ref} does not resolve"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{page.name}: {ref} does not import")


@pytest.mark.parametrize("page", WALKTHROUGHS, ids=lambda p: p.name)
def test_images_exist_and_are_small(page):
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text(encoding="utf-8"))
    assert images
    for rel in images:
        path = page.parent / rel
        assert path.is_file(), (
            f"{page.name}: {rel} is missing; run python scripts/docsgen.py --images"
        )
        assert path.read_bytes()[:4] == b"\x89PNG"
        assert path.stat().st_size < 200_000


def test_stale_block_is_detected_and_rewritten(tmp_path):
    page = tmp_path / "walkthrough.md"
    page.write_text("intro\n<!-- gen:init-loss one-layer -->\nold numbers\n<!-- /gen -->\nend\n")
    assert docsgen.stale(tmp_path) == [page]
    assert docsgen.main(["--docs", str(tmp_path), "--check"]) == 1
    assert docsgen.main(["--docs", str(tmp_path), "--write"]) == 0
    text = page.read_text()
    assert "ln V = 4.8520" in text and text.endswith("<!-- /gen -->\nend\n")
    assert docsgen.main(["--docs", str(tmp_path), "--check"]) == 0


def test_number_tolerance_is_strict_enough():
    assert _same_up_to_last_digit("x 0.251 y", "x 0.252 y")
    assert not _same_up_to_last_digit("x 0.251 y", "x 0.254 y")
    assert not _same_up_to_last_digit("x 0.251 y", "z 0.251 y")


def test_unknown_block_is_an_error():
    with pytest.raises(TinyGPTError, match="unknown generated block gen:nope"):
        docsgen.regenerate("<!-- gen:nope -->\n<!-- /gen -->")
