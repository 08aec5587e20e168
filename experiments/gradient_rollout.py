"""Why is gradient rollout less faithful than rollout on a trained lit-vit model? By hand.

On the first ``--images`` test images of a checkpoint, for every explainer and
control: deletion and insertion AUC, how concentrated the map is (the share of
its mass on its top 10% of patches), its Spearman correlation with rollout and
with the image's intensity; and, for gradient rollout, how much of each
layer's gradient-weighted attention its ReLU throws away (the negative share of
``|grad * attention|`` per layer, averaged over images and heads).

    python experiments/gradient_rollout.py logs/fashion_mnist/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse

import torch

from lit_vit.attention import (
    AttentionRecorder,
    controls,
    deletion_insertion_auc,
    explain,
    focus_score,
    spearman,
)
from lit_vit.data import FashionMNISTDataModule
from lit_vit.model import LitViT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--data_dir", default="data")
    args = parser.parse_args(argv)
    model = LitViT.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    data = FashionMNISTDataModule(data_dir=args.data_dir, img_size=model.hparams.img_size)
    data.setup("test")
    images, _ = data.test_dataset.tensors
    images = images[: args.images]
    recorder = AttentionRecorder(model)
    recording = recorder.record(images, grad_targets=[None])
    layout = recording.layout
    maps = explain(recorder, images) | controls(data.denormalize(images).clamp(0, 1), layout)
    product = recording.attention_grads[0] * recording.attention  # (L, B, H, N, N)
    negative = product.clamp(max=0).abs().sum(dim=(-1, -2)) / product.abs().sum(dim=(-1, -2))
    scores = deletion_insertion_auc(model, images, maps, layout, steps=16)
    print(f"{len(images)} test images; negative share of grad * attention per layer:")
    print("  " + " ".join(f"{float(v):.2f}" for v in negative.mean(dim=(1, 2))))
    print("map               deletion  insertion  top-10% mass  rho(rollout)  rho(intensity)")
    for name, saliency in maps.items():
        result = scores[name]
        print(
            f"{name:17s} {float(result.deletion.mean()):8.3f}"
            f" {float(result.insertion.mean()):10.3f}"
            f" {float(focus_score(saliency, 0.1).mean()):13.3f}"
            f" {float(spearman(saliency, maps['rollout']).mean()):13.3f}"
            f" {float(spearman(saliency, maps['intensity']).mean()):15.3f}"
        )
    random = scores["rollout"]
    print(
        f"{'random order':17s} {float(random.random_deletion.mean()):8.3f}"
        f" {float(random.random_insertion.mean()):10.3f}"
    )


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
