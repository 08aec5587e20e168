"""``lit-vit fit`` under DDP (2 processes, gloo): exits 0, rank zero probes and logs once."""

import os
import subprocess
import sys

from tests.conftest import read_events, run_dirs, tiny_run_args


def test_two_process_ddp_through_the_cli(tmp_path, fake_fashion_mnist):
    args = tiny_run_args(
        tmp_path,
        fake_fashion_mnist,
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    result = subprocess.run(
        [sys.executable, "-m", "lit_vit", "fit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Last checkpoint:" in result.stderr + result.stdout
    (run_dir,) = run_dirs(tmp_path / "logs")
    events = read_events(run_dir)
    steps = [event.step for event in events.Images("val_attention/rollout")]
    assert steps == [event.step for event in events.Scalars("val/acc")], "once per epoch"
    assert len(steps) == 2
    assert "val_attention/head_diversity/layer_01" in events.Tags()["scalars"]
    pngs = sorted(path.parent.name for path in run_dir.glob("attention/epoch_*/layer_maps.png"))
    assert pngs == ["epoch_000", "epoch_001"]
    assert (run_dir / "attention" / "fit_end" / "resolution.png").is_file()
