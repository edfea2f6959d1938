"""The device's measured ceilings, the denominators of every "fraction of the ceiling" the benchmarks report.

* bandwidth: a large device-to-device ``Tensor.copy_`` (default 1 GiB), counted as ``bytes = 2 * size`` (one read,
  one write) over its median time;
* compute: a bf16 matmul ``[n, n] @ [n, n]`` (default n = 8192), ``2 * n^3`` FLOPs over its median time.

Both are timed with ``triton.testing.do_bench`` (warm-up, L2 flushed before every run, median), or with CUDA events
around single runs after a warm-up when Triton is missing. They are what this GPU reaches with PyTorch's own kernels,
not datasheet peaks. ``measure_ceilings(device)`` and ``median_ms`` are the timing every kernel benchmark of
``benchmarks/`` imports from here (they are scripts, not a package, so none imports another).

    python -m atedm_kernels.tools.roofline --out benchmarks/results/roofline.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

L2_FLUSH_BYTES = 256 << 20  # zeroed before every CUDA-event run: larger than any current L2


def median_ms(fn, warmup_ms: float = 100, rep_ms: float = 500, device: str = "cuda") -> tuple[float, list[float], str]:
    """Median milliseconds of ``fn`` and the raw times: (median, times, timer name).

    ``device="cpu"`` times with ``time.perf_counter`` around single runs (``.ci/gpu --dry-run``'s CPU stand-in:
    a check that the benchmark runs, not a measurement).
    """
    if torch.device(device).type == "cpu":
        return _cpu_median_ms(fn, warmup_ms, rep_ms)
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        times = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return statistics.median(times), list(times), "triton.testing.do_bench"
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    runs = max(10, int(rep_ms / max(start.elapsed_time(end), 1e-3)))
    for _ in range(max(1, int(warmup_ms / max(start.elapsed_time(end), 1e-3)))):
        fn()
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(runs):
        flush.zero_()  # a cold L2 before every run, as do_bench does
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times, "cuda events"


def _cpu_median_ms(fn, warmup_ms: float, rep_ms: float) -> tuple[float, list[float], str]:
    times = []
    deadline = time.perf_counter() + warmup_ms / 1e3
    fn()
    while time.perf_counter() < deadline:
        fn()
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < 3 or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times, "time.perf_counter (CPU)"


# Default (copy bytes, matmul n) per device type: a GPU's ceilings; on a CPU, ``.ci/gpu --dry-run``'s small stand-in
# (a check that the benchmarks run, not a ceiling anyone should quote).
CEILING_SIZES = {"cuda": (1 << 30, 8192), "cpu": (1 << 20, 256)}


def measure_ceilings(
    device: str | torch.device = "cuda", copy_bytes: int | None = None, matmul_n: int | None = None,
    warmup_ms: float = 100, rep_ms: float = 500,
) -> dict:
    """Measured copy bandwidth (GB/s) and bf16 matmul rate (TFLOP/s) of ``device``, with their raw timings; sizes
    left as None come from ``CEILING_SIZES``."""
    device = torch.device(device)
    if device.type not in CEILING_SIZES:
        raise ValueError(f"device must be a CUDA device (or the CPU for a dry run), got {device}")
    default_copy, default_n = CEILING_SIZES[device.type]
    copy_bytes = default_copy if copy_bytes is None else copy_bytes
    matmul_n = default_n if matmul_n is None else matmul_n
    gen = torch.Generator(device=device).manual_seed(0)
    src = torch.randn(copy_bytes // 2, device=device, dtype=torch.float16, generator=gen)  # never all zeros
    dst = torch.empty_like(src)
    copy_ms, copy_times, timer = median_ms(lambda: dst.copy_(src), warmup_ms, rep_ms, device.type)
    moved = 2 * src.numel() * src.element_size()  # read + write
    del src, dst
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16, generator=gen)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=torch.bfloat16, generator=gen)
    mm_ms, mm_times, _ = median_ms(lambda: a @ b, warmup_ms, rep_ms, device.type)
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "timer": timer,
        "copy": {"bytes": moved, "median_ms": copy_ms, "gb_per_s": moved / copy_ms / 1e6, "times_ms": copy_times},
        "bf16_matmul": {
            "n": matmul_n,
            "flops": 2 * matmul_n**3,
            "median_ms": mm_ms,
            "tflops": 2 * matmul_n**3 / mm_ms / 1e9,
            "times_ms": mm_times,
        },
    }


def write_report(report: dict, out: str | None) -> None:
    """Write a benchmark's report as indented JSON to ``out`` (nothing when None) and say so."""
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copy-gib", type=float, default=1.0, help="size of the copied buffer, GiB")
    parser.add_argument("--matmul-n", type=int, default=8192)
    parser.add_argument("--out", help="write the ceilings (raw timings included) to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("roofline: no CUDA device; this benchmark needs a GPU.", file=sys.stderr)
        return 2
    report = measure_ceilings("cuda", int(args.copy_gib * (1 << 30)), args.matmul_n)
    report.update(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version())
    print(f"{report['device']} ({report['timer']}): copy {report['copy']['gb_per_s']:.0f} GB/s, "
          f"bf16 matmul {report['bf16_matmul']['tflops']:.0f} TFLOP/s (n={args.matmul_n})")
    write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
