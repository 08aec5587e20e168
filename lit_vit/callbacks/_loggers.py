"""One place that sends a rendered figure to a logger, in that logger's own way.

Scalars already reach every logger through ``pl_module.log``; images have no
common Lightning API, so each logger that can show them gets them here:
TensorBoard's ``add_image``, Weights & Biases' ``log_image`` and MLflow's
``log_image`` with its step (the image slider of each). Other loggers (CSV,
...) have no image view; the PNG files written beside the run serve them.
"""

from __future__ import annotations

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from torch import Tensor

# Loggers that show images, for the message about where figures go.
IMAGE_LOGGERS = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def log_image(logger: Logger, tag: str, image: Tensor, step: int) -> None:
    """Send a ``(3, H, W)`` uint8 rendered figure to ``logger`` as ``tag`` at ``step``."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, image, step, dataformats="CHW")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)
    elif isinstance(logger, MLFlowLogger):
        pixels = image.permute(1, 2, 0).numpy()
        logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
