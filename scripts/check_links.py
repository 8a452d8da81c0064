#!/usr/bin/env python3
"""Relative links in the repository's Markdown files that point to missing files.

Usage: python scripts/check_links.py [ROOT]   (ROOT: the repository, default this script's parent)

Reads every ``*.md`` under ROOT (skipping hidden folders, ``runs/`` and virtual environments),
takes each Markdown link or image ``[text](target)`` outside code blocks and code spans, and
checks that a relative target (``#anchor`` and ``?query`` removed) names a file or folder that
exists inside ROOT. Web links (``http:``, ``https:``, ``mailto:``...) and pure anchors are not
checked; a relative link that leaves ROOT (``../shared/...``) counts as broken, because it
resolves only on a machine that happens to have that folder. Prints one line per broken link,
``FILE:LINE: TARGET (why)``, and exits 1 if there is any, 0 otherwise.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SKIP_DIRS = {"runs", "node_modules", "__pycache__", "venv", "build", "dist"}
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def markdown_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.md")):
        parts = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        out.append(path)
    return out


def links(text: str):
    """(line number, target) of each link outside fenced code blocks and code spans."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is not None:
            continue
        for link in LINK.finditer(CODE_SPAN.sub("", line)):
            yield number, link.group(1)


def broken_links(root: Path) -> list[str]:
    root = root.resolve()
    problems = []
    for md in markdown_files(root):
        for number, target in links(md.read_text(encoding="utf-8")):
            if SCHEME.match(target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            if not path:
                continue
            resolved = (root / path.lstrip("/")) if path.startswith("/") else (md.parent / path)
            resolved = resolved.resolve()
            where = f"{md.relative_to(root)}:{number}: {target}"
            if not resolved.is_relative_to(root):
                problems.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                problems.append(f"{where} (no such file)")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    problems = broken_links(root)
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} broken link(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
