"""experiments/ablation.py: every arm through the real CLI, and its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", ROOT / "experiments" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_arms_train_test_and_fill_the_table(tmp_path, fake_fashion_mnist, ablation):
    output = ablation.main(
        [
            "--epochs=1",
            "--arms", "no_ema", "no_augmentation",
            f"--output={tmp_path / 'ablation.md'}",
            f"--save_dir={tmp_path / 'logs'}",
            "--",
            f"--data.system_dir={fake_fashion_mnist}",
            f"--data.data_dir={tmp_path / 'data'}",
            "--data.val_size=128",
            "--data.batch_size=32",
            "--model.embed_dim=32",
            "--model.depth=3",
            "--model.num_heads=2",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2",
            "--trainer.enable_progress_bar=false",
        ]
    )  # fmt: skip
    table = output.read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| no_ema", "| no_aug"))]
    assert len(rows) == 4, table  # the summary and the per-layer table, two arms each
    summary = rows[0].split(" | ")
    assert 0 <= float(summary[2]) <= 1 and 0 < float(summary[3]) < 2, rows[0]
    assert len(rows[2].split(" | ")) == 1 + 3, "one column per layer"
    assert "--model.ema_decay=null" in table and "--data.augment=false" in table
    assert (
        "lit-vit test" in table
        and "Rerun it all: `python experiments/ablation.py --epochs=1" in table
    )
    # Only the probe and HeadDiversity ran: no report, no other figures.
    test_run = max((tmp_path / "logs" / "ablation_no_ema").glob("version_*"))
    assert (test_run / "attention" / "test" / "distance_relative.png").is_file()
    assert not (test_run / "attention" / "test" / "rollout.png").exists()
