"""The runs of one config on disk: ``<save_dir>/<name>/version_<n>/checkpoints/``.

What ``--ckpt_path last`` and ``--ckpt_path best`` resolve against: the
latest version folder of the config's logger that has such a checkpoint; and
the check that a checkpoint fits the model before Lightning loads it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# The best checkpoint's file name carries its score: "epoch012-val_acc0.9121.ckpt".
SCORE = re.compile(r"val_acc(\d+(?:\.\d+)?)")


class RunFolders:
    """The ``version_<n>`` folders of one run name, newest first.

    Args:
        save_dir: The logger's ``save_dir`` (e.g. ``logs``).
        name: The logger's ``name`` (e.g. ``fashion_mnist``).
    """

    def __init__(self, save_dir: str | Path, name: str) -> None:
        self.root = Path(save_dir) / name

    def versions(self) -> list[Path]:
        """``version_<n>`` folders, highest ``n`` first."""
        found = [path for path in self.root.glob("version_*") if path.name[8:].isdigit()]
        return sorted(found, key=lambda path: int(path.name[8:]), reverse=True)

    def next_version(self) -> Path:
        """The folder a new run gets: ``version_<highest + 1>`` (``version_0`` for the first)."""
        versions = self.versions()
        return self.root / f"version_{int(versions[0].name[8:]) + 1 if versions else 0}"

    def latest_checkpoint(self, which: str) -> Path:
        """``last.ckpt``, or the best-scoring ``*val_acc<score>.ckpt``, of the latest run with one.

        Raises:
            FileNotFoundError: No run has one; the message says where it looked.
        """
        for version in self.versions():
            found = self._checkpoint(version / "checkpoints", which)
            if found is not None:
                return found
        raise FileNotFoundError(
            f"--ckpt_path {which}: no run of this config has a {which} checkpoint (looked in "
            f"{self.root}/version_*/checkpoints/). Train first (lit-vit fit with the same "
            "--config), or pass the checkpoint's path."
        )

    def describe_latest(self) -> str:
        """One sentence naming the latest run's best and last checkpoints, or that there is none."""
        for version in self.versions():
            best = self._checkpoint(version / "checkpoints", "best")
            last = self._checkpoint(version / "checkpoints", "last")
            if best or last:
                return f"The latest run of this config has best: {best}, last: {last}."
        return f"No run of this config has checkpoints yet (looked in {self.root}/version_*)."

    @staticmethod
    def _checkpoint(folder: Path, which: str) -> Path | None:
        if which == "last":
            path = folder / "last.ckpt"
            return path if path.is_file() else None
        scored = [
            (float(match.group(1)), path)
            for path in folder.glob("*.ckpt")
            if (match := SCORE.search(path.stem)) is not None
        ]
        return max(scored)[1] if scored else None


def check_checkpoint_matches(ckpt_path: str, model: torch.nn.Module) -> None:
    """Fail early, and clearly, when a checkpoint was made for another model shape.

    Raises:
        ValueError: Listing up to five tensors whose shapes differ or that
            are missing, and the fix.
    """
    # Tensors and plain containers only: a checkpoint that carries code is refused, not run.
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("state_dict", {})
    expected = model.state_dict()
    problems = [
        f"{name}: checkpoint {tuple(state[name].shape)}, model {tuple(tensor.shape)}"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]
    problems += [f"{name}: missing from the checkpoint" for name in expected if name not in state]
    if problems:
        listed = "\n  ".join(problems[:5])
        raise ValueError(
            f"--ckpt_path '{ckpt_path}' belongs to another model shape ({len(problems)} "
            f"tensors differ):\n  {listed}\nUse the config the checkpoint was trained with, e.g. "
            "the config.yaml saved beside it in its version directory."
        )
