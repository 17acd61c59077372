"""Schemathesis fuzzes the HTTP API against our own OpenAPI document (/openapi.json).

Two bounded runs against a real server: anonymous (examples, coverage and fuzzing phases)
and authenticated (a fresh bearer session per case, fuzzing phase). Every check schemathesis
has runs except ``positive_data_acceptance``: the password policy (common passwords, the
email's local part) cannot be written in JSON Schema, so schema-valid registrations may
rightly get 422. Zero failures are allowed: no 5xx, no response that breaks the schema
(status, content type, headers, body), no schema-violating request accepted.

``TOKENWARD_FUZZ_EXAMPLES`` and ``TOKENWARD_FUZZ_SEED`` widen or vary the run by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from abuse_support import LiveServer

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SEED = os.environ.get("TOKENWARD_FUZZ_SEED", "1")
EXAMPLES = os.environ.get("TOKENWARD_FUZZ_EXAMPLES", "5")
HOOKS_DIR = Path(__file__).parent


def _schemathesis(server: LiveServer, workdir: Path, *args: str, authed: bool) -> dict[str, Any]:
    report = workdir / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    if authed:
        env.update(
            SCHEMATHESIS_HOOKS="abuse_fuzz_hooks",
            PYTHONPATH=os.pathsep.join([str(HOOKS_DIR), env.get("PYTHONPATH", "")]),
            TOKENWARD_FUZZ_URL=server.url,
        )
    command = [
        str(SCHEMATHESIS), "run", f"{server.url}/openapi.json",
        "--seed", SEED, "--max-examples", EXAMPLES,
        "--checks", "all", "--exclude-checks", "positive_data_acceptance",
        "--report", "json", "--report-json-path", str(report),
        *args,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    data: dict[str, Any] = json.loads(report.read_text())
    cases = data["test_cases"]
    print(
        f"\nschemathesis ({'authenticated' if authed else 'anonymous'}): "
        f"{data['operations']['tested']} operations, {cases['generated']} cases, "
        f"{cases['with_failures']} failing, {len(data['errors'])} errors, "
        f"{data['running_time']:.1f} s, seed {data['seed']}"
    )
    assert done.returncode == 0, done.stdout[-6000:]
    assert cases["with_failures"] == 0
    assert data["errors"] == []
    assert data["operations"]["tested"] == data["operations"]["total"]
    return data


def test_anonymous_fuzzing_finds_no_server_error_or_schema_violation(
    fuzz_server: LiveServer, tmp_path: Path
) -> None:
    """Every operation, every check, without credentials."""
    data = _schemathesis(fuzz_server, tmp_path, authed=False)
    assert data["test_cases"]["generated"] >= 100


def test_authenticated_fuzzing_finds_no_server_error_or_schema_violation(
    fuzz_server: LiveServer, tmp_path: Path
) -> None:
    """Every operation again, each case with a live bearer session."""
    data = _schemathesis(fuzz_server, tmp_path, "--phases", "fuzzing", authed=True)
    assert data["test_cases"]["generated"] >= 50
