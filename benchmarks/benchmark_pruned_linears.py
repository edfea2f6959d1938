"""Time the linear layers of one SD-XL U-Net call shape by shape, dense and under AT-EDM: the rate of the matrix
products AT-EDM leaves, apart from everything else in the step.

Most of what AT-EDM saves is in linears (the projections and feed-forwards of the layers after the pruning one),
which it runs on fewer rows: ``K`` kept tokens of ``N`` for each classifier-free-guidance half (at 512 px, 190
rows instead of 512 at the third level). A BLAS runs a product with fewer rows below its peak rate, so a step can
fall short of its MACs ratio with nothing else costing extra. This script measures that part alone:

    t_linears(variant) = sum over kinds (rows, in, out, bias) of calls(variant, kind) * t(kind)

``calls`` is counted on the meta device (:class:`atedm_kernels.tools.flops.MacsReport` ``.linears``: one U-Net call,
batch 2, AT-EDM's normal step as ``atedm bench`` runs it); ``t(kind)`` is ``F.linear(x [rows, in], W [out, in],
b [out] or None)`` in float32 on this CPU with ``torch.get_num_threads()`` threads, fresh random operands, a new
output each call as in the U-Net, the minimum of ``--reps`` calls after one warm-up, every kind of a size timed
once per rep in turn (a slow spell of the machine hits them all). Reported per size: each variant's linear MACs,
``t_linears`` and rate (GMAC/s), and AT-EDM's linears speed-up over dense against their MACs ratio;
``shortfall_s = t_atedm - t_dense / macs_ratio`` is what AT-EDM's linears take beyond dense's overall linear rate,
in seconds of one call (negative when they run faster than it).

    python benchmarks/benchmark_pruned_linears.py --out benchmarks/results/pruned_linears_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from atedm_kernels.tools.flops import LinearKind as Kind

SIZES = [512, 1024]  # image side in pixels: the end-to-end benchmark's two sizes
SMOKE_SIZES = [64]
BATCH = 2  # one CFG pair, as the end-to-end benchmark runs


def linear_calls(unet, size: int) -> dict[str, dict[Kind, float]]:
    """Per variant ("dense", "atedm-normal"), calls per linear kind in one call of ``unet`` (a meta model) at
    ``size`` x ``size``."""
    from atedm_kernels.tools.flops import count_unet_macs
    from atedm_kernels.tools.unet_bench import pruning_configs

    configs = {"dense": None, "atedm-normal": pruning_configs("reference")["atedm-normal"]}
    return {name: count_unet_macs(unet, size, size, BATCH, config, phase="normal").linears
            for name, config in configs.items()}


def time_kinds(kinds: list[Kind], reps: int) -> dict[Kind, float]:
    """Seconds per call of each linear kind: the minimum of ``reps`` calls after a warm-up, kinds interleaved."""
    gen = torch.Generator().manual_seed(0)
    operands = {(rows, fan_in, fan_out, has_bias): (
        torch.randn(rows, fan_in, generator=gen),  # [rows, in]
        torch.randn(fan_out, fan_in, generator=gen) / fan_in**0.5,  # [out, in]
        torch.randn(fan_out, generator=gen) if has_bias else None,  # [out]
    ) for rows, fan_in, fan_out, has_bias in kinds}
    for x, weight, bias in operands.values():
        F.linear(x, weight, bias)
    best = dict.fromkeys(kinds, float("inf"))
    for _ in range(reps):
        for kind, (x, weight, bias) in operands.items():
            start = time.perf_counter()
            F.linear(x, weight, bias)
            best[kind] = min(best[kind], time.perf_counter() - start)
    return best


def size_report(unet, size: int, reps: int) -> dict:
    """One size's report: per variant ``linear_macs``, ``seconds`` (``t_linears``) and ``gmacs_per_s``; AT-EDM's
    ``speedup`` over dense, the linears' ``macs_ratio`` and ``shortfall_s``; and per kind its time, rate and calls."""
    calls = linear_calls(unet, size)
    kinds = sorted(set().union(*calls.values()))
    seconds = time_kinds(kinds, reps)
    variants = {}
    for name, counts in calls.items():
        macs = sum(n * rows * fan_in * fan_out for (rows, fan_in, fan_out, _), n in counts.items())
        total = sum(n * seconds[kind] for kind, n in counts.items())
        variants[name] = {"linear_macs": macs, "seconds": total, "gmacs_per_s": macs / total / 1e9}
    dense, atedm = variants["dense"], variants["atedm-normal"]
    macs_ratio = dense["linear_macs"] / atedm["linear_macs"]
    return {
        "size": size,
        "variants": variants,
        "macs_ratio": macs_ratio,
        "speedup": dense["seconds"] / atedm["seconds"],
        "shortfall_s": atedm["seconds"] - dense["seconds"] / macs_ratio,
        "kinds": [{"rows": kind[0], "in": kind[1], "out": kind[2], "bias": kind[3], "seconds": seconds[kind],
                   "gmacs_per_s": kind[0] * kind[1] * kind[2] / seconds[kind] / 1e9,
                   "calls": {name: counts.get(kind, 0) for name, counts in calls.items()}}
                  for kind in kinds],
    }


def format_report(report: dict) -> str:
    """The report as text: per size, the two variants' totals, AT-EDM's ratio, then one line per linear kind."""
    lines = []
    for entry in report["sizes"]:
        lines.append(f"{entry['size']} px: linears of one U-Net call, batch {BATCH}")
        for name, v in entry["variants"].items():
            lines.append(f"  {name:<14} {v['linear_macs'] / 1e9:9.1f} GMAC {v['seconds']:8.3f} s "
                         f"{v['gmacs_per_s']:6.1f} GMAC/s")
        lines.append(f"  AT-EDM linears {entry['speedup']:.3f}x dense against a MACs ratio of "
                     f"{entry['macs_ratio']:.3f}x (shortfall {entry['shortfall_s']:.3f} s)")
        for kind in entry["kinds"]:
            calls = " ".join(f"{name}={n:g}" for name, n in kind["calls"].items())
            bias = " +b" if kind["bias"] else "   "
            lines.append(f"    {kind['rows']:>6} x {kind['in']:>5} -> {kind['out']:>5}{bias} "
                         f"{kind['gmacs_per_s']:6.1f} GMAC/s  calls: {calls}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--smoke", action="store_true",
                        help="the tiny U-Net at 64 px, one rep whatever --reps says: checks the script runs")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")

    from atedm_kernels.tools.models import build_sdxl_unet
    from atedm_kernels.tools.unet_bench import device_name

    scale, sizes, reps = ("tiny", SMOKE_SIZES, 1) if args.smoke else ("full", SIZES, args.reps)
    load_before = os.getloadavg()  # other work on the machine slows every kind alike (interleaved reps)
    unet = build_sdxl_unet(scale, device="meta")  # built once: only its linears' calls are counted, on meta
    entries = [size_report(unet, size, reps) for size in sizes]
    report = {"benchmark": "pruned_linears", "device": device_name(torch.device("cpu")), "torch": torch.__version__,
              "scale": scale, "reps": reps, "load_average": {"before": load_before, "after": os.getloadavg()},
              "sizes": entries}
    print(format_report(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
