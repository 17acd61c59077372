"""How heavy is ``import tokenward``? Modules loaded and import time, each in a fresh interpreter.

    .venv/bin/python bench/import_weight.py [--runs N] [module ...]

For each module (default: the package root, the token verifier, the blocking verifier, the
server's app and the CLI that ``tokenward serve`` runs) it starts N fresh interpreters, imports
the module once in each and prints the number of modules in ``sys.modules`` that the import
added and the median wall time of the import. The figures are for re-measuring by hand; the
test suite checks which modules get loaded (tests/test_import_weight.py), never timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

DEFAULT_MODULES = [
    "tokenward",
    "tokenward.verifier",
    "tokenward.blocking_verifier",
    "tokenward.http.app",
    "tokenward.cli",
]
# Heavy third-party packages a token verifier should not pay for.
WATCHED = [
    "starlette",
    "sqlalchemy",
    "redis",
    "prometheus_client",
    "argon2",
    "uvicorn",
    "pydantic",
    "alembic",
]

_PROBE = """
import json, sys, time
before = set(sys.modules)
t0 = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t0
added = set(sys.modules) - before
print(json.dumps({{"ms": elapsed * 1000, "added": len(added), "total": len(sys.modules),
    "heavy": sorted({{m.split(".")[0] for m in added}} & set({watched!r}))}}))
"""


def measure(module: str, runs: int) -> dict[str, object]:
    samples = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE.format(module=module, watched=WATCHED)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        samples.append(json.loads(out.stdout))
    return {
        "module": module,
        "added": samples[0]["added"],
        "total": samples[0]["total"],
        "median_ms": statistics.median(s["ms"] for s in samples),
        "heavy": samples[0]["heavy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh interpreters per module")
    parser.add_argument("modules", nargs="*", default=DEFAULT_MODULES)
    args = parser.parse_args()
    if not 1 <= args.runs <= 100:
        parser.error("--runs must be between 1 and 100")
    print(f"{'module':<30} {'modules':>8} {'median ms':>10}  heavy packages loaded")
    for module in args.modules:
        row = measure(module, args.runs)
        heavy = ", ".join(row["heavy"]) or "-"  # type: ignore[arg-type]
        print(f"{row['module']:<30} {row['total']:>8} {row['median_ms']:>10.1f}  {heavy}")


if __name__ == "__main__":
    main()
