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


def load_script(path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # the scripts import their folder's helpers
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # the __main__ guard keeps it from running
    return module


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_script_imports_and_has_a_main(path, monkeypatch):
    assert callable(load_script(path, monkeypatch).main)


def test_the_timers_wrap_functions_that_exist(monkeypatch):
    # The benchmarks time the code where the callbacks look it up; a function that moved
    # would fail only when someone runs them by hand.
    overhead = load_script(ROOT / "benchmarks" / "callback_overhead.py", monkeypatch)
    targets = [target for *_, target in overhead.PIECES if ":" in target]
    missing = [t for t in targets if not hasattr(*overhead.resolve(t))]
    share = load_script(ROOT / "benchmarks" / "test_time_share.py", monkeypatch)
    missing += [name for name, (owner, method) in share.TIMED.items() if not hasattr(owner, method)]
    assert len(targets) > 10 and not missing, missing
