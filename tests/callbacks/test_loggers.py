"""Figures and the report reach every logger that shows them, for real and without a network:
MLflow with a SQLite store, Weights & Biases offline; CSV gets the scalars."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_vit.callbacks import AttentionMaps, AttentionProbe, AttentionRollout
from lit_vit.cli import main
from lit_vit.model import LitViT
from tests.conftest import tiny_run_args

pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def test_figures_and_report_go_to_mlflow_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    mlflow = MLFlowLogger(
        experiment_name="lit-vit",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "mlartifacts"),
    )
    wandb = WandbLogger(project="lit-vit", save_dir=str(tmp_path), offline=True)
    csv = CSVLogger(tmp_path, name="csv")
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 1, 28, 28, generator=generator), torch.arange(64) % 10
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=[mlflow, wandb, csv],
        callbacks=[AttentionProbe(size=4), AttentionMaps(), AttentionRollout()],
        limit_train_batches=3,
        limit_val_batches=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,  # MLflow's SQLite store has no folder of its own
    )
    model = LitViT(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    trainer.fit(model, loader, loader)
    trainer.test(model, loader)
    wandb.experiment.finish()
    steps = val_steps(csv)

    # MLflow: time-stepped images under images/ ("/" in a key becomes "~"), with their steps.
    client = mlflow.experiment
    files = [f.path for f in client.list_artifacts(mlflow.run_id, "images")]
    rollout = [path for path in files if path.startswith("images/val_attention~rollout+step+")]
    logged = sorted(int(re.search(r"\+step\+(\d+)\+", path).group(1)) for path in rollout)
    assert sorted(set(logged)) == steps, files

    # Weights & Biases (offline): one rollout image per validation run in the run's media.
    media_dir = "offline-run-*/files/media/images/val_attention"
    assert len(list((tmp_path / "wandb").glob(f"{media_dir}/rollout_[0-9]*.png"))) == len(steps)

    # The loggers' folder is shared by their runs: each run's PNGs get a folder of their own.
    pngs = sorted(tmp_path.glob("attention/*/epoch_*/rollout.png"))
    assert [path.parent.parent.name for path in pngs] == [mlflow.run_id] * 2

    # The report: MLflow artifacts (Markdown and its figures), a W&B HTML panel with them inside.
    report = [f.path for f in client.list_artifacts(mlflow.run_id, "attention_report")]
    assert "attention_report/report.md" in report and "attention_report/test" in report
    figures = client.list_artifacts(mlflow.run_id, "attention_report/test")
    assert "attention_report/test/rollout.png" in [f.path for f in figures]
    (html,) = (tmp_path / "wandb").glob("offline-run-*/files/media/html/test_attention/report_*")
    assert html.read_text().count('src="data:image/png;base64,') >= 2, "rollout, layer maps"

    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val_attention/prefix_mass/layer_00" in metrics


def val_steps(csv: CSVLogger) -> list[int]:
    """The steps at which the CSV logger recorded val/acc."""
    rows = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    step, accuracy = header.index("step"), header.index("val/acc")
    return sorted({int(row.split(",")[step]) for row in rows[1:] if row.split(",")[accuracy]})


def test_mlflow_through_the_cli_with_the_readme_command(tmp_path, fake_fashion_mnist):
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = tiny_run_args(
        tmp_path,
        fake_fashion_mnist,
        "--trainer.max_epochs=1",
        "--trainer.callbacks=[]",
        "--trainer.logger=lightning.pytorch.loggers.MLFlowLogger",
        f"--trainer.logger.tracking_uri={tracking}",
        f"--trainer.default_root_dir={tmp_path / 'logs' / 'mlflow'}",
    )
    main(["fit", *args])
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking)
    (run,) = client.search_runs([client.get_experiment_by_name("lightning_logs").experiment_id])
    assert "val/acc" in run.data.metrics and run.info.status == "FINISHED"
    assert list((tmp_path / "logs" / "mlflow").rglob("checkpoints/*.ckpt"))
