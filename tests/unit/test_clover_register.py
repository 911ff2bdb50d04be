"""The Clover rows of docs/provider-contracts.md, the probe's checks and the code's docstrings
name the same rows: a row the code relies on is in the register, every probe check has its row."""

from __future__ import annotations

import re
from pathlib import Path

from posync.providers.clover import normalizer, oauth, probe, source

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"\bCLV-[A-Z0-9]+-\d+\b")


def register_rows() -> list[str]:
    text = (ROOT / "docs" / "provider-contracts.md").read_text()
    clover = text.split("## Clover", 1)[1].split("## Poynt", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| (CLV-[A-Z0-9]+-\d+) \|", clover, re.MULTILINE)]


def test_register_rows_are_unique_and_have_five_columns() -> None:
    rows = register_rows()
    assert rows and len(rows) == len(set(rows))
    text = (ROOT / "docs" / "provider-contracts.md").read_text()
    for line in text.splitlines():
        if line.startswith("| CLV-"):
            assert line.count(" | ") >= 4 and line.endswith("|"), line[:40]


def test_every_probe_check_has_its_row_and_every_row_named_in_code_exists() -> None:
    rows = set(register_rows())
    assert {c.row for c in probe.CHECKS} <= rows
    for module in (source, normalizer, oauth, probe):
        named = set(ROW.findall(module.__doc__ or ""))
        assert named <= rows, (module.__name__, sorted(named - rows))
    import posync.providers.clover as package

    assert set(ROW.findall(package.__doc__ or "")) <= rows
