"""`python -m tinygpt.cli --write-reference FILE` regenerates docs/cli.md; otherwise the CLI."""

import sys
from pathlib import Path

from tinygpt.cli import main, reference_markdown

if sys.argv[1:2] == ["--write-reference"] and len(sys.argv) == 3:
    Path(sys.argv[2]).write_text(reference_markdown(), encoding="utf-8")
    raise SystemExit(0)
raise SystemExit(main())
