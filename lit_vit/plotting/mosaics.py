"""Image grids: probe images, attention maps and overlays composed as one mosaic
(:mod:`lit_vit.plotting._grid` composes them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from torch import Tensor

from lit_vit.plotting._grid import (
    MAX_COLUMNS,
    cell_shape,
    checked_images,
    checked_names,
    image_cells,
    map_cells,
    mosaic_figure,
    overlay_cells,
    row_label,
)
from lit_vit.plotting._style import as_cpu, check_dim


def layer_maps_figure(
    images: Tensor,
    maps: Tensor,
    class_names: Sequence[str] | None = None,
    predicted_names: Sequence[str] | None = None,
) -> Figure:
    """Class-token attention of every layer, one row per image.

    Each row: the image, then the overlay of each layer's map. The row label is
    the true class, and the predicted one (in red when wrong) if given.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1].
        maps: ``(L, B, gh, gw)`` attention of the class token over the patches
            of each layer, heads averaged.
        class_names: One true class name per image.
        predicted_names: One predicted class name per image.
    """
    images = checked_images(images)
    maps = as_cpu(maps, "maps")
    check_dim(maps, 4, "maps", "(L, B, gh, gw)")
    batch = images.shape[0]
    if maps.shape[1] != batch:
        raise ValueError(
            f"maps must have shape (L, B, gh, gw) with B = {batch} images, got {tuple(maps.shape)}"
        )
    class_names = checked_names(class_names, batch, "class_names")
    predicted_names = checked_names(predicted_names, batch, "predicted_names")
    layers = maps.shape[0]

    cells = _overlay_rows(images, maps)
    titles = {(0, 0): "image"} | {(0, 1 + layer): f"layer {layer}" for layer in range(layers)}
    labels = [
        row_label(
            class_names[row] if class_names else None,
            predicted_names[row] if predicted_names else None,
        )
        for row in range(batch)
    ]
    return mosaic_figure(
        cells,
        "Class-token attention per layer (heads averaged, each map scaled to its range)",
        titles,
        labels,
    )


def rollout_evolution_figure(
    images: Tensor,
    maps: Tensor,
    epochs: Sequence[int],
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Each probe image's rollout at each analysed epoch: how its attention moved.

    Each row: the image, then the overlay of its map at each epoch.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1].
        maps: ``(E, B, gh, gw)`` rollout maps, one per epoch and image.
        epochs: The ``E`` epochs, for the column titles.
        class_names: One class name per image (row labels).
    """
    images = checked_images(images)
    maps = as_cpu(maps, "maps")
    check_dim(maps, 4, "maps", "(E, B, gh, gw)")
    if maps.shape[0] != len(epochs) or maps.shape[1] != images.shape[0]:
        raise ValueError(
            f"maps must have shape (E, B, gh, gw) with E = {len(epochs)} epochs and "
            f"B = {images.shape[0]} images, got {tuple(maps.shape)}"
        )
    class_names = checked_names(class_names, images.shape[0], "class_names")
    titles = {(0, 0): "image"} | {(0, 1 + i): f"epoch {e}" for i, e in enumerate(epochs)}
    labels = [row_label(name, None) for name in class_names] if class_names else []
    return mosaic_figure(
        _overlay_rows(images, maps),
        "Rollout of each probe image over the epochs (each map scaled to its range)",
        titles,
        labels,
    )


def _overlay_rows(images: Tensor, maps: Tensor) -> list[list[Tensor]]:
    """Per image, its cell and the overlay of each of the ``(K, B, gh, gw)`` maps."""
    shape = cell_shape(*images.shape[-2:])
    originals, overlays = image_cells(images, shape), overlay_cells(images, maps, shape)
    return [[originals[row], *overlays[:, row]] for row in range(images.shape[0])]


def head_maps_figure(
    image: Tensor, maps: Tensor, layer: int, class_name: str | None = None
) -> Figure:
    """Class-token attention of each head of one layer, on one image.

    The image, then one overlay per head, wrapped after ``MAX_COLUMNS`` cells.

    Args:
        image: ``(C, H, W)`` raw pixels in [0, 1].
        maps: ``(H, gh, gw)`` attention of the class token of each head.
        layer: 0-based index of the layer, for the title.
        class_name: Class of the image, for the title.
    """
    image = checked_images(as_cpu(image, "image")[None], "image")[0]
    maps = as_cpu(maps, "maps")
    check_dim(maps, 3, "maps", "(H, gh, gw)")
    heads = maps.shape[0]
    columns = min(1 + heads, MAX_COLUMNS)

    shape = cell_shape(*image.shape[-2:])
    sequence = [image_cells(image[None], shape)[0]]
    sequence += list(overlay_cells(image[None], maps[:, None], shape)[:, 0])  # H cells
    names = ["image" if class_name is None else class_name]
    names += [f"head {head}" for head in range(heads)]
    cells = [sequence[start : start + columns] for start in range(0, len(sequence), columns)]
    titles = {divmod(index, columns): name for index, name in enumerate(names)}

    title = f"Layer {layer}: class-token attention per head (each map scaled to its range)"
    if class_name is not None:
        title = f"{class_name}: " + title[0].lower() + title[1:]
    return mosaic_figure(cells, title, titles)


def rollout_figure(
    images: Tensor,
    maps: Mapping[str, Tensor],
    class_names: Sequence[str] | None = None,
    predicted_names: Sequence[str] | None = None,
    title: str = "Saliency maps (each scaled to its range)",
) -> Figure:
    """Several saliency maps of the same images, alone and as overlays.

    Rows are images; columns: the image, then for each map the map alone (one
    block per patch) and its overlay on the image.

    Args:
        images: ``(B, C, H, W)`` raw pixels in [0, 1].
        maps: Name -> ``(B, gh, gw)`` map, e.g. ``{"rollout": ..., "grad rollout
            (pred)": ...}``; the names become column titles.
        class_names: One class name per image (row labels).
        predicted_names: One predicted class name per image (with the true one in the row
            label, red when they differ).
        title: The figure's title.
    """
    images = checked_images(images)
    batch = images.shape[0]
    if not maps:
        raise ValueError("maps must name at least one map, got an empty mapping")
    grids = {}
    for name, grid in maps.items():
        grid = as_cpu(grid, f"maps[{name!r}]")
        if grid.dim() != 3 or grid.shape[0] != batch:
            raise ValueError(
                f"maps[{name!r}] must have shape (B, gh, gw) with B = {batch} images, "
                f"got {tuple(grid.shape)}"
            )
        grids[name] = grid
    class_names = checked_names(class_names, batch, "class_names")
    predicted_names = checked_names(predicted_names, batch, "predicted_names")

    shape = cell_shape(*images.shape[-2:])
    columns = [image_cells(images, shape)]  # (B, 3, ch, cw) each
    for grid in grids.values():
        columns += [map_cells(grid, shape), overlay_cells(images, grid[None], shape)[0]]
    cells = [[column[row] for column in columns] for row in range(batch)]
    titles = {(0, 0): "image"}
    for index, name in enumerate(grids):
        titles[0, 1 + 2 * index] = name
        titles[0, 2 + 2 * index] = f"{name}\non image"
    labels = [
        row_label(
            class_names[row] if class_names else None,
            predicted_names[row] if predicted_names else None,
        )
        for row in range(batch)
    ]
    return mosaic_figure(cells, title, titles, labels)


def resolution_figure(
    images_by_size: Mapping[str, Tensor],
    maps_by_size: Mapping[str, Tensor],
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Rollout maps of the same images at several input sizes.

    Rows are images, columns sizes (in the order of ``images_by_size``); each
    cell is that size's map over that size's image, titled e.g. ``"20x20 (5x5 grid)"``,
    every size shown at the cell size of the first.

    Args:
        images_by_size: Size label -> ``(B, C, h, w)`` raw pixels in [0, 1].
        maps_by_size: Size label -> ``(B, gh, gw)`` rollout maps; same keys.
        class_names: One class name per image (row labels).
    """
    if not images_by_size:
        raise ValueError("images_by_size must hold at least one size, got an empty mapping")
    if set(images_by_size) != set(maps_by_size):
        raise ValueError(
            "images_by_size and maps_by_size must have the same keys, got "
            f"{sorted(images_by_size)} and {sorted(maps_by_size)}"
        )
    sizes = list(images_by_size)
    images = {s: checked_images(images_by_size[s], f"images_by_size[{s!r}]") for s in sizes}
    batch = images[sizes[0]].shape[0]
    grids = {}
    for size in sizes:
        grid = as_cpu(maps_by_size[size], f"maps_by_size[{size!r}]")
        if images[size].shape[0] != batch or grid.dim() != 3 or grid.shape[0] != batch:
            raise ValueError(
                f"size {size!r}: images must be (B, C, h, w) and maps (B, gh, gw) with "
                f"B = {batch}, got {tuple(images[size].shape)} and {tuple(grid.shape)}"
            )
        grids[size] = grid
    class_names = checked_names(class_names, batch, "class_names")

    shape = cell_shape(*images[sizes[0]].shape[-2:])
    columns = [overlay_cells(images[size], grids[size][None], shape)[0] for size in sizes]
    cells = [[column[row] for column in columns] for row in range(batch)]
    titles = {}
    for column, size in enumerate(sizes):
        gh, gw = grids[size].shape[-2:]
        titles[0, column] = f"{size} ({gh}x{gw} grid)"
    labels = [row_label(class_names[row] if class_names else None, None) for row in range(batch)]
    return mosaic_figure(
        cells, "Attention rollout by input size (each map scaled to its range)", titles, labels
    )


# --------------------------------------------------------------------------- measures
