"""End-to-end U-Net step: dense SD-XL vs AT-EDM (per DSAP phase, 50-step average, dagger) vs SiTo vs tomesd.

One U-Net call (one denoising step of a classifier-free-guidance batch) of SD-XL base's architecture with random
weights (``build_sdxl_unet``), by default fp16, batch 2, 1024x1024, timed for each variant side by side in one run:

* ``dense``: diffusers' own U-Net (attention through ``scaled_dot_product_attention``), the baseline;
* ``atedm-normal``: AT-EDM (``AtEdmConfig()``, keep 0.37) in a normal step: every multi-layer block prunes;
* ``atedm-prune-less``: the same in a DSAP prune-less step (the F-L blocks run dense);
* ``atedm-dsap-avg``: the mean step of a 50-step run, ``(15 * prune_less + 35 * normal) / 50``, computed from the
  two phase medians above (not timed as a run of its own);
* ``atedm-dagger``: AT-EDM-dagger (no pruning at the second feature level), normal step;
* ``sito``: SiTo (``SiToConfig()``: prune ratio 0.5 of every self-attention, 2x2 patches), on the same kernels;
* ``tomesd``: ToMe for SD (``tomesd.apply_patch``) at the paper's setting for SD-XL (supplementary B.1): ratio 0.5,
  merging for self-attention, cross-attention and feed-forward, ``max_downsample=8`` to open its merge range to
  every level (SD-XL's attention levels are at downsampling 2 and 4; tomesd's default 1 merges nothing there).

Each phase is pinned by its config, not by hooks: ``prune_less_steps=0`` makes every call a normal step,
``prune_less_steps=2**30`` a prune-less one, so eager and compiled runs time exactly one static graph. The timestep
is a device tensor, as in diffusers' pipelines (AT-EDM's schedule reads it once per call).

Timing: ``--warmup`` untimed calls, then ``--reps`` calls each bracketed by CUDA events (``time.perf_counter`` on
CPU), median reported; speed-up = dense median / variant median, same run, same mode (eager or compiled). Peak
memory is ``torch.cuda.max_memory_allocated`` (weights included), reset before each variant. MACs come from
``atedm_kernels.flops`` on a meta twin (tomesd's: its merged token counts, counted the same way; neither method's
own selection/matching matmuls are included). A U-Net step at SD-XL sizes runs ~100 ms, far beyond L2, so no
flushing is needed. ``--compile`` adds a ``torch.compile`` row for every variant.

    python benchmarks/unet_e2e.py --out benchmarks/results/unet_e2e.json            # GPU, full SD-XL
    python benchmarks/unet_e2e.py --smoke --out /tmp/e2e.json                       # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from importlib import metadata

import torch

from atedm_kernels import flops
from atedm_kernels.backends import BACKENDS, preference_for, resolve
from atedm_kernels.sdxl import AtEdmConfig, SiToConfig, apply, apply_sito, build_sdxl_unet, unet_inputs

ALWAYS_PRUNE_LESS = 2**30  # prune_less_steps so large that every call is a DSAP prune-less step
PAPER_STEPS, PAPER_PRUNE_LESS_STEPS = 50, 15
TOMESD_ARGS = {"ratio": 0.5, "max_downsample": 8, "merge_attn": True, "merge_crossattn": True, "merge_mlp": True}
TIMED = ("dense", "atedm-normal", "atedm-prune-less", "atedm-dagger", "sito", "tomesd")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KERNEL_OPS = ("attention_with_map", "gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens")
PHASE = {"atedm-normal": "normal", "atedm-prune-less": "prune_less", "atedm-dagger": "normal", "sito": "normal"}


def pruning_configs(backend: str) -> dict[str, AtEdmConfig | SiToConfig]:
    """The AT-EDM variants, each pinned to the schedule phase ``PHASE`` names, and SiTo at its paper setting."""
    return {
        "atedm-normal": AtEdmConfig(prune_less_steps=0, backend=backend),
        "atedm-prune-less": AtEdmConfig(prune_less_steps=ALWAYS_PRUNE_LESS, backend=backend),
        "atedm-dagger": AtEdmConfig(prune_less_steps=0, skip_second_level=True, backend=backend),
        "sito": SiToConfig(backend=backend),
    }


@contextlib.contextmanager
def variant(unet, name: str, backend: str):
    """The U-Net patched as ``name`` for the duration of the block, restored afterwards; yields the pruning handle
    (None for dense and tomesd)."""
    if name == "dense":
        yield None
    elif name == "tomesd":
        import tomesd

        tomesd.apply_patch(unet, **TOMESD_ARGS)
        try:
            yield None
        finally:
            tomesd.remove_patch(unet)
    else:
        config = pruning_configs(backend)[name]
        with (apply if isinstance(config, AtEdmConfig) else apply_sito)(unet, config) as handle:
            yield handle


def count_macs(scale: str, height: int, width: int, batch: int, names) -> dict[str, int]:
    """MACs per timed variant, on a meta twin of the benchmarked architecture (the tiny one: a CPU fp32 twin with
    real forwards, which is faster than meta's per-op shape logic at that size)."""
    on_meta = scale != "tiny"
    twin = build_sdxl_unet(scale, device="meta" if on_meta else "cpu")
    macs: dict[str, int] = {}
    for name in names:
        if name == "dense":
            macs[name] = flops.count_unet_macs(twin, height, width, batch, on_meta=on_meta).total
        elif name == "tomesd":
            with variant(twin, name, "reference"):
                macs[name] = flops.count_forward_macs(twin, height, width, batch).total
        else:
            config = pruning_configs("reference")[name]
            report = flops.count_unet_macs(twin, height, width, batch, config, PHASE[name], on_meta=on_meta)
            macs[name] = report.total
    return macs


def dsap_mean(prune_less: float, normal: float) -> float:
    """The mean step of the paper's run: ``(15 * prune_less + 35 * normal) / 50``."""
    return (PAPER_PRUNE_LESS_STEPS * prune_less + (PAPER_STEPS - PAPER_PRUNE_LESS_STEPS) * normal) / PAPER_STEPS


def time_calls(fn, device: torch.device, warmup: int, reps: int) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return times


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "triton", "tomesd", "atedm-kernels"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    unet = build_sdxl_unet(args.scale, device=device, dtype=dtype, seed=args.seed)
    inputs = unet_inputs(unet, args.batch, args.height, args.width, seed=args.seed + 1)  # random, never zeros
    sample, timestep = inputs.pop("sample"), inputs.pop("timestep")  # [B, 4, h/8, w/8], 0-dim on the device
    # what each pruning-path op runs on, as the pruning layer resolves a model-wide backend (fails early if forced
    # to a backend that cannot run here)
    backends = {op: resolve(op, preference_for(op, args.backend), device) for op in KERNEL_OPS}
    macs = count_macs(args.scale, args.height, args.width, args.batch, args.variants)
    modes = [False, True] if args.compile else [False]
    rows, skipped = [], {}
    for compiled in modes:
        for name in args.variants:
            torch._dynamo.reset()
            model = torch.compile(unet) if compiled else unet

            def step(model=model):
                with torch.no_grad():
                    return model(sample, timestep, **inputs).sample  # [B, 4, h/8, w/8]

            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                with variant(unet, name, args.backend) as handle:
                    out = step()
                    if not torch.isfinite(out).all():
                        raise RuntimeError(f"{name}: non-finite U-Net output")
                    times = time_calls(step, device, args.warmup, args.reps)
                    if handle is not None and handle.stats()[-1].phase != PHASE[name]:
                        raise RuntimeError(f"{name}: ran as a {handle.stats()[-1].phase} step, not {PHASE[name]}")
            except Exception as exc:  # recorded, not hidden: a broken variant must not kill the others
                skipped[f"{name}{' compiled' if compiled else ''}"] = f"{type(exc).__name__}: {exc}"
                continue
            rows.append({
                "variant": name,
                "compiled": compiled,
                "macs": macs[name],
                "median_ms": statistics.median(times),
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                "times_ms": times,
            })
        add_dsap_average(rows, compiled)
    for row in rows:
        dense = next((r for r in rows if r["variant"] == "dense" and r["compiled"] == row["compiled"]), None)
        row["speedup_vs_dense"] = dense["median_ms"] / row["median_ms"] if dense else None
    return {
        "benchmark": "unet_e2e",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": versions(),
        "settings": {
            "scale": args.scale, "height": args.height, "width": args.width, "batch": args.batch,
            "dtype": args.dtype, "warmup": args.warmup, "reps": args.reps, "atedm_backend": args.backend,
            "resolved_backends": backends,
            "tomesd": TOMESD_ARGS, "seed": args.seed,
        },
        "macs_note": "multiply-accumulates per U-Net call (atedm_kernels.flops), batch included",
        "rows": rows,
        "skipped": skipped,
    }


def add_dsap_average(rows: list[dict], compiled: bool) -> None:
    """The 50-step DSAP mean step (time and MACs) from the two phase rows of this mode, when both were timed."""
    phase = {r["variant"]: r for r in rows if r["compiled"] == compiled}
    if "atedm-normal" not in phase or "atedm-prune-less" not in phase:
        return
    normal, prune_less = phase["atedm-normal"], phase["atedm-prune-less"]
    peaks = [normal["peak_memory_bytes"], prune_less["peak_memory_bytes"]]
    rows.append({
        "variant": "atedm-dsap-avg",
        "compiled": compiled,
        "macs": round(dsap_mean(prune_less["macs"], normal["macs"])),
        "median_ms": dsap_mean(prune_less["median_ms"], normal["median_ms"]),
        "peak_memory_bytes": None if None in peaks else max(peaks),
        "times_ms": None,
        "note": f"weighted mean ({PAPER_PRUNE_LESS_STEPS} * prune-less + {PAPER_STEPS - PAPER_PRUNE_LESS_STEPS} * "
                f"normal) / {PAPER_STEPS} of the two phase rows, not timed as a run",
    })


def format_table(report: dict) -> str:
    settings = report["settings"]
    lines = [
        f"{report['device']}  torch {report['versions']['torch']}  diffusers {report['versions']['diffusers']}  "
        f"tomesd {report['versions']['tomesd']}",
        f"SD-XL U-Net ({settings['scale']}), {settings['height']}x{settings['width']}, batch {settings['batch']}, "
        f"{settings['dtype']}; median of {settings['reps']} after {settings['warmup']} warm-up",
    ]
    header = f"{'variant':<18}{'mode':<10}{'GMACs':>10}{'median ms':>11}{'x dense':>9}{'peak GiB':>10}"
    lines += [header, "-" * len(header)]
    for row in report["rows"]:
        macs = f"{row['macs'] / 1e9:.2f}"
        speedup = f"{row['speedup_vs_dense']:.2f}" if row["speedup_vs_dense"] is not None else "n/a"
        memory = f"{row['peak_memory_bytes'] / 2**30:.2f}" if row["peak_memory_bytes"] else "n/a"
        mode = "compiled" if row["compiled"] else "eager"
        lines.append(f"{row['variant']:<18}{mode:<10}{macs:>10}{row['median_ms']:>11.2f}{speedup:>9}{memory:>10}")
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a check, not a measurement: tiny model on the CPU, "
                        "fp32, 128 px, 1 thread, 1 warm-up and 3 timed calls (overrides the size options)")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2, help="U-Net batch (2 = one image with CFG)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--compile", action="store_true", help="also time every variant under torch.compile")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="AT-EDM's op backend (AtEdmConfig.backend)")
    parser.add_argument("--variants", nargs="+", choices=TIMED, default=list(TIMED))
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (--smoke: 1; else torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the report (raw timings included) to this JSON file")
    args = parser.parse_args(argv)
    if args.smoke:
        args.scale, args.height, args.width, args.dtype, args.device = "tiny", 128, 128, "fp32", "cpu"
        args.warmup, args.reps = 1, 3
        args.threads = args.threads or 1  # a tiny model's many small ops run fastest on one thread
    if args.warmup < 0 or args.reps < 1:
        parser.error("--warmup must be >= 0 and --reps >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("unet_e2e: no CUDA device; this benchmark needs a GPU (use --smoke for the CPU check).", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    finally:
        torch.set_num_threads(threads)
    print(format_table(report))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")
    return 1 if report["skipped"] else 0


if __name__ == "__main__":
    sys.exit(main())
