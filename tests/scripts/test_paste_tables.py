"""scripts/paste_tables.py: a finding's marked blocks are replaced by the named pieces of a generated file, and a
marker that does not resolve stops without touching the finding."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "paste_tables.py"
spec = importlib.util.spec_from_file_location("paste_tables", SCRIPT)
P = importlib.util.module_from_spec(spec)
spec.loader.exec_module(P)

TABLES = """# Results

## The answer

No crossover within the budgets run.

| arm | ppl |
|---|---|
| a | 1.0 |

| arm | acc |
|---|---|
| a | 50 |

### A subsection stays in its section

| x |
|---|

## Cost

| arm | s |
|---|---|
| a | 9 |
"""


def _doc(src: str, what: str, body: str = "old\n") -> str:
    return f"intro\n\n<!-- paste: {src} | ## The answer | {what} -->\n{body}<!-- /paste -->\n\ntail\n"


@pytest.fixture
def tables(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "ROOT", tmp_path)
    (tmp_path / "T.md").write_text(TABLES)
    return tmp_path


def test_pieces_replace_only_the_marked_body(tables):
    doc = tables / "f.md"
    doc.write_text(_doc("T.md", "table 2") + "\n" + _doc("T.md", "text 1").replace("intro\n\n", ""))
    assert P.main([str(doc)]) == 0
    got = doc.read_text()
    assert "| a | 50 |" in got and "| a | 1.0 |" not in got and "old" not in got
    assert "No crossover within the budgets run." in got and got.startswith("intro\n\n") and got.endswith("tail\n")
    assert P.main([str(doc), "--check"]) == 0  # pasting again changes nothing
    assert "| x |" in P.piece(tables / "T.md", "## The answer", "table 3")  # a subsection belongs to its section
    assert P.piece(tables / "T.md", "## Cost", "table 1").endswith("| a | 9 |")


@pytest.mark.parametrize("src,what,err", [("T.md", "table 4", "has 3 table"),
                                          ("missing.md", "table 1", "No such file"),
                                          ("T.md", "text 2", "has 1 text")])
def test_a_marker_that_does_not_resolve_names_itself_and_keeps_the_finding(tables, src, what, err):
    doc = tables / "f.md"
    doc.write_text(_doc(src, what))
    before = doc.read_text()
    with pytest.raises(SystemExit, match=err):
        P.main([str(doc)])
    assert doc.read_text() == before


def test_a_missing_heading_or_close_marker_or_malformed_opener_stops(tables):
    doc = tables / "f.md"
    doc.write_text(_doc("T.md", "table 1").replace("## The answer", "## No such section"))
    with pytest.raises(SystemExit, match="no heading '## No such section'"):
        P.main([str(doc)])
    prose = "hand-written prose\n"
    unclosed = _doc("T.md", "table 1").replace("<!-- /paste -->\n", "") + prose + _doc("T.md", "table 2")
    doc.write_text(unclosed)
    with pytest.raises(SystemExit, match="2 '<!-- paste:' lines, 1"):
        P.main([str(doc)])
    assert doc.read_text() == unclosed  # the prose between the blocks is still there
    doc.write_text(_doc("T.md", "Table 1"))  # a typo in the piece: not silently skipped
    with pytest.raises(SystemExit, match="0 well-formed"):
        P.main([str(doc)])


def test_a_placeholder_counts_as_the_table_it_stands_for(tables):
    (tables / "T.md").write_text("## S\n\nFirst:\n\n_(none yet)_\n\nSecond:\n\n| b |\n|---|\n")
    assert P.piece(tables / "T.md", "## S", "table 1") == "_(none yet)_"
    assert P.piece(tables / "T.md", "## S", "table 2") == "| b |\n|---|"


def test_stale_finding_is_reported_by_check(tables):
    doc = tables / "f.md"
    doc.write_text(_doc("T.md", "table 1"))
    assert P.main([str(doc), "--check"]) == 1 and "old" in doc.read_text()


def test_committed_findings_hold_what_their_sources_say():
    """Every finding with paste markers matches its generated sources as committed (regenerate, then paste)."""
    docs = [d for d in (SCRIPT.parents[1] / "docs" / "findings").glob("*.md") if P.OPEN.search(d.read_text())]
    assert {"2026-12-05-budget-sweep.md", "2026-12-05-short-budget.md"} <= {d.name for d in docs}
    for d in docs:
        assert P.paste(d.read_text()) == d.read_text(), f"{d.name}: run scripts/paste_tables.py {d}"
