"""One shared fit + test through the real CLI, with every attention callback.

The callback tests that only read a run's output (event files, PNGs, the
report, the checkpoint) share this session-scoped run of a tiny ViT instead
of training their own.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import lit_vit.data
from lit_vit.attention import capture
from lit_vit.cli import main
from lit_vit.data import random_crop
from lit_vit.model import LitViT
from tests.conftest import run_dirs, tiny_run_args

PROBE_SIZE = 6
EPOCHS = 2
TRAIN_BATCHES = 4
BATCH_SIZE = 32
FOCUS_K, FOCUS_M, FOCUS_TEST_IMAGES = 0.2, 0.5, 40
FAITHFULNESS_STEPS, FAITHFULNESS_TEST_IMAGES, FAITHFULNESS_MAX_BATCH = 4, 40, 64
FAITHFULNESS_VAL_STEPS = 2  # coarser curves at validation than at test
SWEEP_SIZES, SWEEP_IMAGES, SWEEP_FIGURE_IMAGES = [20, 28, 36], 64, 2

CONFIG = f"""\
trainer:
  max_epochs: {EPOCHS}
  callbacks:
    - class_path: lit_vit.callbacks.AttentionProbe
      init_args: {{size: {PROBE_SIZE}, seed: 0}}
    - class_path: lit_vit.callbacks.AttentionMaps
    - class_path: lit_vit.callbacks.AttentionRollout
    - class_path: lit_vit.callbacks.AttentionRollout
      init_args: {{head_fusion: max, discard_ratio: 0.9, gradient: false, name: rollout_max}}
    - class_path: lit_vit.callbacks.HeadDiversity
    - class_path: lit_vit.callbacks.LayerRepresentations
    - class_path: lit_vit.callbacks.FocusCoverage
      init_args: {{k: {FOCUS_K}, m: {FOCUS_M}, test_images: {FOCUS_TEST_IMAGES}}}
    - class_path: lit_vit.callbacks.Faithfulness
      init_args:
        steps: {FAITHFULNESS_STEPS}
        val_steps: {FAITHFULNESS_VAL_STEPS}
        test_images: {FAITHFULNESS_TEST_IMAGES}
        max_batch: {FAITHFULNESS_MAX_BATCH}
    - class_path: lit_vit.callbacks.ResolutionSweep
      init_args:
        sizes: {SWEEP_SIZES}
        images: {SWEEP_IMAGES}
        figure_images: {SWEEP_FIGURE_IMAGES}
    - class_path: lit_vit.callbacks.SanityChecks
      init_args: {{at_fit_end: true}}
"""


@pytest.fixture(scope="session")
def attention_run(tmp_path_factory, fake_fashion_mnist):
    """``fit`` for 2 epochs, then ``test`` of ``last.ckpt``, with every attention callback.

    Also counts, during fit, the probe captures (recordings of the probe's
    size, with their number of gradient targets and whether the full attention
    was kept) and the augmented batches.
    """
    tmp_path = tmp_path_factory.mktemp("attention_run")
    config = tmp_path / "callbacks.yaml"
    config.write_text(CONFIG)
    args = tiny_run_args(
        tmp_path,
        fake_fashion_mnist,
        f"--data.batch_size={BATCH_SIZE}",
        f"--trainer.limit_train_batches={TRAIN_BATCHES}",
        "--checkpoint.save_top_k=-1",
        "--model.distance_bias=true",  # every analysis also on timm's attention with a bias
        "--config",
        str(config),
    )
    captures, full, augmented = [], [], []
    record = capture.AttentionRecorder.record

    def counting_record(self, images, grad_targets=(), **options):
        if len(images) == PROBE_SIZE:
            captures.append(len(grad_targets))
            full.append(options.get("full", True))
        return record(self, images, grad_targets, **options)

    def counting_crop(images, padding):
        augmented.append(len(images))
        return random_crop(images, padding)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture.AttentionRecorder, "record", counting_record)
        patch.setattr(lit_vit.data, "random_crop", counting_crop)
        main(["fit", *args])
    (fit_dir,) = run_dirs(tmp_path / "logs")
    checkpoint = fit_dir / "checkpoints" / "last.ckpt"
    main(["test", *args, f"--ckpt_path={checkpoint}"])
    test_dir = run_dirs(tmp_path / "logs")[-1]
    return SimpleNamespace(
        tmp_path=tmp_path,
        args=args,
        data_dir=tmp_path / "data",
        fit_dir=fit_dir,
        test_dir=test_dir,
        checkpoint=checkpoint,
        model=LitViT.load_from_checkpoint(checkpoint, map_location="cpu").eval(),
        report=(test_dir / "attention" / "report.md").read_text(),
        fit_captures=captures,
        fit_captures_full=full,
        augmented_batches=len(augmented),
    )
