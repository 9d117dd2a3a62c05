"""Where imports stand, and how big the pieces are.

The direction of imports is the import contract's business (`[tool.importlinter]` in
pyproject.toml, run as `lint-imports` by scripts/test.sh): it sees function-local imports
too. This file checks what it cannot: that imports are at the top of each module, so that a
reader learns what a module depends on from its first lines. Inside a function only two
kinds are allowed:

- an optional extra (a package of one of pyproject's extras, installed only by those who
  use it), imported where it is used so that the base install stays light;
- the lazy entry points below, which choose between a path that needs torch and one that
  must not import it (the command line, `tinygpt.load`, `tinygpt.serve`).

It also holds the size limits: no module over 600 lines, no function over 80.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tinygpt

PACKAGE = Path(tinygpt.__file__).resolve().parent

# Third-party packages of the optional extras (pyproject's [project.optional-dependencies]).
OPTIONAL = {
    "datasets",
    "gguf",
    "gradio",
    "fastapi",
    "huggingface_hub",
    "langdetect",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "py3langid",
    "sacrebleu",
    "starlette",
    "tensorboard",
    "tokenizers",
    "transformers",
    "uvicorn",
    "wandb",
}
# Extras that live inside another package: torch's TensorBoard writer needs `tensorboard`.
OPTIONAL_MODULES = {"torch.utils.tensorboard"}

# Modules whose functions may import lazily, and why.
LAZY = {
    "launch.py": "the console script's first instant: nothing but the standard library first",
    "__init__.py": "tinygpt.load: an ONNX folder is opened without importing torch",
    "serve/__init__.py": "tinygpt.serve: the web framework and a backend only when asked for",
}
LAZY_PACKAGES = ("cli/",)  # each command imports its stage (and torch) only when it runs

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def _top_level(tree: ast.Module) -> set[int]:
    """Import nodes at module level, also inside a top-level try/if (ImportError fallbacks,
    TYPE_CHECKING)."""
    ids = set()
    for node in tree.body:
        for inner in ast.walk(node) if isinstance(node, (ast.Try, ast.If)) else [node]:
            if isinstance(inner, (ast.Import, ast.ImportFrom)):
                ids.add(id(inner))
    return ids


def _imported(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names]


def _allowed(module: str) -> bool:
    return module.split(".")[0] in OPTIONAL or any(
        module == m or module.startswith(m + ".") for m in OPTIONAL_MODULES
    )


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_imports_are_at_the_top(path):
    name = _name(path)
    if name in LAZY or name.startswith(LAZY_PACKAGES):
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = _top_level(tree)
    local = [
        f"line {node.lineno}: {module}"
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top
        for module in _imported(node)
        if not _allowed(module)
    ]
    assert not local, f"{name} imports inside a function: {local}; move them to the top"


@pytest.mark.parametrize("path", _modules(), ids=_name)
def test_modules_and_functions_are_short(path):
    name = _name(path)
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines; split it by job"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{name}: {long} over {MAX_FUNCTION_LINES} lines; split them"


def test_the_lazy_entry_points_exist():
    for name in LAZY:
        assert (PACKAGE / name).is_file(), name


def test_the_design_map_draws_the_import_graph_as_it_is():
    """docs/design.md's package diagram is generated (scripts/import_graph.py) and current."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"
    spec = importlib.util.spec_from_file_location("import_graph", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run python scripts/import_graph.py"
