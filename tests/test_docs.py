"""The Markdown docs link only to files that exist in the repository (scripts/check_links.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "check_links.py"


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(root)], capture_output=True, text=True)


def test_every_relative_link_in_the_docs_resolves():
    done = _check(ROOT)
    assert done.returncode == 0, done.stdout


def test_the_checker_names_missing_and_outside_links(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("x\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/here.md) [web](https://example.org) [anchor](#top) `[code](nowhere.md)`\n"
        "```\n[fenced](nowhere.md)\n```\n"
        "[missing](docs/install.md#set-up) and ![img](../shared/docs/paper.md)\n"
    )
    done = _check(tmp_path)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "README.md:5: docs/install.md#set-up (no such file)",
        "README.md:5: ../shared/docs/paper.md (outside the repository)",
    ]
