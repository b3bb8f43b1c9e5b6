"""Paste generated tables into a hand-written finding, so that no number in it is typed.

A finding marks each generated block with a pair of comments; this script replaces what lies between them with the
named piece of a generated Markdown file (a report's TABLES.md, or a script's output):

    <!-- paste: results/budget/TABLES.md | ## Cost | table 1 -->
    ...replaced...
    <!-- /paste -->

The source is a path from the repository root, the section is a heading line (the text up to the next heading of
the same or a higher level), and the piece is ``table N`` (the N-th table of the section, 1-based; a ``_(none
yet)_`` placeholder counts as a table), ``text N`` (its N-th paragraph that is neither a table nor a heading) or
``all``. A missing file, section or piece stops with an
error that names the marker; the finding is only rewritten when every marker resolved.

    python scripts/paste_tables.py docs/findings/2026-12-05-budget-sweep.md [--check]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!-- paste: (?P<src>[^|]+?) \| (?P<sec>[^|]+?) \| (?P<what>all|table \d+|text \d+) -->\n"
                  r"(?P<body>(?:(?!^<!-- paste:).)*?)^<!-- /paste -->$", re.M | re.S)  # a body holds no opener
OPEN, CLOSE = re.compile(r"^<!-- paste:", re.M), re.compile(r"^<!-- /paste -->$", re.M)


def section(md: str, heading: str) -> str:
    """The text under ``heading`` (a full heading line, e.g. ``## Cost``) up to the next heading of its level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines, out, inside = md.split("\n"), [], False
    for line in lines:
        h = re.match(r"^(#+) ", line)
        if inside and h and len(h.group(1)) <= level:
            break
        if inside:
            out.append(line)
        if line.strip() == heading.strip():
            inside = True
    if not inside:
        raise KeyError(f"no heading {heading!r}")
    return "\n".join(out).strip()


def blocks(text: str) -> tuple[list[str], list[str]]:
    """(tables, paragraphs) of a section, in order; a table is a run of lines that start with ``|``."""
    tables, paras = [], []
    for b in re.split(r"\n\s*\n", text):
        b = b.strip()
        if not b:
            continue
        if all(ln.startswith("|") for ln in b.split("\n")) or re.fullmatch(r"_\(.*\)_", b):
            tables.append(b)  # a report writes "_(none yet)_" where a table has no rows: it still counts
        elif not b.startswith("#"):  # a subheading is not a paragraph
            paras.append(b)
    return tables, paras


def piece(src: Path, heading: str, what: str) -> str:
    text = section(src.read_text(), heading)
    if what == "all":
        return text
    kind, n = what.split()
    tables, paras = blocks(text)
    items = tables if kind == "table" else paras
    if not 1 <= int(n) <= len(items):
        raise KeyError(f"{what!r}: the section has {len(items)} {kind}(s)")
    return items[int(n) - 1]


def paste(doc: str) -> str:
    """``doc`` with every marked block pasted; stops when the markers do not pair up (a missing close marker would
    otherwise swallow the prose up to the next block's) or a marker does not parse."""
    opens, closes, blocks_ = len(OPEN.findall(doc)), len(CLOSE.findall(doc)), len(MARK.findall(doc))
    if not opens == closes == blocks_:
        raise SystemExit(f"{opens} '<!-- paste:' lines, {closes} '<!-- /paste -->' lines and {blocks_} well-formed "
                         "blocks: every opener needs the form '<!-- paste: SOURCE | ## HEADING | table N|text N|all "
                         "-->' and its own close line")

    def one(m: re.Match) -> str:
        src = ROOT / m["src"].strip()
        try:
            new = piece(src, m["sec"], m["what"])
        except (OSError, KeyError) as e:
            raise SystemExit(f"marker {m.group(0).splitlines()[0]!r}: {e}") from None
        return m.group(0).splitlines()[0] + "\n" + new + "\n<!-- /paste -->"
    return MARK.sub(one, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("finding", type=Path)
    ap.add_argument("--check", action="store_true",
                    help="only report whether the finding is up to date (exit 1 if not)")
    a = ap.parse_args(argv)
    old = a.finding.read_text()
    if not OPEN.search(old):
        raise SystemExit(f"{a.finding}: no <!-- paste: SOURCE | HEADING | PIECE --> markers")
    new = paste(old)
    if a.check:
        print("up to date" if new == old else "stale: run without --check")
        return int(new != old)
    a.finding.write_text(new)
    print(f"{a.finding}: {len(MARK.findall(new))} block(s) pasted{'' if new != old else ' (no change)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
