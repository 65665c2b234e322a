"""The one Markdown table helper of the harness's hand-written pages: the timing table
(:mod:`benchmark.evaluation.timing`), the speed pages of :mod:`benchmark.peers` and the README's headline
(``scripts/headline.py``). (The leaderboards render theirs with pandas' ``to_markdown``, whose padded layout their
committed files keep.)"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table: the header, a ``---`` separator, one line per row (each cell as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
