"""docs/configuration.md is generated from the settings model and kept up to date."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from tokenward.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description() -> None:
    """A setting without description= would be an undocumented variable."""
    missing = [name for name, f in Settings.model_fields.items() if not f.description]
    assert missing == []


def test_configuration_page_is_up_to_date() -> None:
    """The committed page equals what the generator writes now (run the script if not)."""
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == _generator().render(), "run: python scripts/gen_config_docs.py"


def test_configuration_page_lists_every_variable_once() -> None:
    """Each TOKENWARD_ variable has exactly one row, with its default."""
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(TOKENWARD_[A-Z0-9_]+)` \|", page, flags=re.MULTILINE)
    assert rows == [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    assert "| `TOKENWARD_ACCESS_TTL` | integer (> 0) | `600` |" in page
