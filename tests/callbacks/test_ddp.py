"""The callbacks under DDP: rank zero probes and logs, nobody deadlocks."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import read_events

SCRIPT = Path(__file__).with_name("ddp_fit.py")


def test_two_process_ddp_logs_once_without_deadlock(tmp_path):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0 done" in result.stdout and "rank 1 done" in result.stdout
    (run_dir,) = sorted((tmp_path / "ddp").iterdir())
    events = read_events(run_dir)
    steps = [event.step for event in events.Images("attention/rollout")]
    assert len(steps) == 2 and len(set(steps)) == 2, "expected one rollout figure per epoch"
    assert "attention/head_diversity/layer_01" in events.Tags()["scalars"]
    pngs = sorted(path.parent.name for path in run_dir.glob("attention/epoch_*/layer_maps.png"))
    assert pngs == ["epoch_000", "epoch_001"]
