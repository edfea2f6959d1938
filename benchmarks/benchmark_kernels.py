"""All kernel microbenchmarks in one table, each against the ceiling measured once in the same run.

Runs, on one GPU:

1. ``atedm_kernels.tools.roofline.measure_ceilings``: device-copy bandwidth (GB/s) and bf16 matmul rate (TFLOP/s);
2. ``benchmark_attention_with_map.py``: the fused attention (with and without the map), SDPA flash and the eager
   map, at SD-XL's self- and cross-attention shapes; rated in TFLOP/s against the matmul ceiling; the autotuner's
   pick per shape in the raw report;
3. ``benchmark_pruning_kernels.py``: the CUDA pruning-path kernels at the same levels; rated in GB/s against the copy
   ceiling.

Each script runs as a subprocess with ``--out`` (the benchmarks are scripts, not a package: none imports another).

Every row: the median time, the achieved rate and its fraction of the matching ceiling (the scripts' own
fractions, against ceilings they measure separately, stay in their raw reports). A script that fails is recorded
in ``failed`` and makes the exit status non-zero; the others still run.

    python benchmarks/benchmark_kernels.py --out benchmarks/results/kernels.json
    python benchmarks/benchmark_kernels.py --tiny --warmup 1 --rep 5     # a CPU check that it runs (no figures to keep)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def run_script(name: str, warmup_ms: int, rep_ms: int, tiny: bool, *extra: str) -> dict:
    """The JSON report of ``benchmarks/<name>.py``, run as a subprocess with ``--out``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--out", str(out), "--warmup", str(warmup_ms),
               "--rep", str(rep_ms), *(["--tiny"] if tiny else []), *extra]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def attention_rows(ceilings: dict, warmup_ms: int, rep_ms: int, tiny: bool) -> tuple[list[dict], dict]:
    """Fused-attention rows (TFLOP/s vs the matmul ceiling) and the script's raw report."""
    peak = ceilings["bf16_matmul"]["tflops"]
    report = run_script("benchmark_attention_with_map", warmup_ms, rep_ms, tiny, "--dtypes", "fp16", "bf16",
                        "--ceiling-tflops", repr(peak))
    rows = [
        {
            "benchmark": "attention_with_map",
            "case": f"B,H,N,M,D={','.join(map(str, r['shape_BHNMD']))} {r['dtype']}",
            "name": r["method"],
            "median_ms": r["median_ms"],
            "rate": r["flops"] / r["median_ms"] / 1e9,
            "unit": "TFLOP/s",
            "fraction_of_ceiling": r["flops"] / r["median_ms"] / 1e9 / peak,
        }
        for r in report["results"]
    ]
    return rows, report


def pruning_rows(ceilings: dict, warmup_ms: int, rep_ms: int, tiny: bool) -> tuple[list[dict], dict]:
    """Pruning-kernel rows (GB/s vs the copy ceiling) and the script's raw report."""
    report = run_script("benchmark_pruning_kernels", warmup_ms, rep_ms, tiny)
    bandwidth = ceilings["copy"]["gb_per_s"]
    rows = []
    for level in report["levels"]:
        case = f"B={level['batch']} N={level['n']} K={level['keep']} C={level['channels']}"
        for name, kernel in level["kernels"].items():
            median = kernel["ms"]
            rate = kernel["bytes"] / median / 1e6
            rows.append({"benchmark": "pruning_kernels", "case": case, "name": name, "median_ms": median,
                         "rate": rate, "unit": "GB/s", "fraction_of_ceiling": rate / bandwidth})
        rows.append({"benchmark": "pruning_kernels", "case": case, "name": "chain through ops",
                     "median_ms": level["chain_through_ops_ms"], "rate": None, "unit": None,
                     "fraction_of_ceiling": None})
    return rows, report


def format_table(report: dict) -> str:
    c = report["ceilings"]
    lines = [
        f"{report['device']}  torch {report['torch']}  triton {report['triton']}",
        f"ceilings: copy {c['copy']['gb_per_s']:.0f} GB/s, bf16 matmul {c['bf16_matmul']['tflops']:.0f} TFLOP/s",
    ]
    header = f"{'benchmark':<20}{'case':<36}{'kernel':<20}{'median us':>11}{'rate':>16}{'of ceiling':>12}"
    lines += [header, "-" * len(header)]
    for r in report["rows"]:
        rate = f"{r['rate']:.1f} {r['unit']}" if r["rate"] is not None else "-"
        frac = f"{100 * r['fraction_of_ceiling']:.1f}%" if r["fraction_of_ceiling"] is not None else "-"
        lines.append(f"{r['benchmark']:<20}{r['case']:<36}{r['name']:<20}{1e3 * r['median_ms']:>11.1f}{rate:>16}"
                     f"{frac:>12}")
    for name, reason in report["failed"].items():
        lines.append(f"FAILED {name}: {reason}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=100, help="warm-up time per measurement, ms")
    parser.add_argument("--rep", type=int, default=500, help="measured time per measurement, ms")
    parser.add_argument("--out", help="write the table, the ceilings and every raw report to this JSON file")
    parser.add_argument("--tiny", action="store_true",
                        help="a check that the scripts run, not a measurement: tiny shapes on the CPU")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print("benchmark_kernels: no CUDA device; this benchmark needs a GPU (--tiny: a CPU check).", file=sys.stderr)
        return 2
    if args.tiny:  # before Triton is first imported: on a CPU its kernels run in the interpreter
        os.environ["TRITON_INTERPRET"] = "1"
    import triton

    from atedm_kernels.tools.roofline import measure_ceilings, write_report

    ceilings = measure_ceilings("cpu" if args.tiny else "cuda", warmup_ms=args.warmup, rep_ms=args.rep)
    report = {"device": ceilings["device"], "torch": torch.__version__, "triton": triton.__version__,
              "cuda": torch.version.cuda, "python": platform.python_version(), "ceilings": ceilings, "rows": [],
              "raw": {}, "failed": {}}
    for name, collect in (("attention_with_map", attention_rows), ("pruning_kernels", pruning_rows)):
        try:
            rows, raw = collect(ceilings, args.warmup, args.rep, args.tiny)
        except Exception as exc:  # recorded and reflected in the exit status; the other benchmark still runs
            report["failed"][name] = f"{type(exc).__name__}: {exc}"
            continue
        report["rows"] += rows
        report["raw"][name] = raw
    print(format_table(report))
    write_report(report, args.out)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
