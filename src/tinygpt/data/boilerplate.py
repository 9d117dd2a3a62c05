"""Boilerplate around the text of e-books: Project Gutenberg headers, footers and licences.

Owns: `strip_boilerplate_pieces`, which drops, from the consecutive pieces of one document,
everything up to and including the line that opens the book ("*** START OF THE PROJECT
GUTENBERG EBOOK ... ***", "*** START OF THIS ...", or the older "*END*THE SMALL PRINT! ...")
and everything from the line that closes it ("*** END OF THE PROJECT GUTENBERG EBOOK ...",
"End of the Project Gutenberg EBook of ...", ...) to the end, which is where the licence
stands. A document without these markers passes through unchanged. Used by
`tinygpt.data.cleaning` under `--strip-boilerplate`.

Pieces are cut at line starts (`tinygpt.data.sources.cut_point`), so a marker, which is one
line, never straddles two pieces. The opening marker is looked for in the first piece only
(headers are a few kilobytes; a piece is a megabyte).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_OPEN = re.compile(
    r"^[^\S\n]*(?:\*{3}[^\S\n]*START OF (?:THE|THIS) PROJECT GUTENBERG[^\n]*"
    r"|\*+[^\S\n]*START[^\S\n]*OF[^\S\n]*THE[^\S\n]*PROJECT GUTENBERG[^\n]*"
    r"|\*END\*[^\S\n]*THE SMALL PRINT[^\n]*)\n?",
    re.M | re.I,
)
_CLOSE = re.compile(
    r"^[^\S\n]*(?:\*{3}[^\S\n]*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|\*+[^\S\n]*END[^\S\n]*OF[^\S\n]*THE[^\S\n]*PROJECT GUTENBERG"
    r"|End of (?:the |this )?Project Gutenberg(?:'s|’s)?[^\S\n]+(?:E-?Book|E-?text|Work))",
    re.M | re.I,
)


def strip_boilerplate(text: str) -> str:
    """The text of one whole document without its Gutenberg framing.

    >>> strip_boilerplate("Title: X\\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\\n"
    ...                   "Call me Ishmael.\\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\\nLicence")
    'Call me Ishmael.\\n'
    """
    return "".join(strip_boilerplate_pieces([text]))


def strip_boilerplate_pieces(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces of one document without the Gutenberg header, footer and licence."""
    first = True
    for piece in pieces:
        if first:
            first = False
            close = _CLOSE.search(piece)
            end = close.start() if close is not None else len(piece)
            # The last opening marker before the end: the small print may precede a START line.
            openings = [m.end() for m in _OPEN.finditer(piece, 0, end)]
            if openings:
                piece = piece[openings[-1] :]
                close = _CLOSE.search(piece)
        else:
            close = _CLOSE.search(piece)
        if close is not None:
            yield piece[: close.start()]
            return  # the rest is the footer and licence
        yield piece
