"""Every access to a private attribute of Lightning, PyTorch, Hugging Face or argparse.

Each has its reason (no public way to do it) and the version it was tested
with; ``tests/test_private.py`` calls each on real objects of the installed
versions, so an upgrade that removes one fails there, loudly, rather than
somewhere in a run. This module imports nothing heavy: the model-agnostic
toolkit uses it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

# Tested with: lightning 2.6, torch 2.14, transformers 5.25, huggingface_hub 2.4, Python 3.11.


def transfer_batch(pl_module: Any, batch: Any) -> Any:
    """``batch`` after the module's and the data module's transfer hooks, as the model sees
    it in a step (``LightningModule._apply_batch_transfer_handler``: Lightning runs the hooks
    only inside its loops)."""
    return pl_module._apply_batch_transfer_handler(batch)


def logged_step(trainer: Any) -> int:
    """The step Lightning logs epoch-level metrics at (``LoggerConnector.log_metrics`` reads
    ``fit_loop.epoch_loop._batches_that_stepped``; ``global_step`` differs under gradient
    accumulation and after validation-only runs)."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def switch_off_hp_metric(logger: Any) -> None:
    """No ``hp_metric = -1`` placeholder session (only settable as
    ``TensorBoardLogger(default_hp_metric=...)``, and the CLI builds the logger)."""
    logger._default_hp_metric = False


def event_file_writer(writer: Any) -> Any:
    """The event file writer of a ``SummaryWriter``, to add a summary already built (an image
    summary with the PNG bytes already encoded: ``add_image`` would encode them again)."""
    return writer._get_file_writer()


def compiled_original(module: Any) -> Any:
    """The eager module behind a ``torch.compile`` wrapper (``OptimizedModule._orig_mod``),
    or None for any other module."""
    return getattr(module, "_orig_mod", None)


def unwrap_compiled(module: Any) -> Any:
    """The eager module behind any number of ``torch.compile`` wrappers (``module`` itself
    when it is none)."""
    while hasattr(compiled_original(module), "forward"):
        module = compiled_original(module)
    return module


def attention_implementation(config: Any) -> str:
    """A Hugging Face model's attention implementation (``config._attn_implementation``; the
    public setter has no getter)."""
    return config._attn_implementation


def packed_qkv(module: Any) -> bool:
    """Whether an ``nn.MultiheadAttention`` projects q, k and v with one matrix
    (``_qkv_same_embed_dim``), which the explicit forward relies on."""
    return module._qkv_same_embed_dim


def parser_options(parser: Any) -> set[str]:
    """Every option string of an ``argparse`` parser, without dashes (``parser._actions``:
    argparse lists them nowhere else), for "did you mean" hints."""
    return {option.lstrip("-") for action in parser._actions for option in action.option_strings}


def subcommand_parser(cli: Any, subcommand: str) -> Any:
    """A ``LightningCLI`` subcommand's parser (``_subcommand_parsers``), to print the config
    it parsed."""
    return cli._subcommand_parsers[subcommand]


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Inside, ``huggingface_hub`` reads its local cache only: it reads
    ``constants.HF_HUB_OFFLINE`` at every request (``is_offline_mode()``), while the
    environment variable ``HF_HUB_OFFLINE`` only counts when it is imported."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
