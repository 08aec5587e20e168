"""``lit-vit analyze``: the full attention report for a model, without training.

The model is a lit-vit checkpoint (``--ckpt_path``), a timm model by name
(``--model vit_small_patch16_224``) or a Hugging Face image classifier
(``--model hf:google/vit-base-patch16-224``, a hub id or a local folder);
pretrained weights when they can be had. The images are Fashion-MNIST's test
split or any folder in torchvision's ``ImageFolder`` layout, preprocessed the
way the model expects. Every attention callback runs its test-time analysis
and the report is written to ``<save_dir>/analyze_<model>/version_<n>/``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torchvision.datasets.folder import find_classes

from lit_vit.attention import EXPLAINERS
from lit_vit.attention.backends import find_backend
from lit_vit.callbacks import (
    AttentionMaps,
    AttentionProbe,
    AttentionRollout,
    Faithfulness,
    FocusCoverage,
    HeadDiversity,
    LayerRepresentations,
    ResolutionSweep,
    SanityChecks,
)
from lit_vit.data import CLASS_NAMES, DEBIAN_DIR, PIXEL_MEAN, PIXEL_STD, FashionMNISTDataModule
from lit_vit.image_data import FASHION_MNIST, ImageTestDataModule
from lit_vit.model import LitViT
from lit_vit.pretrained import (
    PretrainedClassifier,
    hugging_face_model,
    id2label_names,
    imagenet_names,
    resize_config,
    timm_model,
)
from lit_vit.progress import console_progress

HF_PREFIX = "hf:"
# Grids of more patches are large: attention flow (a maximum flow per patch and image) and
# ROAD's imputations (a sparse solve per removed region) grow with the grid faster than the
# rest, so analyze's defaults there leave out flow and score fewer faithfulness images, and the
# sanity checks compute flow at the cascade's two ends only.
LARGE_GRID = 64
LARGE_GRID_FAITHFULNESS_IMAGES = 8
FAITHFULNESS_IMAGES = 256
# The expensive parts of the report that --skip leaves out.
SKIPPABLE = ("flow", "sanity", "resolution", "faithfulness")


@dataclass(frozen=True)
class TestData:
    """Where the test images come from and how they are batched (see :func:`analyze`)."""

    source: str
    data_dir: str
    system_dir: str | None
    batch_size: int
    num_workers: int

    def for_model(
        self, data_config: dict[str, Any], model_classes: Sequence[str | Sequence[str]]
    ) -> ImageTestDataModule:
        """The images preprocessed by ``data_config`` (timm's keys), labelled with the model's
        classes where they match the data's by name."""
        return ImageTestDataModule(
            self.source,
            data_config,
            self.data_dir,
            self.system_dir,
            self.batch_size,
            self.num_workers,
            model_classes,
        )


def analyze(
    ckpt_path: str | None = None,
    model: str | None = None,
    pretrained: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    data: str = FASHION_MNIST,
    data_dir: str = "data",
    system_dir: str | None = DEBIAN_DIR,
    batch_size: int = 64,
    num_workers: int = 0,
    probe_size: int = 8,
    test_images: int = 1000,
    faithfulness_images: int | None = None,
    save_dir: str = "logs",
    accelerator: str = "auto",
    classes: list[str] | None = None,
    skip: str | None = None,
) -> Path:
    """Write the attention report of a model on a test set, without training.

    Args:
        ckpt_path: A lit-vit checkpoint (``lit-vit fit`` wrote it).
        model: A timm model name, or ``hf:<hub id or folder>`` for a Hugging
            Face image classifier; instead of ``ckpt_path``.
        pretrained: Load the named model's pretrained weights (a network or a
            filled cache; a Hugging Face folder is read from disk); ``false``
            for random weights.
        model_kwargs: Extra arguments of ``timm.create_model`` (e.g.
            ``{depth: 2}``), for a timm name.
        data: ``fashion_mnist`` or a folder ``<folder>/<class>/<image>``.
        data_dir: Where Fashion-MNIST lives or is unpacked.
        system_dir: Folder of Fashion-MNIST's original ``.gz`` files.
        batch_size: Test images per batch.
        num_workers: DataLoader workers.
        probe_size: Probe images (class-balanced, from the test set).
        test_images: Test images of the per-class focus, coverage and lift
            and of the resolution sweep.
        faithfulness_images: Test images of the faithfulness scores (deletion,
            insertion, ROAD, SaCo); ``None``: 256, or 8 on grids of more than 64 patches
            (about 25 s per 224 px image on two CPU cores).
        save_dir: Logs go to ``<save_dir>/analyze_<run>/version_<n>/``, ``<run>`` the
            checkpoint's run (``fashion_mnist_version_0``) or the model's name.
        accelerator: Lightning's accelerator.
        classes: The model's class names in output order, when the model
            does not name them (a lit-vit checkpoint names Fashion-MNIST's,
            a Hugging Face model its ``id2label``, a pretrained timm model
            ImageNet's). The data's classes (Fashion-MNIST's or the folder
            names) are matched to them by name, case and punctuation aside;
            accuracy is logged only when every data class matches.
        skip: Comma-separated parts of the report to leave out, from ``flow`` (attention
            flow, a maximum flow per patch and image: about 3 s per 224 px image and map
            on a CPU core), ``sanity`` (the sanity checks, which explain the images again
            at each of the model's randomisation steps), ``resolution`` (the resolution
            sweep) and ``faithfulness`` (deletion, insertion, ROAD and SaCo: hundreds of
            forwards and, for ROAD, 18 sparse solves per image and map), e.g.
            ``flow,sanity``; ``""`` for none. ``None``: ``flow`` on grids of more than 64
            patches, else none. Each expensive part says its estimate when it starts.

    Returns:
        The report's path.

    Raises:
        ValueError: Both or neither of ``ckpt_path`` and ``model``; an unknown
            model; a ``data`` that is neither Fashion-MNIST nor a folder of
            class folders; a probe larger than the test set; ``classes`` of
            another length than the model's outputs; an unknown part in ``skip``.
        FileNotFoundError: A missing checkpoint or weights that cannot be had.
    """
    if (ckpt_path is None) == (model is None):
        raise ValueError(
            "give one of --ckpt_path (a lit-vit checkpoint) and --model (a timm name or "
            "hf:<hub id or folder>)."
        )
    skipped = None if skip is None else _skipped(skip)  # checked before the model loads
    test_data = TestData(data, data_dir, system_dir, batch_size, num_workers)
    if ckpt_path is not None:
        module, datamodule, name = _from_checkpoint(ckpt_path, test_data, classes)
    else:
        module, datamodule, name = _from_name(
            model, pretrained, model_kwargs or {}, test_data, classes
        )
    skipped, faithfulness_images = _proportionate(module, skipped, faithfulness_images)
    explainers = [name for name in EXPLAINERS if name not in skipped]
    callbacks = [
        AttentionProbe(size=probe_size, explainers=explainers),
        AttentionMaps(),
        AttentionRollout(),
        HeadDiversity(),
        LayerRepresentations(),
        FocusCoverage(test_images=test_images),
        *([] if "faithfulness" in skipped else [Faithfulness(test_images=faithfulness_images)]),
        *([] if "sanity" in skipped else [SanityChecks(flow_at_ends_above=LARGE_GRID)]),
        *([] if "resolution" in skipped else [ResolutionSweep(images=test_images)]),
        console_progress(TQDMProgressBar()),  # as the CLI's: a bar on a terminal only
    ]
    logger = TensorBoardLogger(save_dir, name=f"analyze_{_run_name(ckpt_path, name)}")
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    rank_zero_info(f"Analysing {name} on {_describe(datamodule)}; logs: {logger.log_dir}")
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    report = Path(logger.log_dir) / "attention" / "report.md"
    metrics = trainer.callback_metrics
    if "test/acc" in metrics:
        rank_zero_info(
            f"test/acc {float(metrics['test/acc']):.4f} on {module.test_images:,} test images"
        )
    else:
        unmatched = ", ".join(getattr(datamodule, "unmatched", ()))
        why = (
            f"the data's classes {unmatched} are none of the model's class names"
            if getattr(datamodule, "model_aliases", None)
            else "the model does not name its classes"
        )
        rank_zero_info(
            f"No accuracy: {why} (its predictions are still what the maps explain). Name the "
            "model's classes in output order with --classes '[name, ...]' to score it."
        )
    return report  # the probe has said where it is


def _from_checkpoint(
    ckpt_path: str, test_data: TestData, classes: list[str] | None
) -> tuple[LightningModule, LightningDataModule, str]:
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(
            f"--ckpt_path '{ckpt_path}' does not exist: give a checkpoint lit-vit fit wrote, "
            "under logs/<name>/version_<n>/checkpoints/."
        )
    try:
        module = LitViT.load_from_checkpoint(ckpt_path, map_location="cpu")
    except (RuntimeError, EOFError, KeyError, TypeError) as error:
        raise ValueError(
            f"--ckpt_path '{ckpt_path}' is not a lit-vit checkpoint that can be read "
            f"({str(error).splitlines()[0]}). Give one lit-vit fit wrote."
        ) from error
    hparams = module.hparams
    trained_on = CLASS_NAMES if hparams.num_classes == len(CLASS_NAMES) else ()
    model_classes = _checked_classes(classes, hparams.num_classes) or trained_on
    if test_data.source == FASHION_MNIST:  # exactly as in training: resized on the device
        datamodule = FashionMNISTDataModule(
            data_dir=test_data.data_dir,
            system_dir=test_data.system_dir,
            batch_size=test_data.batch_size,
            num_workers=test_data.num_workers,
            img_size=hparams.img_size,
        )
        return module, datamodule, hparams.model_name
    data_config = resize_config(hparams.in_chans, hparams.img_size, PIXEL_MEAN, PIXEL_STD)
    datamodule = test_data.for_model(data_config, model_classes)
    datamodule.setup("test")
    module.score_test = datamodule.scored
    return module, datamodule, hparams.model_name


def _from_name(
    name: str,
    pretrained: bool,
    model_kwargs: dict[str, Any],
    test_data: TestData,
    classes: list[str] | None,
) -> tuple[LightningModule, LightningDataModule, str]:
    if name.startswith(HF_PREFIX):
        model, data_config = hugging_face_model(name.removeprefix(HF_PREFIX), pretrained)
        num_classes = int(model.config.num_labels)
        named = id2label_names(model.config)
    else:
        data_classes = None if pretrained else _data_class_names(test_data.source)
        count = None if data_classes is None else len(data_classes)
        model, data_config = timm_model(name, pretrained, count, model_kwargs)
        num_classes = int(model.num_classes)
        if data_classes is None:
            named = imagenet_names(model)
        else:  # built for the data, unless model_kwargs gave it other classes
            named = data_classes if len(data_classes) == num_classes else []
    model_classes = _checked_classes(classes, num_classes) or named
    datamodule = test_data.for_model(data_config, model_classes)
    datamodule.setup("test")
    module = PretrainedClassifier(model, name, num_classes, datamodule.scored)
    return module, datamodule, name


def _proportionate(
    module: LightningModule, skipped: set[str] | None, faithfulness_images: int | None
) -> tuple[set[str], int]:
    """The parts to skip and the faithfulness images, where the user left them to analyze:
    everything on small grids; on large ones no attention flow and fewer faithfulness images,
    said on the console with the options that restore them."""
    backend = find_backend(module)
    patches = backend.layout(backend.input_size()).num_patches
    large = patches > LARGE_GRID
    reduced, options = [], []
    if skipped is None:
        skipped = {"flow"} if large else set()
        if large:
            reduced.append("attention flow left out")
            options.append("--skip ''")
    if faithfulness_images is None:
        faithfulness_images = LARGE_GRID_FAITHFULNESS_IMAGES if large else FAITHFULNESS_IMAGES
        if large:
            reduced.append(f"Faithfulness on the first {faithfulness_images} test images")
            options.append(f"--faithfulness_images {FAITHFULNESS_IMAGES}")
    if reduced:
        rank_zero_info(
            f"{patches} patches per image: {' and '.join(reduced)}, to keep the report to "
            f"minutes on a CPU; {' '.join(options)} to analyse everything."
        )
    return skipped, faithfulness_images


def _skipped(skip: str) -> set[str]:
    """The parts named in ``--skip`` (``"flow,sanity"``), checked."""
    parts = {part.strip() for part in skip.split(",") if part.strip()}
    unknown = sorted(parts - set(SKIPPABLE))
    if unknown:
        raise ValueError(
            f"--skip '{skip}': {', '.join(unknown)} is not a part of the report that can be "
            f"left out; choose from {', '.join(SKIPPABLE)}, comma-separated (--skip flow,sanity)."
        )
    return parts


def _checked_classes(classes: list[str] | None, num_classes: int) -> list[str]:
    if classes and len(classes) != num_classes:
        raise ValueError(
            f"--classes names {len(classes)} classes, the model has {num_classes} outputs: "
            "give one name per output, in output order."
        )
    return list(classes or ())


def _data_class_names(data: str) -> list[str]:
    """The data's classes, in label order (a folder's as ``ImageFolder`` finds them)."""
    if data == FASHION_MNIST:
        return list(CLASS_NAMES)
    try:
        classes, _ = find_classes(data)
    except (FileNotFoundError, NotADirectoryError):
        return ["?"]  # ImageTestDataModule names the problem
    return classes


def _describe(datamodule: LightningDataModule) -> str:
    if isinstance(datamodule, ImageTestDataModule):
        return datamodule.describe()
    return "the Fashion-MNIST test split"


def _run_name(ckpt_path: str | None, model: str) -> str:
    """The checkpoint's run (``fashion_mnist_version_0`` for
    ``logs/fashion_mnist/version_0/checkpoints/last.ckpt``, else the file's stem), or the model
    as given (a folder's last component)."""
    if ckpt_path is not None:
        path = Path(ckpt_path).resolve()
        if path.parent.name == "checkpoints":
            return _safe(f"{path.parents[2].name}_{path.parents[1].name}")
        return _safe(path.stem)
    return _safe(Path(model.removeprefix(HF_PREFIX).rstrip("/")).name)


def _safe(name: str) -> str:
    """A model name as a folder name: ``hf:google/vit-base`` -> ``hf_google_vit-base``."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "model"
