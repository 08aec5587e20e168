"""Shared fixtures: small Fashion-MNIST-format files and tiny CLI runs."""

from __future__ import annotations

import os

# No test may reach a model hub: pretrained=True must fail fast and clearly. Set before
# anything imports huggingface_hub, which reads it once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import functools  # noqa: E402
import gzip  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from lit_vit.data import RAW_FILES  # noqa: E402

TRAIN_IMAGES = 640
TEST_IMAGES = 160


def write_idx(path: Path, data: torch.Tensor) -> None:
    """Write a uint8 tensor as a gzipped IDX file, the format of the originals."""
    magic = 0x0800 | data.dim()
    header = struct.pack(">I", magic) + struct.pack(f">{data.dim()}I", *data.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + data.contiguous().numpy().tobytes())


def make_images(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """28x28 uint8 images whose bright block's position encodes the label."""
    images = torch.randint(0, 40, (len(labels), 28, 28), generator=generator, dtype=torch.uint8)
    for index, label in enumerate(labels.tolist()):
        row, col = 4 + 8 * (label // 4), 2 + 6 * (label % 4)
        images[index, row : row + 8, col : col + 6] = 230
    return images


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory) -> Path:
    """A folder with the four original file names, in the original format."""
    folder = tmp_path_factory.mktemp("fashion_mnist_gz")
    generator = torch.Generator().manual_seed(0)
    for split, count in (("train", TRAIN_IMAGES), ("t10k", TEST_IMAGES)):
        labels = torch.arange(count, dtype=torch.uint8) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", make_images(labels, generator))
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in RAW_FILES)
    return folder


def every_callback_small(tmp_path: Path, flow: bool = False) -> Path:
    """A config of every attention callback on few test images (``--config`` after
    ``configs/smoke.yaml``, whose callbacks it replaces): for tests of what runs, not of
    how much. Attention flow (a maximum flow per patch and image) is among the explainers
    compared at test only with ``flow``: the shared run of ``tests/callbacks/conftest.py``,
    the precision matrix and analyze's tests compute it."""
    from lit_vit.attention import EXPLAINERS
    from lit_vit.callbacks.sanity_checks import MIN_IMAGES

    explainers = [name for name in EXPLAINERS if flow or name != "flow"]

    path = tmp_path / "every_callback_small.yaml"
    path.write_text(
        "trainer:\n  callbacks:\n"
        + "".join(
            f"    - class_path: lit_vit.callbacks.{name}\n      init_args: {{{options}}}\n"
            for name, options in (
                ("AttentionProbe", f"size: 4, explainers: {explainers}"),
                ("AttentionMaps", ""),
                ("AttentionRollout", ""),
                ("HeadDiversity", ""),
                ("LayerRepresentations", ""),
                ("FocusCoverage", "test_images: 8"),
                ("Faithfulness", "test_images: 8, steps: 4"),
                ("ResolutionSweep", "images: 8"),
                ("SanityChecks", f"images: {MIN_IMAGES}"),
            )
        )
    )
    return path


def tiny_run_args(tmp_path: Path, system_dir: Path, *extra: str, flow: bool = False) -> list[str]:
    """CLI arguments for a 2-layer, 32-wide ViT on the small files, a few batches, with every
    attention callback on few test images (:func:`every_callback_small`; ``flow``: with
    attention flow among the explainers)."""
    return [
        "--config",
        "configs/smoke.yaml",
        "--config",
        str(every_callback_small(tmp_path, flow)),
        f"--data.system_dir={system_dir}",
        f"--data.data_dir={tmp_path / 'data'}",
        "--data.val_size=128",
        "--data.batch_size=32",
        "--model.embed_dim=32",
        "--model.depth=2",
        "--model.num_heads=2",
        "--model.mlp_ratio=2",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.limit_predict_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *extra,
    ]


def read_events(run_dir: Path):
    """The TensorBoard event data of one run directory, fully loaded (read-only).

    Loaded once per state of its event files: many tests read the shared run's, and
    TensorBoard checks every record with a pure-Python CRC (about 3.5 MB/s here).
    """
    files = tuple(
        (path.name, path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(Path(run_dir).glob("events.out.tfevents.*"))
    )
    return _loaded_events(str(run_dir), files)


@functools.lru_cache(maxsize=16)
def _loaded_events(run_dir: str, files: tuple):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def tensorboard_context(logdir: Path):
    """TensorBoard's plugin context over the runs under ``logdir``, with its scalars plugin."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.scalar.scalars_plugin import ScalarsPlugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    plugins: dict = {}
    tb_context = base_plugin.TBContext(
        logdir=str(logdir),
        data_provider=provider,
        multiplexer=multiplexer,
        plugin_name_to_instance=plugins,
    )
    plugins["scalars"] = ScalarsPlugin(tb_context)
    return tb_context


def hparams_rows(logdir: Path) -> dict[str, dict[str, object]]:
    """The rows of TensorBoard's HParams tab for ``logdir``, as its plugin serves them:
    session name -> column (hyperparameter or metric tag) -> value."""
    from tensorboard import context
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, allowed_statuses=api_pb2.Status.values()
    )
    response = list_session_groups.Handler(
        context.RequestContext(), backend_context.Context(tensorboard_context(logdir)), "", request
    ).run()
    rows = {}
    for group in response.session_groups:
        (session,) = group.sessions
        row: dict[str, object] = {
            name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
            for name, value in group.hparams.items()
        }
        row |= {metric.name.tag: metric.value for metric in session.metric_values}
        rows[session.name] = row
    return rows


def custom_scalars_lines(logdir: Path, tag_regex: str) -> dict[str, dict[str, list]]:
    """What a Custom Scalars chart of ``tag_regex`` draws from the runs under ``logdir``, as
    its plugin serves it: run -> tag -> ``[(step, value), ...]``, a line each (TensorBoard
    colours lines by run and lists the runs with their colour)."""
    from tensorboard import context
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin

    tb_context = tensorboard_context(logdir)
    plugin = CustomScalarsPlugin(tb_context)
    lines = {}
    for run in tb_context.multiplexer.Runs():
        served = plugin.scalars_impl(context.RequestContext(), run, tag_regex, "")
        drawn = {
            tag: [(step, value) for _, step, value in events]
            for tag, events in served["tag_to_events"].items()
        }
        if drawn:
            lines[run] = drawn
    return lines


def run_dirs(logs: Path) -> list[Path]:
    """Version directories under ``logs``, oldest first."""
    return sorted(logs.glob("*/version_*"), key=lambda path: int(path.name.split("_")[1]))


def checkpoint_probe(checkpoint: Path, data_dir: Path, val_size: int = 128):
    """The validation probe a checkpoint's ``AttentionProbe`` state names, rebuilt from the data.

    Asserts that the rebuilt images have the checkpoint's fingerprint.
    """
    from lit_vit.callbacks.probe import Probe
    from lit_vit.data import FashionMNISTDataModule

    state = torch.load(checkpoint, weights_only=False)["callbacks"]["AttentionProbe"]
    datamodule = FashionMNISTDataModule(
        data_dir=str(data_dir), system_dir=None, download=False, val_size=val_size
    )
    datamodule.setup("fit")
    images, labels = datamodule.val_dataset.tensors
    indices = torch.tensor(state["indices"])
    probe = Probe(
        images=images[indices],
        labels=labels[indices],
        pixels=datamodule.denormalize(images[indices]).clamp(0, 1),
        indices=indices,
    )
    assert probe.fingerprint == state["fingerprint"], "checkpoint probe differs from the data"
    return probe


@pytest.fixture(scope="session", autouse=True)
def cli_argv():
    """The tests call ``main(args)``: the command line is theirs, not pytest's."""
    saved, sys.argv = sys.argv, ["lit-vit"]
    yield
    sys.argv = saved
