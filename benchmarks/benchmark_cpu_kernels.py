"""Benchmark the CPU kernels of the pruning path at SD-XL's shapes, side by side with what they replace.

Rows, all on this machine's CPU with ``torch.get_num_threads()`` threads, timed interleaved in one run (the minimum
of ``--reps`` runs after one warm-up; a fresh output tensor each run, as in the U-Net):

* ``attention_with_map``, q, k, v ``[B, H, N, D]`` float32 given as SD-XL's transposed ``[B, N, H, D]`` views:
  ``native`` (``atedm_kernels._cpu``, float16 map: what the pruning layer runs), ``native-f32map``, ``blocked`` (the
  PyTorch fallback, float32 map), ``eager`` (softmax materialised per head, then the mean: the "current
  implementation"), and ``sdpa`` (``F.scaled_dot_product_attention``, no map: the call the pruning layer replaces).
  GFLOP/s counts ``4 B H N M D``; ``% sgemm`` divides it by a float32 ``torch.mm`` of 2048^3 measured in the same run.
* ``gwpr`` (10 iterations) on the float16 and float32 maps: ``native`` and ``torch`` (the GEMV fallback). GB/s counts
  ``iters * B * N^2 * bytes``; ``% copy`` divides it by a ``torch.Tensor.copy_`` of 128 MiB (bytes read + written).
* ``similarity_sources`` (K = 37% of N): ``native`` and ``torch``.

    python benchmarks/benchmark_cpu_kernels.py --out benchmarks/results/cpu_kernels.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

# (B, H, N, D): SD-XL 1024x1024, one CFG pair: the 4096-token level (640 channels, 10 heads) and the 1024-token level
# (1280 channels, 20 heads).
SHAPES = [(2, 10, 4096, 64), (2, 20, 1024, 64)]
SMOKE_SHAPES = [(2, 2, 130, 16)]
KEEP_RATIO = 0.37
GWPR_ITERS = 10


def timed(fn, reps: int) -> float:
    """Seconds: the minimum of ``reps`` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def sgemm_gflops(reps: int) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / timed(lambda: torch.mm(a, b), reps) / 1e9


def copy_gbps(reps: int) -> float:
    src = torch.randn(2**25)  # 128 MiB
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / timed(lambda: dst.copy_(src), reps) / 1e9


def attention_rows(shape, reps: int, native: bool) -> list[dict]:
    import atedm_kernels as ak
    from atedm_kernels.kernels import cpu_attention

    batch, heads, n, head_dim = shape
    q, k, v = (torch.randn(batch, n, heads, head_dim).transpose(1, 2) for _ in range(3))  # [B, H, N, D] views
    scale = head_dim**-0.5

    def eager():
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # [B, H, N, N]
        return torch.matmul(probs, v), probs.mean(dim=1)

    methods = {
        "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
        "blocked": lambda: cpu_attention.attention_with_map_blocked(q, k, v, scale, torch.float32),
        "eager": eager,
    }
    if native:
        methods["native"] = lambda: ak.attention_with_map(q, k, v, map_dtype=torch.float16, backend="cpu")
        methods["native-f32map"] = lambda: ak.attention_with_map(q, k, v, map_dtype=torch.float32, backend="cpu")
    times = {name: float("inf") for name in methods}
    for fn in methods.values():
        fn()  # warm-up
    for _ in range(reps):  # interleaved, so that a noisy stretch hits every method alike
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name] = min(times[name], time.perf_counter() - start)
    flops = 4 * batch * heads * n * n * head_dim
    return [{"op": "attention_with_map", "shape": list(shape), "method": name, "seconds": t,
             "gflops": flops / t / 1e9, "vs_sdpa": t / times["sdpa"]} for name, t in times.items()]


def pruning_rows(shape, reps: int, native: bool) -> list[dict]:
    import atedm_kernels as ak
    from atedm_kernels.kernels import cpu_attention, cpu_pruning

    batch, _, n, _ = shape
    amap32 = torch.softmax(torch.randn(batch, n, n) * 3, dim=-1)  # [B, N, N]
    keep_idx, prune_idx = ak.select_tokens(torch.rand(batch, n), max(1, round(KEEP_RATIO * n)))
    rows = []
    for map_dtype in (torch.float16, torch.float32):
        amap = amap32.to(map_dtype)
        for method in ("native", "torch") if native else ("torch",):
            use_native = method == "native"
            saved = cpu_pruning.native_available
            cpu_pruning.native_available = lambda use=use_native: use and cpu_attention.native_available()
            try:
                t_gwpr = timed(lambda: ak.gwpr(amap, GWPR_ITERS, backend="cpu"), reps)
                t_src = timed(lambda: ak.similarity_sources(amap, keep_idx, prune_idx, backend="cpu"), reps)
            finally:
                cpu_pruning.native_available = saved
            gwpr_bytes = GWPR_ITERS * batch * n * n * amap.element_size()
            rows.append({"op": "gwpr", "shape": [batch, n], "map_dtype": str(map_dtype), "method": method,
                         "seconds": t_gwpr, "gbps": gwpr_bytes / t_gwpr / 1e9})
            rows.append({"op": "similarity_sources", "shape": [batch, n], "map_dtype": str(map_dtype),
                         "method": method, "seconds": t_src})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, one rep: checks the script runs")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)

    from atedm_kernels.kernels import cpu_attention

    native = cpu_attention.native_available()
    reps = 1 if args.smoke else args.reps
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    ceilings = {"sgemm_gflops": sgemm_gflops(reps), "copy_gbps": copy_gbps(reps)}
    rows = []
    for shape in shapes:
        rows += attention_rows(shape, reps, native)
        rows += pruning_rows(shape, reps, native)
    for row in rows:
        if "gflops" in row:
            row["pct_sgemm"] = 100 * row["gflops"] / ceilings["sgemm_gflops"]
        if "gbps" in row:
            row["pct_copy"] = 100 * row["gbps"] / ceilings["copy_gbps"]

    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"native kernels: {native}; sgemm {ceilings['sgemm_gflops']:.0f} GFLOP/s, copy {ceilings['copy_gbps']:.1f} GB/s")
    for row in rows:
        extra = ""
        if "gflops" in row:
            extra = f"{row['gflops']:7.1f} GFLOP/s {row['pct_sgemm']:5.1f}% sgemm  {row['vs_sdpa']:.2f}x sdpa time"
        elif "gbps" in row:
            extra = f"{row['gbps']:7.1f} GB/s {row['pct_copy']:5.1f}% copy"
        label = f"{row['op']} {row['shape']} {row.get('map_dtype', '')} {row['method']}"
        print(f"{label:<60} {1e3 * row['seconds']:9.1f} ms  {extra}")
    if args.out:
        report = {"benchmark": "cpu_kernels", "device": platform.processor() or platform.machine(),
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "native": native,
                  "ceilings": ceilings, "rows": rows}
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
