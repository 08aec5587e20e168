"""One place that sends a rendered figure or the report to a logger, in that logger's own way.

Scalars already reach every logger through ``pl_module.log``; images have no
common Lightning API, so each logger that can show them gets them here:
TensorBoard's ``add_image``, Weights & Biases' ``log_image`` and MLflow's
``log_image`` with its step (the image slider of each). Other loggers (CSV,
...) have no image view; the PNG files written beside the run serve them.

TensorBoard colours lines by run, so a per-layer scalar
(``<series>/layer_LL``) is also written as tag ``<series>`` of a run of its own,
``<log_dir>/layer_LL`` (:class:`LayerRuns`): the custom-scalars chart of
``<series>`` overlays the layers in a colour each, named by their run.

The Markdown report goes to TensorBoard's Text tab with each figure named by
its Images tag (TensorBoard serves no files, so a relative image would be a
broken link), to Weights & Biases as an HTML panel with the figures inside,
and to MLflow as artifacts (the report and its PNGs).
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter

from lit_vit._private import event_file_writer

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
    event_file_writer(writer).add_summary(
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


# A per-layer scalar: <series>/layer_<LL>.
LAYER_TAG = re.compile(r"(?P<series>.+)/(?P<layer>layer_\d+)")


class LayerRuns:
    """Each TensorBoard logger's per-layer scalars as one run per layer (see the module)."""

    def __init__(self) -> None:
        self._writers: dict[Path, SummaryWriter] = {}

    def log(self, loggers: list[Logger], scalars: dict[str, float], step: int) -> None:
        """Write each ``<series>/layer_LL`` of ``scalars`` as ``<series>`` at ``step`` into
        ``<log_dir>/layer_LL`` of every TensorBoard logger."""
        layered = [(LAYER_TAG.fullmatch(tag), value) for tag, value in scalars.items()]
        layered = [(match, value) for match, value in layered if match]
        for logger in loggers:
            if not isinstance(logger, TensorBoardLogger) or not layered:
                continue
            for match, value in layered:
                writer = self._writer(Path(logger.log_dir) / match["layer"])
                writer.add_scalar(match["series"], value, step)
            for writer in self._writers.values():
                writer.flush()  # a live TensorBoard shows the epoch

    def close(self) -> None:
        """Close the runs' event files."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _writer(self, folder: Path) -> SummaryWriter:
        if folder not in self._writers:
            self._writers[folder] = SummaryWriter(log_dir=str(folder))
        return self._writers[folder]


# A report's figure: ![alt](test/<key>.png), the PNG of image tag <tag root>/<key>.
REPORT_FIGURE = re.compile(r"!\[([^\]]*)\]\(test/([^)]+)\.png\)")


def log_report(logger: Logger, report: Path, tag: str, step: int) -> None:
    """Send the Markdown ``report`` (its figures in ``report.parent / "test"``) to ``logger``.

    Args:
        logger: TensorBoard gets text ``tag`` (figures named by their image tags under
            ``tag``'s root), Weights & Biases an HTML panel ``tag``, MLflow the report
            folder's ``report.md`` and ``test/*.png`` as artifacts under ``attention_report``.
        report: ``<run>/attention/report.md``.
        tag: ``test_attention/report``.
        step: The test's step.
    """
    text = report.read_text()
    if isinstance(logger, TensorBoardLogger):
        root = tag.split("/")[0]
        named = REPORT_FIGURE.sub(rf"*Figure: \1, in the Images tab as `{root}/\2`.*", text)
        logger.experiment.add_text(tag, named, step)
    elif isinstance(logger, WandbLogger):
        import wandb

        logger.experiment.log({tag: wandb.Html(report_html(report))}, step=step)
    elif isinstance(logger, MLFlowLogger):
        client, run = logger.experiment, logger.run_id
        client.log_artifact(run, str(report), "attention_report")
        figures = report.parent / "test"
        if figures.is_dir():
            client.log_artifacts(run, str(figures), "attention_report/test")


def report_html(report: Path) -> str:
    """The Markdown ``report`` as one HTML page, its PNG figures embedded (base64)."""
    import markdown  # TensorBoard's own dependency

    def embedded(match: re.Match) -> str:
        png = (report.parent / "test" / f"{match[2]}.png").read_bytes()
        return f"![{match[1]}](data:image/png;base64,{base64.b64encode(png).decode()})"

    return markdown.markdown(REPORT_FIGURE.sub(embedded, report.read_text()), extensions=["tables"])
