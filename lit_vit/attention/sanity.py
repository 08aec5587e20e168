"""Sanity checks for saliency maps (Adebayo et al. 2018), made aware of a ViT's parts.

**Cascading model-parameter randomisation**: from the trained model,
re-initialise parameters from the top, one step at a time and cumulatively:
the classifier head (with the final norm), then blocks ``L-1, L-2, ..., 0``,
then the patch embedding together with the position embeddings and the prefix
tokens, which generic tools forget. Each step re-initialises with a fixed seed
and the ViT initialiser (weights truncated normal with std 0.02, biases 0,
norms to weight 1 and bias 0). After each step every explainer's map of the
probe is compared with its map of the trained model by Spearman's rank
correlation over the patches, averaged over the images. An explainer that
depends on the model falls towards 0; one that stays high once everything is
random explains the input, not the model. The model is restored bit for bit
afterwards, whatever happens.

**Random-logit check** for class-specific explainers: the Spearman correlation
between the map for the predicted class and the map for a uniformly drawn
other class (seeded). Class-agnostic maps (rollout, flow, class-token
attention) score 1 by construction.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from scipy.stats import rankdata
from torch import Tensor, nn

from lit_vit.attention.backends import CaptureBackend

__all__ = [
    "RandomizationCurve",
    "RandomizationStep",
    "cascading_randomization",
    "random_logit_targets",
    "randomization_steps",
    "spearman",
]

# Parameters outside the blocks whose names hold one of these belong to the input side.
EMBEDDING_WORDS = ("embed", "token", "conv_proj")
STD = 0.02


@dataclass(frozen=True)
class RandomizationStep:
    """One step of the cascade: a label (``"head"``, ``"block 11"``, ``"embeddings"``) and
    the qualified names of the parameters it re-initialises."""

    label: str
    parameters: tuple[str, ...]


@dataclass(frozen=True)
class RandomizationCurve:
    """Spearman correlation with the trained model's maps after each step.

    Attributes:
        labels: ``"trained"`` then the steps' labels, in cascade order.
        correlations: explainer -> ``(steps + 1,)`` mean over images; 1 at ``"trained"``.
        trained: explainer -> ``(B, gh, gw)`` its maps of the trained model, on the CPU.
        randomised: explainer -> ``(B,)`` per-image correlation after the last step (the
            whole model random), for intervals over the images.
    """

    labels: tuple[str, ...]
    correlations: dict[str, Tensor]
    trained: dict[str, Tensor]
    randomised: dict[str, Tensor]

    def after_full_randomisation(self) -> dict[str, float]:
        """Each explainer's correlation once the whole model is random."""
        return {name: float(values[-1]) for name, values in self.correlations.items()}


def randomization_steps(model: nn.Module, backend: CaptureBackend) -> list[RandomizationStep]:
    """The ViT-aware cascade: head (and final norm), blocks from the last, embeddings.

    Blocks are the modules holding each attention module; the rest of the ViT's
    parameters is the input side when its name holds "embed", "token" or
    "conv_proj" (patch and position embeddings, class, distillation and register
    tokens), else the head side.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    vit_prefix = f"{backend.vit_name}." if backend.vit_name else ""
    blocks = [name.rpartition(".")[0] for name in backend.module_names]
    in_blocks: set[str] = set()
    block_steps = []
    for index, block in reversed(list(enumerate(blocks))):
        module = model.get_submodule(block) if block else model
        parameters = tuple(names[id(p)] for p in module.parameters())
        in_blocks.update(parameters)
        block_steps.append(RandomizationStep(f"block {index}", parameters))
    rest = [names[id(p)] for p in backend.vit.parameters() if names[id(p)] not in in_blocks]
    local = {name: name.removeprefix(vit_prefix) for name in rest}
    embeddings = tuple(n for n in rest if any(w in local[n] for w in EMBEDDING_WORDS))
    head = tuple(n for n in rest if n not in embeddings)
    return [
        RandomizationStep("head", head),
        *block_steps,
        RandomizationStep("embeddings", embeddings),
    ]


def cascading_randomization(
    model: nn.Module,
    steps: list[RandomizationStep],
    explain: Callable[[], Mapping[str, Tensor]],
    seed: int = 0,
) -> RandomizationCurve:
    """Randomise ``steps`` cumulatively and compare ``explain()``'s maps with the trained ones.

    Args:
        model: The model ``explain`` explains; changed in place, restored bit for bit.
        steps: The cascade, e.g. :func:`randomization_steps`.
        explain: Maps of the probe with the model as it is now: name -> ``(B, gh, gw)``.
            It may leave out an expensive explainer at intermediate steps (its curve is
            ``nan`` there); every explainer of the trained model must be back at the last
            step, whose correlations the verdicts read.
        seed: Step ``i`` re-initialises with seed ``seed + i``.

    Returns:
        The :class:`RandomizationCurve` of every explainer.

    Raises:
        ValueError: An explainer missing at the last step.
    """
    saved = copy.deepcopy(model.state_dict())
    parameters = dict(model.named_parameters())
    norms = _norm_parameters(model)
    try:
        trained = {name: maps.detach().cpu() for name, maps in explain().items()}
        curves = {name: [1.0] for name in trained}
        last = {name: torch.ones(len(maps)) for name, maps in trained.items()}
        for index, step in enumerate(steps):
            generator = torch.Generator().manual_seed(seed + index)
            with torch.no_grad():
                for name in step.parameters:
                    _reinitialise(parameters[name], name in norms, name, generator)
            maps = explain()
            for name in trained:
                if name in maps:
                    last[name] = spearman(maps[name].detach().cpu(), trained[name])
                curves[name].append(float(last[name].mean()) if name in maps else math.nan)
        missing = [name for name, values in curves.items() if math.isnan(values[-1])]
        if missing:
            raise ValueError(f"explain() left out {missing} at the last step of the cascade")
    finally:
        model.load_state_dict(saved)
    return RandomizationCurve(
        labels=("trained", *(step.label for step in steps)),
        correlations={name: torch.tensor(values) for name, values in curves.items()},
        trained=trained,
        randomised=last,
    )


def random_logit_targets(predicted: Tensor, num_classes: int, seed: int = 0) -> Tensor:
    """``(B,)`` a uniformly drawn class other than each predicted one (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(1, num_classes, predicted.shape, generator=generator)
    return (predicted.cpu() + offsets) % num_classes


def spearman(first: Tensor, second: Tensor) -> Tensor:
    """Spearman's rank correlation of two batches of maps over their patches.

    Args:
        first, second: ``(B, gh, gw)`` (or ``(B, G)``) maps.

    Returns:
        ``(B,)`` in [-1, 1], ties ranked by their average rank. A map without
        variance (constant) correlates 1 with an identical map, else 0.
    """
    a, b = first.flatten(1).double(), second.flatten(1).double()
    ranks_a = torch.from_numpy(rankdata(a.numpy(), axis=1))
    ranks_b = torch.from_numpy(rankdata(b.numpy(), axis=1))
    ranks_a = ranks_a - ranks_a.mean(dim=1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=1, keepdim=True)
    norm = ranks_a.norm(dim=1) * ranks_b.norm(dim=1)
    correlation = (ranks_a * ranks_b).sum(dim=1) / norm.clamp_min(1e-12)
    identical = torch.isclose(a, b, rtol=1e-5, atol=1e-9).all(dim=1)
    constant = torch.where(identical, 1.0, 0.0).double()
    return torch.where(norm > 0, correlation, constant).float()


def _norm_parameters(model: nn.Module) -> set[str]:
    """Names of the parameters of normalisation layers (``*Norm*`` modules)."""
    return {
        f"{module_name}.{name}" if module_name else name
        for module_name, module in model.named_modules()
        if "Norm" in type(module).__name__
        for name, _ in module.named_parameters(recurse=False)
    }


def _reinitialise(parameter: Tensor, in_norm: bool, name: str, generator) -> None:
    """The ViT initialiser: norms to 1 and 0, biases 0, the rest truncated normal (std 0.02)."""
    if in_norm:
        parameter.fill_(1.0 if name.endswith("weight") else 0.0)
    elif name.endswith("bias"):
        parameter.zero_()
    else:
        values = torch.empty(parameter.shape, dtype=torch.float32)
        nn.init.trunc_normal_(values, std=STD, a=-2 * STD, b=2 * STD, generator=generator)
        parameter.copy_(values)
