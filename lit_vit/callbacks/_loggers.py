"""One place that sends a rendered figure to a logger, in that logger's own way.

Scalars already reach every logger through ``pl_module.log``; images have no
common Lightning API, so each logger that can show them gets them here:
TensorBoard's ``add_image``, Weights & Biases' ``log_image`` and MLflow's
``log_image`` with its step (the image slider of each). Other loggers (CSV,
...) have no image view; the PNG files written beside the run serve them.
"""

from __future__ import annotations

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

# Loggers that show images, for the message about where figures go.
IMAGE_LOGGERS = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def _add_image(writer, tag: str, image: Tensor, step: int, png: bytes | None) -> None:
    """``add_image`` without encoding again: PyTorch's writer resamples and encodes every
    image; the PNG already written for the file is the same picture."""
    if png is None or not isinstance(writer, SummaryWriter):  # e.g. tensorboardX's writer
        writer.add_image(tag, image, step, dataformats="CHW")
        return
    _, height, width = image.shape
    picture = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=png)
    # What add_image itself does with the summary it builds (SummaryWriter.add_image).
    writer._get_file_writer().add_summary(
        Summary(value=[Summary.Value(tag=tag, image=picture)]), step
    )


def log_image(logger: Logger, tag: str, image: Tensor, step: int, png: bytes | None = None) -> None:
    """Send a ``(3, H, W)`` uint8 rendered figure to ``logger`` as ``tag`` at ``step``.

    ``png``: the image already encoded (:func:`~lit_vit.plotting.encode_png`),
    which TensorBoard then takes as it is.
    """
    if isinstance(logger, TensorBoardLogger):
        _add_image(logger.experiment, tag, image, step, png)
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)
    elif isinstance(logger, MLFlowLogger):
        pixels = image.permute(1, 2, 0).numpy()
        logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
