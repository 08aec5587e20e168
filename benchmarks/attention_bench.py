"""Benchmarks of ``lit_vit.attention``, run by hand.

    python benchmarks/attention_bench.py            # full run, a few minutes on 2 CPU cores
    python benchmarks/attention_bench.py --quick    # smoke run, well under a minute

Four tables, CPU (float32), torch's default thread count unless ``--threads``.
On a machine shared with other jobs, ``--threads 1`` gives steadier numbers:
with more threads than idle cores every parallel op can wait a scheduler slice.

1. ``rollout(method="row")`` and ``ReducedAttention.rollout()`` (heads fused
   while recording, what the callbacks keep) against
   ``rollout(method="matrix")`` on random
   row-stochastic attention with a class token, ``L = 12``, ``B = 8``,
   ``H = 3``, ``N = 1 + gh * gw`` for square grids 7, 14, 24, 32, on a
   recording already validated where it was captured (``validate=False``, as
   the callbacks call it). Time is the median of the repeats of the whole
   public call (head fusion included); the validation that the capture does
   once is timed on its own. Peak memory is
   measured, not estimated: each case runs in a fresh subprocess that builds the
   attention in place, resets the kernel's resident-set high-water mark
   (``/proc/self/clear_refs``), calls ``rollout`` and reports
   ``VmHWM - VmRSS before the call``: the extra resident memory the call needed
   on top of its input (falls back to the ``ru_maxrss`` difference where the
   reset is not allowed). ``max |diff|`` compares the two maps.
2. Capture overhead: the same eval forward without the recorder (fused
   attention, ``no_grad``) and with ``AttentionRecorder.record`` (explicit
   attention, without and with one gradient target).
3. Deletion / insertion: ``deletion_insertion_auc`` on rollout maps of the
   default model shape; forward passes, wall time and the share of it spent in
   the model's forward.
4. Attention flow: ``attention_flow`` of 8 images of random attention in the
   default model's shape (N=50) and a ViT-B/16 shape (N=197), beside rollout.
5. The probe's capture, full against reduced: ``AttentionRecorder.record`` of 8
   images on ViT-B/16 at 224 px (N=197, L=12, H=12) and ViT-L/16 at 384 px
   (N=577, L=24, H=16), random weights, ``full=True`` (the whole
   ``(L, B, H, N, N)`` tensor, as before reduction) against ``full=False``
   (what the callbacks record). Each case runs in a fresh subprocess: the
   model and images are built, the high-water mark is reset, ``record`` runs
   once; peak is the extra resident memory of the call, stored the bytes the
   recording holds. Without gradients, and with the two targets the default
   probe records (true and predicted class) where memory allows (``--large``
   adds ViT-L with gradients: about 20 GiB in full).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import yaml

from lit_vit.attention import (
    AttentionRecorder,
    TokenLayout,
    attention_flow,
    deletion_insertion_auc,
    rollout,
)
from lit_vit.attention._validate import check_attention
from lit_vit.attention.reduction import reduce_attention
from lit_vit.model import LitViT

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.yaml"

LAYERS, BATCH, HEADS = 12, 8, 3


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_attention(grid: int, seed: int = 0) -> tuple[torch.Tensor, TokenLayout]:
    """``(L, B, H, N, N)`` row-stochastic attention built in place (no 2x transient)."""
    layout = TokenLayout(
        num_prefix_tokens=1, has_class_token=True, grid_size=(grid, grid), patch_size=(16, 16)
    )
    n = layout.num_tokens
    gen = torch.Generator().manual_seed(seed)
    attention = torch.randn(LAYERS, BATCH, HEADS, n, n, generator=gen)
    attention.mul_(2.0).exp_()
    attention.div_(attention.sum(dim=-1, keepdim=True))
    return attention, layout


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rollout_case(grid: int, method: str, repeats: int, out: str) -> None:
    """Child process: time and peak extra memory of one rollout case; save the map."""
    attention, layout = random_attention(grid)
    input_mib = attention.numel() * attention.element_size() / 2**20
    check_s = median_time(lambda: check_attention(attention, layout), repeats, warmup=0)
    read_s = median_time(lambda: attention.sum(), repeats, warmup=0)  # one read pass
    if method == "reduced":  # what the recorder keeps of it: heads fused per layer
        reduced = reduce_attention(attention, layout, parts=(), validate=False)
        del attention

        def call() -> torch.Tensor:
            return reduced.rollout()
    else:

        def call() -> torch.Tensor:
            return rollout(attention, layout, method=method, validate=False)

    before, how = _reset_peak()
    maps = call()  # the measured peak
    peak = _peak_kib(how)
    seconds = median_time(call, repeats, warmup=0)
    torch.save(maps, out)
    result = {
        "s": seconds,
        "check_s": check_s,
        "read_s": read_s,
        "peak_mib": (peak - before) / 1024,
    }
    print(json.dumps(result | {"input_mib": input_mib}))


def _reset_peak() -> tuple[int, str]:
    """Reset the resident-set high-water mark; return the baseline (KiB) and the method."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        return _status_kib("VmRSS"), "hwm"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "maxrss"


def _peak_kib(how: str) -> int:
    return (
        _status_kib("VmHWM") if how == "hwm" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    )


# ViT shapes of table 5: timm name, image size.
CAPTURE_MODELS = {
    "ViT-B/16 224px": ("vit_base_patch16_224", 224),
    "ViT-L/16 384px": ("vit_large_patch16_384", 384),
}


def capture_case(label: str, mode: str, targets: int) -> None:
    """Child process: peak extra memory, time and stored bytes of one ``record`` call."""
    name, size = CAPTURE_MODELS[label]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    images = torch.randn(BATCH, 3, size, size)
    recorder = AttentionRecorder(model)
    before, how = _reset_peak()
    start = time.perf_counter()
    recording = recorder.record(images, grad_targets=[None] * targets, full=mode == "full")
    seconds = time.perf_counter() - start
    peak = _peak_kib(how)
    stored = recording.reduced.nbytes
    if recording.attention is not None:
        stored = recording.attention.nbytes + sum(g.nbytes for g in recording.attention_grads)
    result = {"s": seconds, "peak_mib": (peak - before) / 1024, "stored_mib": stored / 2**20}
    print(json.dumps(result | {"n": recording.layout.num_tokens}))


def bench_probe_capture(large: bool, quick: bool, threads: int | None) -> None:
    print(f"\n(5) probe capture, full vs reduced: B={BATCH}, random weights, one call per case")
    print("    peak: extra resident memory of record(); stored: bytes the recording keeps")
    head = (
        f"{'model':<15} {'N':>4} {'targets':>7} | {'full s':>7} {'reduced s':>9} | "
        f"{'full peak MiB':>13} {'reduced':>8} {'ratio':>6} | {'full stored MiB':>15} "
        f"{'reduced':>8} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    cases = [("ViT-B/16 224px", 0), ("ViT-B/16 224px", 2), ("ViT-L/16 384px", 0)]
    cases = cases[:1] if quick else cases + ([("ViT-L/16 384px", 1)] if large else [])
    for label, targets in cases:
        res = {}
        for mode in ("full", "reduced"):
            proc = subprocess.run(
                [sys.executable, __file__, "--_capture-case", label, mode, str(targets)]
                + (["--threads", str(threads)] if threads else []),
                capture_output=True,
                text=True,
                check=True,
            )
            res[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        full, red = res["full"], res["reduced"]
        print(
            f"{label:<15} {full['n']:>4} {targets:>7} | {full['s']:>7.1f} {red['s']:>9.1f} | "
            f"{full['peak_mib']:>13.0f} {red['peak_mib']:>8.0f} "
            f"{red['peak_mib'] / full['peak_mib']:>6.3f} | {full['stored_mib']:>15.0f} "
            f"{red['stored_mib']:>8.1f} {red['stored_mib'] / full['stored_mib']:>6.3f}",
            flush=True,
        )


def bench_rollout(grids: list[int], repeats: int, threads: int | None) -> None:
    print(f"\n(1) rollout, row vs matrix: L={LAYERS} B={BATCH} H={HEADS}, class token, float32")
    print("    time: median of the whole rollout() call; peak: extra resident memory of the call")
    print("    over its input, measured in a fresh subprocess per case; row and matrix on a")
    print("    validated full recording (validate=False); reduced: ReducedAttention.rollout() of")
    print("    the recording the callbacks keep (heads fused while recording); check ms: the")
    print("    validation the capture does once; read ms: one read pass of the full tensor")
    print("    (its sum), row/read: the public row rollout over that pass (target: <= 1.5x)")
    head = (
        f"{'N':>5} {'grid':>6} {'input MiB':>9} | {'row ms':>8} {'matrix ms':>9} {'speedup':>7}"
        f" {'reduced ms':>10} {'speedup':>7} {'read ms':>7} {'row/read':>8} {'check ms':>8} |"
        f" {'row MiB':>7} {'matrix MiB':>10}"
        f" | {'max |diff|':>10}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for grid in grids:
            res, maps = {}, {}
            for method in ("row", "matrix", "reduced"):
                out = os.path.join(tmp, f"{grid}_{method}.pt")
                proc = subprocess.run(
                    [sys.executable, __file__, "--_rollout-case", str(grid), method, str(repeats)]
                    + [out]
                    + (["--threads", str(threads)] if threads else []),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                res[method] = json.loads(proc.stdout.strip().splitlines()[-1])
                maps[method] = torch.load(out)
            diff = max(
                (maps[method] - maps["matrix"]).abs().max().item() for method in ("row", "reduced")
            )
            row, mat, red = res["row"], res["matrix"], res["reduced"]
            print(
                f"{1 + grid * grid:>5} {f'{grid}x{grid}':>6} {row['input_mib']:>9.0f} | "
                f"{row['s'] * 1e3:>8.1f} {mat['s'] * 1e3:>9.1f} {mat['s'] / row['s']:>6.1f}x "
                f"{red['s'] * 1e3:>10.1f} {mat['s'] / red['s']:>6.1f}x "
                f"{row['read_s'] * 1e3:>7.1f} {row['s'] / row['read_s']:>7.2f}x "
                f"{row['check_s'] * 1e3:>8.1f} | "
                f"{row['peak_mib']:>7.0f} {mat['peak_mib']:>10.0f} | {diff:>10.1e}",
                flush=True,
            )


def default_model() -> torch.nn.Module:
    """The ViT of ``configs/fashion_mnist.yaml`` (its ``model`` section), random weights."""
    config = yaml.safe_load(CONFIG.read_text())
    return LitViT(**config["model"], img_size=config["data"]["img_size"]).vit


def bench_capture(cases: list[tuple[str, Callable[[], torch.nn.Module], tuple, int]]) -> None:
    print("\n(2) capture overhead: eval forward, median time per call")
    head = (
        f"{'model':<26} {'input':>16} {'N':>4} | {'plain ms':>9} {'record ms':>10} {'ratio':>6}"
        f" | {'record+grad ms':>14} {'ratio':>6}"
    )
    print(head)
    print("-" * len(head))
    for label, make, shape, repeats in cases:
        torch.manual_seed(0)
        model = make().eval()
        x = torch.randn(*shape)
        recorder = AttentionRecorder(model)

        def plain(model=model, x=x) -> None:
            with torch.no_grad():
                model(x)

        plain_s = median_time(plain, repeats)
        rec_s = median_time(lambda r=recorder, x=x: r.record(x), repeats)
        grad_s = median_time(lambda r=recorder, x=x: r.record(x, grad_targets=[None]), repeats)
        n = recorder.record(x[:1]).layout.num_tokens
        print(
            f"{label:<26} {'x'.join(map(str, shape)):>16} {n:>4} | {plain_s * 1e3:>9.1f} "
            f"{rec_s * 1e3:>10.1f} {rec_s / plain_s:>5.2f}x | {grad_s * 1e3:>14.1f} "
            f"{grad_s / plain_s:>5.2f}x",
            flush=True,
        )


def bench_faithfulness(num_images: int, steps: int, max_batch: int) -> None:
    print(
        f"\n(3) deletion / insertion AUC: default model shape, {num_images} images, "
        f"steps={steps}, max_batch={max_batch}, saliency = rollout maps"
    )
    torch.manual_seed(0)
    model = default_model().eval()
    images = torch.randn(num_images, 1, 28, 28)
    rec = AttentionRecorder(model).record(images)
    saliency = rollout(rec.attention, rec.layout)
    t0 = time.perf_counter()
    res = deletion_insertion_auc(
        model, images, saliency, rec.layout, steps=steps, max_batch=max_batch
    )
    total_s = time.perf_counter() - t0
    evaluated = 4 * num_images * (steps + 1)
    chunk = torch.randn(min(max_batch, evaluated), 1, 28, 28)

    def forward(chunk=chunk) -> None:
        with torch.no_grad():
            model(chunk)

    one_pass = median_time(forward, 1, warmup=0)
    full, last = divmod(evaluated, max_batch)
    forward_s = one_pass * (full + last / max_batch)
    head = (
        f"{'images run':>10} {'passes':>6} {'total s':>8} {'s/pass':>7} {'model fwd s':>11} "
        f"{'overhead':>8} | {'deletion':>8} {'random':>7} {'insertion':>9} {'random':>7}"
    )
    print(head)
    print("-" * len(head))
    print(
        f"{evaluated:>10} {res.forward_passes:>6} {total_s:>8.2f} "
        f"{total_s / res.forward_passes:>7.2f} {forward_s:>11.2f} "
        f"{100 * (total_s - forward_s) / total_s:>7.0f}% | {res.deletion.mean():>8.3f} "
        f"{res.random_deletion.mean():>7.3f} {res.insertion.mean():>9.3f} "
        f"{res.random_insertion.mean():>7.3f}"
    )
    print(
        "    model fwd s: forward passes x time of one plain forward of a full chunk (estimate);"
        " AUCs are means over images (random-init model)."
    )
    assert res.forward_passes <= math.ceil(evaluated / max_batch)  # distinct copies run once


def bench_flow(repeats: int) -> None:
    """Attention flow of 8 images: the default model's probe (N=50) and a ViT-B/16 shape."""
    print("\n(4) attention flow (exact max flow), 8 images, mean fusion, no discard")
    head = f"{'shape':<28} {'N':>5} | {'flow s':>7} {'ms per image':>12} | {'rollout ms':>10}"
    print(head)
    print("-" * len(head))
    for label, layers, heads, grid in (
        ("default model (L=12, H=4)", 12, 4, 7),
        ("ViT-B/16 at 224 (L=12, H=12)", 12, 12, 14),
    ):
        layout = TokenLayout(1, True, (grid, grid), (16, 16))
        n = layout.num_tokens
        generator = torch.Generator().manual_seed(0)
        attention = (torch.randn(layers, 8, heads, n, n, generator=generator) * 2).softmax(-1)
        flow_s = median_time(
            lambda a=attention, lay=layout: attention_flow(a, lay, validate=False), repeats
        )
        rollout_s = median_time(
            lambda a=attention, lay=layout: rollout(a, lay, validate=False), repeats
        )
        print(
            f"{label:<28} {n:>5} | {flow_s:>7.2f} {flow_s / 8 * 1e3:>12.1f} | "
            f"{rollout_s * 1e3:>10.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--sections", default="12345", help="which tables to run, e.g. 15 (default: 12345)"
    )
    parser.add_argument(
        "--large", action="store_true", help="table 5: ViT-L with gradients too (~20 GiB)"
    )
    parser.add_argument("--_rollout-case", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--_capture-case", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._rollout_case:
        grid, method, repeats, out = args._rollout_case
        rollout_case(int(grid), method, int(repeats), out)
        return
    if args._capture_case:
        label, mode, targets = args._capture_case
        capture_case(label, mode, int(targets))
        return

    start = time.perf_counter()
    print(
        f"torch {torch.__version__}, timm {timm.__version__}, CPU, "
        f"{torch.get_num_threads()} threads{', --quick' if args.quick else ''}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if "1" in args.sections:
        grids = [7, 14] if args.quick else [7, 14, 24, 32]
        bench_rollout(grids, repeats=1 if args.quick else 3, threads=args.threads)
    vit_b = (
        "ViT-B/16 224px",
        lambda: timm.create_model("vit_base_patch16_224", pretrained=False),
        (2 if args.quick else 4, 3, 224, 224),
        1 if args.quick else 3,
    )
    tiny = ("default (depth 12, d 96)", default_model, (64, 1, 28, 28), 2 if args.quick else 5)
    if "2" in args.sections:
        bench_capture([tiny, vit_b])
    if "3" in args.sections and args.quick:
        bench_faithfulness(num_images=8, steps=4, max_batch=64)
    elif "3" in args.sections:
        bench_faithfulness(num_images=64, steps=16, max_batch=512)
    if "4" in args.sections:
        bench_flow(repeats=1 if args.quick else 3)
    if "5" in args.sections:
        bench_probe_capture(args.large, args.quick, args.threads)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
