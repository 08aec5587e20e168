"""Every private attribute lit-vit reads, on real objects of the installed versions: an upgrade
that removes one fails here, by name."""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from lit_vit import _private


class Doubling(LightningModule):
    """Its transfer hook doubles a batch; at the end of validation it runs the hooks itself,
    as the attention callbacks do."""

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch * 2

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        self.transferred = _private.transfer_batch(self, torch.ones(2))


def test_lightning_module_transfer_hooks_run_outside_the_loops():
    module = Doubling()
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.validate(module, dataloaders=[torch.zeros(1, 2)], verbose=False)
    assert torch.equal(module.transferred, torch.full((2,), 2.0))


def test_the_step_lightning_logs_epoch_metrics_at():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert _private.logged_step(trainer) == 0


def test_tensorboard_hp_metric_switch_and_event_file_writer(tmp_path):
    logger = TensorBoardLogger(tmp_path)
    assert logger._default_hp_metric is True, "the attribute switched off exists"
    _private.switch_off_hp_metric(logger)
    assert logger._default_hp_metric is False
    writer = SummaryWriter(tmp_path / "run")
    assert hasattr(_private.event_file_writer(writer), "add_summary")
    writer.close()


def test_the_module_behind_torch_compile():
    model = nn.Linear(2, 2)
    assert _private.compiled_original(torch.compile(model)) is model
    assert _private.compiled_original(model) is None
    assert _private.unwrap_compiled(torch.compile(model)) is model
    assert _private.unwrap_compiled(model) is model


def test_a_hugging_face_models_attention_implementation():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1)
    model = transformers.ViTModel(config)
    model.set_attn_implementation("eager")
    assert _private.attention_implementation(model.config) == "eager"


def test_multihead_attention_packed_projection():
    assert _private.packed_qkv(nn.MultiheadAttention(8, 2)) is True
    assert _private.packed_qkv(nn.MultiheadAttention(8, 2, kdim=4, vdim=4)) is False


def test_argparse_options_and_lightning_cli_internals():
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_epochs")
    assert "max_epochs" in _private.parser_options(parser)
    assert "_subcommand_parsers" in inspect.getsource(LightningCLI), "subcommand_parser reads it"
    assert callable(LightningCLI._parse_ckpt_path), "LitViTCLI overrides it"


def test_the_hub_offline_switch_is_read_at_every_request():
    constants = pytest.importorskip("huggingface_hub").constants
    before = constants.is_offline_mode()
    with _private.hub_offline():
        assert constants.is_offline_mode() is True
    assert constants.is_offline_mode() is before
