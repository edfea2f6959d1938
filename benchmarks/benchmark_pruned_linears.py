"""Time the linear layers of one SD-XL U-Net call shape by shape, dense and under AT-EDM: the rate of the matrix
products AT-EDM leaves, apart from everything else in the step.

Most of what AT-EDM saves is in linears (the projections and feed-forwards of the layers after the pruning one),
which it runs on fewer rows: ``K`` kept tokens of ``N`` for each classifier-free-guidance half (at 512 px, 190
rows instead of 512 at the third level). A BLAS runs a product with fewer rows below its peak rate, so a step can
fall short of its MACs ratio with nothing else costing extra. This script measures that part alone:

    t_linears(variant) = sum over shapes (rows, in, out) of calls(variant, shape) * t(shape)

``calls`` is counted on the meta device (:class:`atedm_kernels.flops.MacsReport` ``.linears``: one U-Net call,
batch 2, AT-EDM's normal step); ``t(shape)`` is ``F.linear(x [rows, in], W [out, in], b [out])`` in float32 on this
CPU with ``torch.get_num_threads()`` threads, fresh random operands, a new output each call as in the U-Net, the
minimum of ``--reps`` calls after one warm-up, every shape of a size timed once per rep in turn (a slow spell of
the machine hits them all). Reported per size: each variant's linear MACs, ``t_linears`` and rate (GMAC/s), and
AT-EDM's linears speed-up over dense against their MACs ratio; ``shortfall_s`` is what AT-EDM's linears take
beyond dense's rate, ``t_atedm - t_dense / macs_ratio``: the small products' cost, in seconds of one call.

    python benchmarks/benchmark_pruned_linears.py --out benchmarks/results/pruned_linears_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F

SIZES = [512, 1024]  # image side in pixels: the end-to-end benchmark's two sizes
SMOKE_SIZES = [64]
VARIANTS = ("dense", "atedm-normal")
BATCH = 2  # one CFG pair, as the end-to-end benchmark runs


def linear_calls(scale: str, size: int) -> dict[str, dict[tuple[int, int, int], float]]:
    """Per variant, calls per linear shape ``(rows, in_features, out_features)`` in one U-Net call."""
    from atedm_kernels.flops import count_unet_macs
    from atedm_kernels.sdxl import AtEdmConfig, build_sdxl_unet

    unet = build_sdxl_unet(scale, device="meta")
    configs = {"dense": None, "atedm-normal": AtEdmConfig(prune_less_steps=0)}
    return {name: count_unet_macs(unet, size, size, BATCH, config, phase="normal").linears
            for name, config in configs.items()}


def time_shapes(shapes: list[tuple[int, int, int]], reps: int) -> dict[tuple[int, int, int], float]:
    """Seconds per call of each shape: the minimum of ``reps`` calls after a warm-up, shapes interleaved."""
    gen = torch.Generator().manual_seed(0)
    operands = {(rows, fan_in, fan_out): (torch.randn(rows, fan_in, generator=gen),  # [rows, in]
                                          torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5,  # [out, in]
                                          torch.randn(fan_out, generator=gen))  # [out]
                for rows, fan_in, fan_out in shapes}
    for x, weight, bias in operands.values():
        F.linear(x, weight, bias)
    best = dict.fromkeys(shapes, float("inf"))
    for _ in range(reps):
        for shape, (x, weight, bias) in operands.items():
            start = time.perf_counter()
            F.linear(x, weight, bias)
            best[shape] = min(best[shape], time.perf_counter() - start)
    return best


def size_report(scale: str, size: int, reps: int) -> dict:
    calls = linear_calls(scale, size)
    shapes = sorted(set().union(*calls.values()))
    seconds = time_shapes(shapes, reps)
    variants = {}
    for name, counts in calls.items():
        macs = sum(n * rows * fan_in * fan_out for (rows, fan_in, fan_out), n in counts.items())
        total = sum(n * seconds[shape] for shape, n in counts.items())
        variants[name] = {"linear_macs": macs, "seconds": total, "gmacs_per_s": macs / total / 1e9}
    dense, atedm = variants["dense"], variants["atedm-normal"]
    macs_ratio = dense["linear_macs"] / atedm["linear_macs"]
    return {
        "size": size,
        "variants": variants,
        "macs_ratio": macs_ratio,
        "speedup": dense["seconds"] / atedm["seconds"],
        "shortfall_s": atedm["seconds"] - dense["seconds"] / macs_ratio,
        "shapes": [{"rows": rows, "in": fan_in, "out": fan_out, "seconds": seconds[rows, fan_in, fan_out],
                    "gmacs_per_s": rows * fan_in * fan_out / seconds[rows, fan_in, fan_out] / 1e9,
                    "calls": {name: counts.get((rows, fan_in, fan_out), 0) for name, counts in calls.items()}}
                   for rows, fan_in, fan_out in shapes],
    }


def format_report(report: dict) -> str:
    lines = []
    for entry in report["sizes"]:
        lines.append(f"{entry['size']} px: linears of one U-Net call, batch {BATCH}")
        for name, v in entry["variants"].items():
            lines.append(f"  {name:<14} {v['linear_macs'] / 1e9:9.1f} GMAC {v['seconds']:8.3f} s "
                         f"{v['gmacs_per_s']:6.1f} GMAC/s")
        lines.append(f"  AT-EDM linears {entry['speedup']:.3f}x dense against a MACs ratio of {entry['macs_ratio']:.3f}x"
                     f" (shortfall {entry['shortfall_s']:.3f} s)")
        for shape in entry["shapes"]:
            calls = " ".join(f"{name}={n:g}" for name, n in shape["calls"].items())
            lines.append(f"    {shape['rows']:>6} x {shape['in']:>5} -> {shape['out']:>5} "
                         f"{shape['gmacs_per_s']:6.1f} GMAC/s  calls: {calls}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--smoke", action="store_true", help="the tiny U-Net at 64 px, one rep: checks the script runs")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")

    scale, sizes, reps = ("tiny", SMOKE_SIZES, 1) if args.smoke else ("full", SIZES, args.reps)
    report = {"benchmark": "pruned_linears", "device": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "scale": scale, "reps": reps,
              "sizes": [size_report(scale, size, reps) for size in sizes]}
    print(format_report(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
