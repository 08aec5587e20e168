"""What the trust-earning explanations cost, run by hand.

    python benchmarks/trust_bench.py                 # all three, a few minutes
    python benchmarks/trust_bench.py --repeats 3     # steadier medians
    python benchmarks/trust_bench.py --sections 3    # one of them

1. CP-LRP of the 8 probe images on the default model (``configs/fashion_mnist.yaml``'s
   architecture, random weights: the cost does not depend on them) against one plain
   forward + backward pass of the same model on them (the gradient of the same logits
   with respect to the input). Medians of the repeats, measured side by side in one run;
   the target is a ratio of at most 3.
2. Noisy linear imputation of 256 28x28 images at the 9 ROAD fractions (2,304 sparse
   solves of patch masks, 4x4 patches, most salient first for a random map) on 1 core
   (``torch.set_num_threads(1)``); the target is under 10 s.
3. One 224x224 image's ROAD copies as analyze makes them (10 maps x 2 orders x 9
   fractions = 180 masks of 16x16 patches, random maps) on one thread and on every
   torch thread (SuperLU frees the GIL while it solves); the same solutions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import yaml

from lit_vit.attention import ROAD_FRACTIONS, cp_lrp, noisy_linear_imputation
from lit_vit.model import LitViT


def default_model() -> LitViT:
    with open("configs/fashion_mnist.yaml") as file:
        arguments = yaml.safe_load(file)["model"]
    torch.manual_seed(0)
    return LitViT(**arguments).eval()


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def lrp_against_gradient(repeats: int) -> None:
    model = default_model()
    images = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(8) % 10

    def gradient() -> None:
        x = images.clone().requires_grad_(True)
        logits = model(x)
        torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)

    def lrp() -> None:
        cp_lrp(model, images, targets)

    plain, conservative = median_seconds(gradient, repeats), median_seconds(lrp, repeats)
    print("1. CP-LRP of 8 probe images, default model (12 layers, width 96)")
    print(f"   forward + backward   {plain * 1e3:8.1f} ms")
    print(f"   CP-LRP               {conservative * 1e3:8.1f} ms")
    print(f"   ratio                {conservative / plain:8.2f}x (target <= 3)")


def imputation(repeats: int) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(256, 1, 28, 28, generator=generator)
    order = torch.rand(256, 49, generator=generator).argsort(dim=1)
    masks = []
    for fraction in ROAD_FRACTIONS:
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(49).expand(256, -1))
        patches = (ranks < int(fraction * 49 + 0.5)).view(256, 7, 7)
        masks.append(patches.repeat_interleave(4, 1).repeat_interleave(4, 2))
    removed = torch.cat(masks)  # (9 * 256, 28, 28)
    copies = images.repeat(len(ROAD_FRACTIONS), 1, 1, 1)
    seconds = median_seconds(lambda: noisy_linear_imputation(copies, removed), repeats)
    torch.set_num_threads(threads)
    print("2. Noisy linear imputation, 256 images x 9 fractions, 1 core")
    print(f"   {len(removed):,} images  {seconds:6.2f} s (target < 10 s)")


def imputation_224(repeats: int) -> None:
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 224, 224, generator=generator)
    masks = []
    for _ in range(10):  # maps
        order = torch.rand(196, generator=generator).argsort()
        for ranked in (order, order.flip(0)):  # MoRF, LeRF
            for fraction in ROAD_FRACTIONS:
                patches = torch.zeros(196, dtype=torch.bool)
                patches[ranked[: int(fraction * 196 + 0.5)]] = True
                grid = patches.view(14, 14)
                masks.append(grid.repeat_interleave(16, 0).repeat_interleave(16, 1))
    removed = torch.stack(masks)  # (180, 224, 224)
    copies = image.expand(len(removed), -1, -1, -1)

    def impute() -> torch.Tensor:
        return noisy_linear_imputation(copies, removed, sigma=0)

    torch.set_num_threads(1)
    alone = median_seconds(impute, repeats)
    reference = impute()
    torch.set_num_threads(threads)
    parallel = median_seconds(impute, repeats)
    difference = float((impute() - reference).abs().max())
    print("3. ROAD imputation of one 224x224 image's 180 copies")
    print(f"   1 thread    {alone:6.2f} s")
    print(f"   {threads} threads   {parallel:6.2f} s  ({alone / parallel:.2f}x)")
    print(f"   largest difference {difference:.1e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--sections", default="1,2,3", help="Comma-separated sections to run (default: all)."
    )
    args = parser.parse_args(argv)
    sections = {int(section) for section in args.sections.split(",")}
    if 1 in sections:
        lrp_against_gradient(args.repeats)
    if 2 in sections:
        imputation(max(1, args.repeats // 2))
    if 3 in sections:
        imputation_224(max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
