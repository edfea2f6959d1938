"""Benchmark the fused Triton attention (with and without the head-averaged map) at SD-XL's attention shapes.

Methods, all on ``q, k, v [B, H, N, D]`` contiguous, timed side by side in one run:

* ``triton+map``: ``attention_with_map_triton`` (pass 1 flash forward + pass 2 map, fp16 map unless
  ``--map-dtype`` says otherwise);
* ``triton``: ``attention_triton`` (pass 1 alone);
* ``sdpa-flash``: ``F.scaled_dot_product_attention`` forced to its flash backend (no map), the baseline;
* ``eager+map``: the un-fused "current implementation" AT-EDM needs: ``q k^T * scale`` and the softmax materialised
  for every head in the input dtype, the mean over heads, then ``P v``.

Shapes: SD-XL's self-attention at its two attention levels and its cross-attention (M = 77 text tokens) at both.
Each method's median time comes from ``atedm_kernels.tools.roofline.median_ms`` (``triton.testing.do_bench``: L2
flushed before every run; random normal inputs). The report also records the autotuner's pick per shape.

TFLOP/s counts the matrix FLOPs each method executes: ``4*B*H*N*M*D`` for attention, plus
``2*B*H*N*M*D`` for the map pass that recomputes ``q k^T`` (``triton+map`` only). ``% peak`` divides by a bf16
matmul measured in the same run (8192^3), ``x sdpa`` is the time ratio to ``sdpa-flash`` of the same row.

    python benchmarks/benchmark_attention_with_map.py --dtypes fp16 bf16 --out benchmarks/results/attention.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MAP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# (B, H, N, M, D): SD-XL 1024x1024, CFG batch 2: self-attention at the 4096-token level (A2 blocks, 640 ch, 10 heads)
# and the 1024-token level (A10 blocks, 1280 ch, 20 heads); cross-attention to the 77 text tokens at both levels
# (the map the cross-attention G-WPR variants read).
SHAPES = [(2, 10, 4096, 4096, 64), (2, 20, 1024, 1024, 64), (2, 10, 4096, 77, 64), (2, 20, 1024, 77, 64)]
# ``--tiny`` (``.ci/gpu --dry-run`` on a CPU): the same kinds of shape, small enough for the Triton interpreter.
TINY_SHAPES = [(1, 2, 48, 48, 64), (1, 2, 40, 7, 40)]
METHODS = ("triton+map", "triton", "sdpa-flash", "eager+map")


def attention_flops(shape, with_map_pass: bool) -> int:
    batch, heads, n_q, n_k, head_dim = shape
    return (6 if with_map_pass else 4) * batch * heads * n_q * n_k * head_dim


def eager_attention_with_map(q, k, v, scale):
    """The un-fused implementation: per-head probabilities [B, H, N, M] materialised in the input dtype."""
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # [B, H, N, M]
    return torch.matmul(probs, v), probs.mean(dim=1)  # [B, H, N, D], [B, N, M]


def make_methods(q, k, v, scale, map_dtype):
    """``{method: zero-argument callable}`` for the inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from atedm_kernels.kernels import triton_attention as ta

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    return {
        "triton+map": lambda: ta.attention_with_map_triton(q, k, v, scale, map_dtype),
        "triton": lambda: ta.attention_triton(q, k, v, scale),
        "sdpa-flash": sdpa,
        "eager+map": lambda: eager_attention_with_map(q, k, v, scale),
    }


def make_inputs(shape, dtype, seed=0, device="cuda"):
    batch, heads, n_q, n_k, head_dim = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, heads, n_q, head_dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(batch, heads, n_k, head_dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(batch, heads, n_k, head_dim, device=device, dtype=dtype, generator=gen)
    return q, k, v


def check_outputs(methods) -> None:
    """Never time a wrong kernel: every method's out (and map) against SDPA's out (and the eager map)."""
    ref = methods["sdpa-flash"]()
    _, eager_map = methods["eager+map"]()
    for name, fn in methods.items():
        res = fn()
        out, amap = res if isinstance(res, tuple) else (res, None)
        torch.testing.assert_close(out, ref, atol=2e-2, rtol=2e-2, msg=lambda m: f"{name}: out differs: {m}")
        if amap is not None:
            torch.testing.assert_close(
                amap.float(), eager_map.float(), atol=2e-3, rtol=5e-2, msg=lambda m: f"{name}: map differs: {m}"
            )


def autotune_picks() -> dict[str, dict[str, str]]:
    """The tile the autotuner chose per key (N, M, D and the argument dtypes), for each kernel; empty where the
    kernel has a single config (the interpreter)."""
    from atedm_kernels.kernels import triton_attention as ta

    picks = {}
    for name, kernel in (("fwd", ta._attn_fwd_kernel), ("map", ta._attn_map_kernel)):
        picks[name] = {",".join(map(str, key)): str(config) for key, config in getattr(kernel, "cache", {}).items()}
    return picks


def run(dtype_names, map_dtype, warmup: int, rep: int, shapes=SHAPES, device: str = "cuda",
        ceiling_tflops: float | None = None) -> dict:
    """Every method at every shape and dtype, timed side by side; ``ceiling_tflops`` (measured here when None) is the
    bf16 matmul rate the TFLOP/s are set against."""
    import triton

    from atedm_kernels.tools.roofline import measure_ceilings, median_ms

    if ceiling_tflops is None:  # only the matmul rate is needed here: a token copy
        ceiling_tflops = measure_ceilings(device, copy_bytes=1 << 20, warmup_ms=warmup,
                                          rep_ms=rep)["bf16_matmul"]["tflops"]
    rows = []
    for shape in shapes:
        for dtype_name in dtype_names:
            q, k, v = make_inputs(shape, DTYPES[dtype_name], device=device)
            methods = make_methods(q, k, v, shape[-1] ** -0.5, map_dtype)
            check_outputs(methods)  # also triggers autotuning before timing
            times = {name: median_ms(fn, warmup, rep, device)[1] for name, fn in methods.items()}
            sdpa_ms = statistics.median(times["sdpa-flash"])
            for name in METHODS:
                median = statistics.median(times[name])
                flops = attention_flops(shape, with_map_pass=name == "triton+map")
                tflops = flops / (median * 1e-3) / 1e12
                rows.append(
                    {
                        "shape_BHNMD": list(shape),
                        "dtype": dtype_name,
                        "method": name,
                        "median_ms": median,
                        "flops": flops,
                        "tflops": tflops,
                        "fraction_of_matmul_peak": tflops / ceiling_tflops,
                        "ratio_to_sdpa": median / sdpa_ms,
                        "times_ms": times[name],
                    }
                )
            del q, k, v, methods
            if device == "cuda":
                torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "map_dtype": str(map_dtype).removeprefix("torch."),
        "warmup_ms": warmup,
        "rep_ms": rep,
        "bf16_matmul_ceiling_tflops": ceiling_tflops,
        "autotune_picks": autotune_picks(),
        "results": rows,
    }


def print_table(report: dict) -> None:
    print(f"{report['device']}  torch {report['torch']}  triton {report['triton']}  CUDA {report['cuda']}")
    print(f"bf16 matmul ceiling: {report['bf16_matmul_ceiling_tflops']:.0f} TFLOP/s; map dtype {report['map_dtype']}")
    header = f"{'B,H,N,M,D':<22}{'dtype':<6}{'method':<12}{'ms':>9}{'TFLOP/s':>9}{'% peak':>8}{'x sdpa':>8}"
    print(header)
    print("-" * len(header))
    for row in report["results"]:
        shape = ",".join(map(str, row["shape_BHNMD"]))
        print(
            f"{shape:<22}{row['dtype']:<6}{row['method']:<12}{row['median_ms']:>9.3f}{row['tflops']:>9.1f}"
            f"{100 * row['fraction_of_matmul_peak']:>7.1f}%{row['ratio_to_sdpa']:>8.2f}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp16", "bf16"])
    parser.add_argument("--map-dtype", choices=sorted(MAP_DTYPES), default="fp16")
    parser.add_argument("--warmup", type=int, default=100, help="do_bench warm-up time per method, ms")
    parser.add_argument("--rep", type=int, default=500, help="do_bench measuring time per method, ms")
    parser.add_argument("--out", help="write the report (raw timings included) to this JSON file")
    parser.add_argument("--ceiling-tflops", type=float, default=None,
                        help="the bf16 matmul rate to rate against (default: measured here)")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that the script runs, not a measurement: tiny shapes on the CPU")
    args = parser.parse_args(argv)
    if args.tiny:  # before Triton is first imported: on a CPU its kernels run in the interpreter
        os.environ["TRITON_INTERPRET"] = "1"
    elif not torch.cuda.is_available():
        print("benchmark_attention_with_map: no CUDA device; this benchmark needs a GPU (--tiny: a CPU check).",
              file=sys.stderr)
        return 2
    from atedm_kernels.tools.roofline import write_report

    shapes, device = (TINY_SHAPES, "cpu") if args.tiny else (SHAPES, "cuda")
    report = run(args.dtypes, MAP_DTYPES[args.map_dtype], args.warmup, args.rep, shapes, device, args.ceiling_tflops)
    print_table(report)
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
