"""Docs that state what the code does must keep stating it."""

from __future__ import annotations

from pathlib import Path

from kevo_repl.core.follower_types import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_doc_lists_exactly_the_follower_transitions() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    rows = set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in {s.name.lower() for (s, _) in TRANSITIONS}:
            rows.add((cells[0], cells[1], cells[2]))
    code = {(a.name.lower(), b.name.lower(), why) for (a, b), why in TRANSITIONS.items()}
    assert rows == code, f"only in docs: {rows - code}; only in code: {code - rows}"
