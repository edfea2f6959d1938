"""Benchmark the CUDA pruning kernels of one AT-EDM pruning layer at SD-XL shapes.

For each SD-XL attention level at 1024x1024 (B = 2, the classifier-free-guidance batch):

* level 2: N = 4096 tokens, C = 640 channels, 10 heads of 64;
* level 3: N = 1024 tokens, C = 1280 channels, 20 heads of 64;

with K = round(keep_ratio * N) kept tokens (keep ratio 0.37: the paper's 63% pruning), an fp16 head-averaged map and
10 G-WPR iterations, it times each kernel of the pruning path (gwpr, select_tokens, similarity_sources,
gather_tokens, recover_tokens) through the extension's wrappers, reports its achieved GB/s over the bytes it must
move and the fraction of the device-copy bandwidth measured in the same run (a large ``Tensor.copy_``, counted as
read + write), and sets the layer's total pruning overhead against the same layer's fused attention
(``atedm_kernels.attention_with_map(..., backend="triton")``). It also times the whole chain through the public ops
(``backend="cuda"``), which adds the per-call Python dispatch cost an eager SD-XL step pays.

Timing: ``atedm_kernels.tools.roofline.median_ms`` (``triton.testing.do_bench``: warm-up, L2 flushed before every
run, the median and every run's time; CUDA events with the same flush when Triton is missing), and the copy ceiling
from ``atedm_kernels.tools.roofline.measure_ceilings``, both shared with the other kernel benchmarks. Inputs are
random, never all zeros. Results go to ``--out`` as JSON with the device, software versions and raw timings.

Usage: ``python benchmarks/benchmark_pruning_kernels.py [--out benchmarks/results/pruning_kernels.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from atedm_kernels.tools.roofline import measure_ceilings, median_ms

LEVELS = (
    {"level": "4096 tokens (A2 blocks)", "batch": 2, "n": 4096, "channels": 640, "heads": 10},
    {"level": "1024 tokens (A10 blocks)", "batch": 2, "n": 1024, "channels": 1280, "heads": 20},
)
# ``--tiny`` (``.ci/gpu --dry-run`` on a CPU): the same two levels, small, through the ``auto`` backend's CPU kernels.
TINY_LEVELS = (
    {"level": "tiny A2", "batch": 2, "n": 64, "channels": 40, "heads": 2},
    {"level": "tiny A10", "batch": 2, "n": 33, "channels": 24, "heads": 2},
)
HEAD_DIM = 64


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pruning_kernels.json"))
    parser.add_argument("--keep-ratio", type=float, default=0.37)
    parser.add_argument("--num-iters", type=int, default=10, help="G-WPR power iterations")
    parser.add_argument("--warmup", type=int, default=25, help="warm-up time per measurement, ms")
    parser.add_argument("--rep", type=int, default=200, help="measured time per measurement, ms")
    parser.add_argument("--copy-gib", type=float, default=1.0, help="size of the bandwidth-ceiling copy, GiB")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that the script runs, not a measurement: tiny levels on the CPU")
    return parser.parse_args(argv)


def kernel_functions(device: str) -> dict:
    """The pruning kernels called directly: the CUDA extension's wrappers on a GPU (no dispatch cost), the public
    ops' ``auto`` backend on a CPU (``--tiny``)."""
    import atedm_kernels

    if device == "cuda":
        from atedm_kernels.kernels import cuda

        return {"gwpr": cuda.gwpr_cuda, "select_tokens": cuda.select_tokens_cuda,
                "similarity_sources": cuda.similarity_sources_cuda, "gather_tokens": cuda.gather_tokens_cuda,
                "recover_tokens": cuda.recover_tokens_cuda}
    return {name: getattr(atedm_kernels, name)
            for name in ("gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens")}


def bench_level(level: dict, args, time, ceiling_gbs: float, device: str = "cuda") -> dict:
    import atedm_kernels

    op = kernel_functions(device)
    backend = "cuda" if device == "cuda" else "auto"
    attention_backend = "triton" if device == "cuda" else "auto"
    batch, n, channels, heads = level["batch"], level["n"], level["channels"], level["heads"]
    keep = max(1, min(n, round(args.keep_ratio * n)))
    elt = 2  # fp16 map and activations
    gen = torch.Generator(device=device).manual_seed(0)
    amap = torch.softmax(torch.randn(batch, n, n, generator=gen, device=device), dim=-1).half()  # [B, N, N]
    x = torch.randn(batch, n, channels, generator=gen, device=device).half()  # [B, N, C]
    scores = op["gwpr"](amap, args.num_iters, 0.0)  # [B, N]
    keep_idx, prune_idx = op["select_tokens"](scores, keep)  # [B, K], [B, N - K]
    src = op["similarity_sources"](amap, keep_idx, prune_idx)  # [B, N - K]
    x_kept = op["gather_tokens"](x, keep_idx)  # [B, K, C]

    kernels = {
        "gwpr": (
            lambda: op["gwpr"](amap, args.num_iters, 0.0),
            args.num_iters * batch * n * n * elt + batch * n * 4,
        ),
        "select_tokens": (lambda: op["select_tokens"](scores, keep), batch * n * 4 + batch * n * 8),
        "similarity_sources": (
            lambda: op["similarity_sources"](amap, keep_idx, prune_idx),
            batch * keep * (n - keep) * elt + batch * (n - keep) * 8,
        ),
        "gather_tokens": (lambda: op["gather_tokens"](x, keep_idx), 2 * batch * keep * channels * elt),
        "recover_tokens": (
            lambda: op["recover_tokens"](x_kept, keep_idx, prune_idx, src),
            2 * batch * n * channels * elt,
        ),
    }
    result = {**level, "keep": keep, "num_iters": args.num_iters, "kernels": {}}
    for name, (fn, nbytes) in kernels.items():
        ms, times, _ = time(fn)
        gbs = nbytes / ms / 1e6
        result["kernels"][name] = {
            "ms": ms, "times_ms": times, "bytes": nbytes, "gb_per_s": gbs, "fraction_of_copy": gbs / ceiling_gbs
        }
    result["pruning_total_ms"] = sum(k["ms"] for k in result["kernels"].values())

    def chain():
        s = atedm_kernels.gwpr(amap, args.num_iters, backend=backend)
        ki, pi = atedm_kernels.select_tokens(s, keep, backend=backend)
        sr = atedm_kernels.similarity_sources(amap, ki, pi, backend=backend)
        xk = atedm_kernels.gather_tokens(x, ki, backend=backend)
        return atedm_kernels.recover_tokens(xk, ki, pi, sr, backend=backend)

    result["chain_through_ops_ms"] = time(chain)[0]

    try:
        q, k, v = (torch.randn(batch, heads, n, HEAD_DIM, generator=gen, device=device).half() for _ in range(3))
        attention_ms = time(lambda: atedm_kernels.attention_with_map(q, k, v, backend=attention_backend))[0]
        result["attention_with_map_ms"] = attention_ms
        result["overhead_vs_attention"] = result["pruning_total_ms"] / attention_ms
    except Exception as exc:  # the Triton kernel is another module: report it missing, do not crash the run
        result["attention_with_map_ms"] = None
        result["attention_unavailable"] = f"{type(exc).__name__}: {exc}"
    return result


def print_level(res: dict) -> None:
    print(f"\n{res['level']}: B={res['batch']} N={res['n']} C={res['channels']} K={res['keep']} T={res['num_iters']}")
    print(f"  {'kernel':<20}{'median us':>11}{'GB/s':>9}{'of copy':>9}")
    for name, k in res["kernels"].items():
        print(f"  {name:<20}{k['ms'] * 1e3:>11.1f}{k['gb_per_s']:>9.0f}{k['fraction_of_copy']:>9.1%}")
    print(f"  {'pruning total':<20}{res['pruning_total_ms'] * 1e3:>11.1f}")
    print(f"  {'chain through ops':<20}{res['chain_through_ops_ms'] * 1e3:>11.1f}")
    if res["attention_with_map_ms"] is None:
        print(f"  attention_with_map (triton): unavailable ({res['attention_unavailable']})")
    else:
        att = res["attention_with_map_ms"] * 1e3
        print(f"  attention_with_map (triton): {att:.1f} us; pruning overhead = {res['overhead_vs_attention']:.1%}")


def main(argv=None) -> None:
    args = parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmark_pruning_kernels: no CUDA GPU (torch.cuda.is_available() is False); nothing to time")
    try:
        from atedm_kernels import _C
    except ImportError as exc:
        if device == "cuda":
            raise SystemExit(f"benchmark_pruning_kernels: the CUDA extension atedm_kernels._C is not built ({exc})")
        _C = None

    def time(fn):
        return median_ms(fn, args.warmup, args.rep, device)

    copy_bytes = int(args.copy_gib * (1 << 30)) if device == "cuda" else None  # --copy-gib sizes a GPU's copy only
    ceilings = measure_ceilings(device, copy_bytes=copy_bytes, warmup_ms=args.warmup, rep_ms=args.rep)
    ceiling, method = ceilings["copy"], ceilings["timer"]
    print(f"{ceilings['device']}: device copy {ceiling['gb_per_s']:.0f} GB/s (timer: {method})")
    levels = [bench_level(level, args, time, ceiling["gb_per_s"], device)
              for level in (TINY_LEVELS if args.tiny else LEVELS)]
    for res in levels:
        print_level(res)

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {
        "device": ceilings["device"],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "extension": _C.info() if _C is not None else None,
        "timer": method,
        "timings": "ms: median; times_ms: every run",
        "keep_ratio": args.keep_ratio,
        "ceilings": ceilings,
        "levels": levels,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
