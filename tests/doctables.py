"""Reading the tables of the Markdown docs, so tests can hold the docs to the code."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def table(doc: str, heading: str) -> list[list[str]]:
    """The rows of the first table after `heading` in docs/doc (without its
    header and rule), as cells without backticks."""
    lines = [line.strip() for line in (DOCS / doc).read_text().split(heading, 1)[1].splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in lines[start + 2:end]]
