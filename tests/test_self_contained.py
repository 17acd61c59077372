"""The repository is self-contained: nothing cites documents that are not in it.

The code, tests and docs once cited an API contract, a style guide, performance notes and a
shared folder kept outside the repository; a reader could not follow those references. The
contract now lives in docs/ (docs/api.md and the pages docs/index.md links). CHANGELOG.md is
history and may name what it removed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Built from lower-case words, so this file does not spell out what it forbids.
_NAMES = [word.upper() + r"\.md" for word in ("api", "style")] + [
    "-".join(("perf", "facts")).upper()
]
_FOLDER = r"\.\./" + "shared"
OUTSIDE = re.compile(r"\b(?:" + "|".join(_NAMES) + r")\b|" + _FOLDER)
SKIP = {"CHANGELOG.md"}


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False, timeout=60
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist): walk the tree
        skip_dirs = {".git", ".venv", "build", "node_modules", "__pycache__"}
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file() and not skip_dirs & set(p.relative_to(ROOT).parts)
        ]
    return [ROOT / name for name in listed.stdout.decode().split("\0") if name]


def test_no_tracked_file_cites_documents_outside_the_repository() -> None:
    citing = []
    for path in _tracked_files():
        if path.name in SKIP or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, fonts, the password filter
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                citing.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert citing == [], "\n".join(citing)


def test_the_pattern_catches_each_name() -> None:
    """The check can fail: each way of citing them is caught; docs/api.md is not."""
    perf = "-".join(("perf", "facts")).upper()
    for cited in [
        "see " + "api".upper() + ".md",
        "style".upper() + ".md's rule",
        perf + ".md",
        "../" + "shared" + "/x",
    ]:
        assert OUTSIDE.search(cited), cited
    assert not OUTSIDE.search("see docs/api.md and docs/index.md")
