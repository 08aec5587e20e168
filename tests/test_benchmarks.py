"""The hand-run scripts still import against the current code (they run outside the suite)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(
    path
    for folder in ("benchmarks", "experiments")
    for path in (ROOT / folder).glob("*.py")
    if not path.name.startswith("_")
)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_script_imports_and_has_a_main(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # the scripts import their folder's helpers
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # the __main__ guard keeps it from running
    assert callable(module.main)
