"""Fit a tiny ViT with attention callbacks on two CPU processes (DDP, gloo).

Run by ``test_ddp.py`` as a script, because Lightning's DDP launcher starts
the second process by running the same command again.
"""

import sys
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lit_vit.callbacks import AttentionMaps, AttentionProbe, AttentionRollout, HeadDiversity
from lit_vit.model import LitViT


def main(log_dir: Path) -> None:
    seed_everything(0)
    images = torch.randn(64, 1, 28, 28)
    labels = torch.arange(64) % 10
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    model = LitViT(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=TensorBoardLogger(log_dir, name="ddp"),
        callbacks=[
            AttentionProbe(size=4),
            AttentionMaps(),
            AttentionRollout(),
            HeadDiversity(),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, loader, loader)
    print(f"rank {trainer.global_rank} done", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
