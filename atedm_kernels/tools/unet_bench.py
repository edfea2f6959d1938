"""End-to-end U-Net step: dense SD-XL vs AT-EDM (per DSAP phase, 50-step average, dagger) vs SiTo, tomesd,
DeepCache, T-GATE, and AT-EDM stacked on DeepCache.

One U-Net call (one denoising step of a classifier-free-guidance batch) of SD-XL base's architecture with random
weights (``build_sdxl_unet``), batch 2, 1024x1024 by default (fp16 on a GPU, fp32 on a CPU), every variant timed
side by side in one run:

* ``dense``: diffusers' own U-Net (attention through ``scaled_dot_product_attention``), the baseline;
* ``atedm-normal``: AT-EDM (``AtEdmConfig()``, keep 0.37) in a normal step: every multi-layer block prunes;
* ``atedm-prune-less``: the same in a DSAP prune-less step (the F-L blocks run dense);
* ``atedm-dsap-avg``: the mean step of the paper's 50-step run, ``(15 * prune_less + 35 * normal) / 50``, computed
  from the two phase medians above (not timed as a run of its own);
* ``atedm-dagger``: AT-EDM-dagger (no pruning at the second feature level), normal step;
* ``sito``: SiTo (``SiToConfig()``: prune ratio 0.5 of every self-attention, 2x2 patches), on the same kernels;
* ``tomesd``: ToMe for SD (``tomesd.apply_patch``) at the paper's setting for SD-XL (supplementary B.1): ratio 0.5,
  merging for self-attention, cross-attention and feed-forward, ``max_downsample=8`` to open its merge range to
  every level (SD-XL's attention levels are at downsampling 2 and 4; tomesd's default 1 merges nothing there);
* ``deepcache``, ``tgate``, ``atedm+deepcache``: the peers at their authors' SD-XL settings
  (:mod:`atedm_kernels.tools.peers`: DeepCache interval 3, branch 0, 50 steps; T-GATE gate step 10, 25 steps; AT-EDM
  with its DSAP schedule on DeepCache's 50 steps), whose cost depends on the step: each is the mean step of its
  whole run, from one call of every kind of step made in step order on one run (DeepCache: a full call and a
  cached one; with AT-EDM: each in both DSAP phases; T-GATE: five kinds, those after its gate step at half the
  batch, without CFG), weighted by how many of the run's steps are of that kind. The row's ``setting`` and
  ``calls`` say which. A peer whose package is not installed is left out with a one-line reason (also in the
  JSON's ``left_out``).

Each phase is pinned by its config, not by hooks, so eager and compiled runs time exactly one static graph. The
timestep is a device tensor, as in diffusers' pipelines.

Timing (eager): every variant gets ``--warmup`` untimed calls; then ``--reps`` rounds, each timing one call of every
variant in turn, so a change in the machine's load during the run falls on all variants alike; then one more call of
every variant under ``torch.profiler`` (the split below), made last so that it is warm and runs in the state the
timed rounds ran in (on the CPU machines the first minutes after building the model run slower: dense, the first
variant, took 1.7x its median in a profiled call right after its warm-up call at 512 px). Each call is bracketed by
CUDA events (``time.perf_counter`` on a CPU); the median is reported, and speed-up = dense median / variant median.
``--compile`` adds a ``torch.compile`` row for every variant, timed variant after variant (one compilation each).

Where the time goes: the profiled call gives, per variant, the time inside each pruning-path op
(``atedm::attention_with_map``, ``gwpr``, ``select_tokens``, ``similarity_sources``, ``gather_tokens``,
``recover_tokens``; device time on CUDA, CPU time otherwise), inside ``scaled_dot_product_attention``, and the rest.
The pruning path's extra cost is ``attention_with_map - the dense SDPA it replaces + the other five ops``, where the
SDPA replaced is dense's per-call SDPA time at the same (q, k) shapes times the number of pruning layers at them.

Memory: peak resident set (Linux ``VmHWM``, reset before every call; weights included) on a CPU,
``torch.cuda.max_memory_allocated`` on a GPU, the largest over a variant's calls. MACs come from
``atedm_kernels.tools.flops`` on a meta twin (tomesd's: its merged token counts, counted the same way; neither method's
own selection/matching matmuls are included).

    atedm bench --out unet_e2e.json                                              # GPU: full SD-XL, 1024 px, fp16
    atedm bench --device cpu --height 512 --width 512 --out cpu_512.json         # CPU: full SD-XL, fp32
    atedm bench --smoke --out /tmp/e2e.json                                      # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from . import flops, peers
from ..backends import BACKENDS, family_for
from ..sdxl import AtEdmConfig, SiToConfig
from .methods import TOMESD_RATIO, TOMESD_SDXL, installed, tomesd_patched
from .models import SCALES, build_sdxl_unet, unet_inputs

ALWAYS_PRUNE_LESS = 2**30  # prune_less_steps so large that every call is a DSAP prune-less step
PAPER_STEPS, PAPER_PRUNE_LESS_STEPS = 50, 15
TIMED = ("dense", "atedm-normal", "atedm-prune-less", "atedm-dagger", "sito", "tomesd", *peers.PACKAGES)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
KERNEL_OPS = ("attention_with_map", "gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens")
SDPA = "aten::scaled_dot_product_attention"
GRAPHABLE = ("dense", "atedm-normal", "atedm-prune-less", "atedm-dagger", "sito")  # --cuda-graph rows
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
    (None for dense and tomesd; a :class:`~atedm_kernels.tools.peers.PeerRun` for the peers)."""
    if name in peers.PACKAGES:
        with peers.PeerRun(unet, name, backend, device=next(unet.parameters()).device) as run:
            yield run
    elif name == "tomesd":
        with tomesd_patched(unet):
            yield None
    else:
        with installed(unet, None if name == "dense" else pruning_configs(backend)[name]) as handle:
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
        elif name in peers.PACKAGES:
            macs[name] = flops.count_run_macs(twin, name, height, width, batch, on_meta=on_meta)[0]
        else:
            config = pruning_configs("reference")[name]
            report = flops.count_unet_macs(twin, height, width, batch, config, PHASE[name], on_meta=on_meta)
            macs[name] = report.total
    return macs


def dsap_mean(prune_less: float, normal: float) -> float:
    """The mean step of the paper's run: ``(15 * prune_less + 35 * normal) / 50``."""
    return (PAPER_PRUNE_LESS_STEPS * prune_less + (PAPER_STEPS - PAPER_PRUNE_LESS_STEPS) * normal) / PAPER_STEPS


class PeakMemory:
    """Peak memory of the calls made between ``reset()`` and ``read()``: allocated CUDA memory on a GPU, the
    process's peak resident set on Linux (``VmHWM``, which writing 5 to ``/proc/self/clear_refs`` resets; freed
    heap is handed back to the system first so an earlier variant's leftovers do not count), else None."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self._libc is not None:
            self._libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        if self._libc is None:
            return None
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return None


def timed_call(fn, device: torch.device) -> float:
    """Milliseconds of one call of ``fn`` (CUDA events on a GPU, wall clock on a CPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def host_issue_ms(fn, device: torch.device) -> tuple[float, float]:
    """``(host, wall)`` milliseconds of one call of ``fn``: ``host`` until ``fn`` returns on the host, ``wall`` until
    the device has finished too. On a GPU, ``host`` close to ``wall`` means the GPU waited for Python to issue work
    (host-bound, or a device sync inside ``fn``); ``host`` well under ``wall`` means the GPU was the bottleneck. On a
    CPU both are the same."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    host = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * host, 1e3 * (time.perf_counter() - t0)


def profiled_call(fn, device: torch.device) -> dict:
    """One call of ``fn`` under ``torch.profiler``: its wall time, the time in each pruning-path op and in SDPA
    (device time on CUDA, CPU time elsewhere), the SDPA / attention_with_map call counts per (q, k) shape, the host
    (self CPU) time of every op, and the call's output."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    outputs = []
    with profile(activities=activities, record_shapes=True) as prof:
        wall_ms = timed_call(lambda: outputs.append(fn()), device)
    on_device = device.type == "cuda"
    split = dict.fromkeys((*KERNEL_OPS, "sdpa"), 0.0)
    sdpa_calls, map_calls = {}, {}
    for event in prof.key_averages(group_by_input_shape=True):
        ms = (event.device_time_total if on_device else event.cpu_time_total) / 1e3
        shapes = str(event.input_shapes[:2])  # (q, k)
        if event.key == SDPA:
            split["sdpa"] += ms
            count, total = sdpa_calls.get(shapes, (0, 0.0))
            sdpa_calls[shapes] = (count + event.count, total + ms)
        elif event.key.startswith("atedm::") and event.key[len("atedm::"):] in KERNEL_OPS:
            split[event.key[len("atedm::"):]] += ms
            if event.key == "atedm::attention_with_map":
                map_calls[shapes] = map_calls.get(shapes, 0) + event.count
    split["rest"] = wall_ms - sum(split.values())
    host_ms = {event.key: event.self_cpu_time_total / 1e3 for event in prof.key_averages()}
    return {"profiled_call_ms": wall_ms, "split_ms": split, "sdpa_calls": sdpa_calls, "map_calls": map_calls,
            "host_ms_by_op": host_ms,
            "output": outputs[0]}


def pruning_overhead(profiled: dict, dense: dict) -> dict | None:
    """The pruning path's extra cost in one profiled call: ``attention_with_map`` minus the dense SDPA it replaces
    (dense's per-call SDPA time at the same (q, k) shapes), plus gwpr, select, sources, gather and recover."""
    if not profiled["map_calls"]:
        return None
    replaced = 0.0
    for shapes, count in profiled["map_calls"].items():
        if shapes not in dense["sdpa_calls"]:
            return None
        dense_count, dense_ms = dense["sdpa_calls"][shapes]
        replaced += count * dense_ms / dense_count
    split = profiled["split_ms"]
    extra = split["attention_with_map"] - replaced + sum(split[op] for op in KERNEL_OPS[1:])
    return {
        "replaced_sdpa_ms": replaced,
        "extra_ms": extra,
        "fraction_of_call": extra / profiled["profiled_call_ms"],
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "triton", "tomesd", "atedm-kernels"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


TOP_HOST_OPS = 15  # the ops with the most host (self CPU) time in a profiled call, kept per variant in the JSON


def weighted_profile(parts: list[tuple[float, dict]]) -> dict:
    """The weighted sum of ``profiled_call`` results (a peer run's mean step): times, op times, call counts, and
    the ops with the most host time (self CPU time under the profiler, which inflates it: compare variants, not
    absolute figures)."""
    split = dict.fromkeys(parts[0][1]["split_ms"], 0.0)
    sdpa_calls, map_calls, host_ms = {}, {}, {}
    for weight, profiled in parts:
        for key, ms in profiled["split_ms"].items():
            split[key] += weight * ms
        for key, ms in profiled["host_ms_by_op"].items():
            host_ms[key] = host_ms.get(key, 0.0) + weight * ms
        for shapes, (count, ms) in profiled["sdpa_calls"].items():
            old_count, old_ms = sdpa_calls.get(shapes, (0.0, 0.0))
            sdpa_calls[shapes] = (old_count + weight * count, old_ms + weight * ms)
        for shapes, count in profiled["map_calls"].items():
            map_calls[shapes] = map_calls.get(shapes, 0.0) + weight * count
    top = sorted(host_ms.items(), key=lambda item: -item[1])[:TOP_HOST_OPS]
    return {"profiled_call_ms": sum(w * p["profiled_call_ms"] for w, p in parts), "split_ms": split,
            "sdpa_calls": sdpa_calls, "map_calls": map_calls, "top_host_ms": dict(top)}


def check_finite(name: str, output: torch.Tensor) -> None:
    if not torch.isfinite(output).all():
        raise RuntimeError(f"{name}: non-finite U-Net output")


def run_eager(unet, calls_of, names, args, device, memory) -> tuple[dict, dict, dict]:
    """Interleaved eager timing: per variant ``warmup`` untimed calls, then ``reps`` rounds of every variant in
    turn, then one call per variant under the profiler. ``calls_of(handle)`` gives a variant's ``(weight, call)``
    pairs (one of weight 1 for a single-call variant; a peer run's weighted calls), whose weighted sum is its step.
    Returns times per variant (ms per step), peak memory per variant and the profile per variant."""
    times = {name: [] for name in names}
    peaks: dict[str, int | None] = dict.fromkeys(names)
    profiles, warm_ms, round_ms = {}, {}, {}

    @contextlib.contextmanager
    def measured(name: str):
        """``name`` applied for one step: its peak memory kept (the largest over its steps), its phase checked."""
        with variant(unet, name, args.backend) as handle:
            memory.reset()
            yield handle
            peak = memory.read()
            if peak is not None:
                peaks[name] = max(peaks[name] or 0, peak)
            check_phase(name, handle)

    for name in names:
        for _ in range(args.warmup):
            with measured(name) as handle:
                calls = calls_of(handle)
                ms = [timed_call(lambda call=call: check_finite(name, call()), device) for _, call in calls]
                warm_ms[name] = sum(weight * t for (weight, _), t in zip(calls, ms))
                round_ms[name] = sum(ms)  # every call of a round
        log(f"  warm-up {name:<17} {warm_ms[name] / 1e3:8.2f} s")
    minutes = args.reps * sum(round_ms.values()) / 6e4
    log(f"  timing {args.reps} rounds of {len(names)} variants: about {minutes:.1f} min")
    for rep in range(args.reps):
        for name in names:
            with measured(name) as handle:
                times[name].append(sum(weight * timed_call(call, device) for weight, call in calls_of(handle)))
        log(f"  round {rep + 1}/{args.reps}: " + ", ".join(f"{n} {times[n][-1] / 1e3:.2f} s" for n in names))
    for name in names:  # profiled last: warm, and in the steady state the timed rounds ran in
        with measured(name) as handle:
            parts = [(weight, profiled_call(call, device)) for weight, call in calls_of(handle)]
            for _, profiled in parts:
                check_finite(name, profiled.pop("output"))
            profiles[name] = weighted_profile(parts)
            issue = [(weight, host_issue_ms(call, device)) for weight, call in calls_of(handle)]
            profiles[name]["host_issue_ms"] = sum(weight * host for weight, (host, _) in issue)
            profiles[name]["host_issue_wall_ms"] = sum(weight * wall for weight, (_, wall) in issue)
        log(f"  profiled {name:<17} {profiles[name]['profiled_call_ms'] / 1e3:8.2f} s; host issue "
            f"{profiles[name]['host_issue_ms'] / 1e3:.3f} s of {profiles[name]['host_issue_wall_ms'] / 1e3:.3f} s")
    return times, peaks, profiles


def run_compiled(unet, step_of, names, args, device, memory) -> tuple[dict, dict]:
    """Compiled timing, variant after variant (each needs its own compilation)."""
    times, peaks = {}, {}
    for name in names:
        torch._dynamo.reset()
        compiled = torch.compile(unet)
        step = step_of(compiled)
        with variant(unet, name, args.backend) as handle:
            memory.reset()
            for _ in range(max(1, args.warmup)):
                step()
            times[name] = [timed_call(step, device) for _ in range(args.reps)]
            peaks[name] = memory.read()
            check_phase(name, handle)
    return times, peaks


def run_graphed(unet, sample, timestep, inputs, names, args, device, memory) -> tuple[dict, dict, dict]:
    """CUDA-graph timing: each variant's call captured once (in its pinned phase: the pruning hooks run at capture,
    so the graph holds that phase's kernels) and replayed. The host's Python, dispatch and launches leave the timed
    path, so a row is what the GPU needs for the call. The timestep is passed as an entry of a one-element schedule
    on the device, which AT-EDM's clock reads without a device sync (a sync cannot be captured). Returns times and
    peaks per captured variant, and why each variant that could not be captured failed."""
    times, peaks = {}, {}
    schedule = timestep.reshape(1).clone()  # [1]: timestep as a schedule entry, a view

    def step():
        with torch.no_grad():
            return unet(sample, schedule[0], **inputs).sample  # [B, 4, h/8, w/8]

    errors = {}
    for name in names:
        try:
            times[name], peaks[name] = _graphed(unet, step, name, args, device, memory)
        except RuntimeError as error:  # recorded, so one variant that cannot be captured costs only its row
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            log(f"  cuda-graph {name}: not captured: {errors[name]}")
    return times, peaks, errors


def _graphed(unet, step, name: str, args, device, memory) -> tuple[list[float], int | None]:
    """One variant: warm-up off the default stream (as capture wants), capture, timed replays."""
    with variant(unet, name, args.backend) as handle:
        memory.reset()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(max(3, args.warmup)):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = step()
        graph.replay()
        check_finite(name, output)
        times = [timed_call(graph.replay, device) for _ in range(args.reps)]
        peak = memory.read()
        check_phase(name, handle)
    return times, peak


def check_phase(name: str, handle) -> None:
    """A pinned variant ran in its phase; AT-EDM on DeepCache pruned in exactly the calls DeepCache ran in full."""
    if isinstance(handle, peers.PeerRun):
        for record in handle.handle.stats() if handle.handle is not None else ():
            pruned = any(kept is not None for kept in record.kept.values())
            full = peers.deepcache_full(record.step)
            if pruned != full:
                raise RuntimeError(f"{name}: step {record.step} {'pruned' if pruned else 'did not prune'} although "
                                   f"DeepCache ran it {'in full' if full else 'from its cache'}")
        return
    if handle is not None and handle.stats()[-1].phase != PHASE[name]:
        raise RuntimeError(f"{name}: ran as a {handle.stats()[-1].phase} step, not {PHASE[name]}")


class Bench:
    """One benchmark's model, inputs and the U-Net calls each variant times (a variant's peer run makes several)."""

    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        log(f"building SD-XL's U-Net ({args.scale}, random weights, {args.dtype}) on {device} ...")
        self.unet = build_sdxl_unet(args.scale, device=device, dtype=DTYPES[args.dtype], seed=args.seed)
        inputs = unet_inputs(self.unet, args.batch, args.height, args.width, seed=args.seed + 1)  # random, not zeros
        self.sample, self.timestep = inputs.pop("sample"), inputs.pop("timestep")  # [B, 4, h/8, w/8], 0-dim
        self.inputs = inputs
        self.half_sample = self.sample[: self.sample.shape[0] // 2]  # [B/2, 4, h/8, w/8]: T-GATE's late steps
        self.half_inputs = peers.half_batch(inputs)
        self.peer_calls: dict[str, list[peers.Call]] = {}  # each peer's calls, as its timed runs made them

    def step_of(self, model):
        def step():
            with torch.no_grad():
                return model(self.sample, self.timestep, **self.inputs).sample  # [B, 4, h/8, w/8]
        return step

    def calls_of(self, handle) -> list[tuple[float, object]]:
        """(weight, call) of the variant ``handle`` stands for: one plain call, or every kind of a peer's steps."""
        if not isinstance(handle, peers.PeerRun):
            return [(1.0, self.step_of(self.unet))]
        out = []
        self.peer_calls[handle.name] = handle.calls()
        for call in self.peer_calls[handle.name]:
            def peer_step(call=call):
                handle.prepare(call.step)
                x, kwargs = (self.half_sample, self.half_inputs) if call.half_batch else (self.sample, self.inputs)
                with torch.no_grad():
                    return self.unet(x, handle.timestep(call.step), **kwargs).sample  # [B or B/2, 4, h/8, w/8]
            out.append((call.weight, peer_step))
        return out


def eager_rows(bench: Bench, args, device, memory, macs: dict[str, int]) -> list[dict]:
    times, peaks, profiles = run_eager(bench.unet, bench.calls_of, args.variants, args, device, memory)
    rows = []
    for name in args.variants:
        profile = profiles[name]
        row = {"variant": name, "compiled": False, "macs": macs[name], "median_ms": statistics.median(times[name]),
               "peak_memory_bytes": peaks[name], "times_ms": times[name],
               **{key: profile[key] for key in ("profiled_call_ms", "split_ms", "host_issue_ms", "top_host_ms",
                                                "host_issue_wall_ms")}}
        if "dense" in profiles and name != "dense":
            row["pruning_overhead"] = pruning_overhead(profile, profiles["dense"])
        if name in peers.PACKAGES:
            row["setting"] = peers.SETTINGS[name]
            row["calls"] = [{"step": c.step, "weight": c.weight, "half_batch": c.half_batch}
                            for c in bench.peer_calls[name]]
        rows.append(row)
    add_dsap_average(rows, compiled=False)
    return rows


def compiled_rows(bench: Bench, args, device, memory, macs: dict[str, int]) -> list[dict]:
    compiled = [name for name in args.variants if name not in peers.PACKAGES]
    if len(compiled) < len(args.variants):
        log("  --compile: the peers run eager only (their caches are Python state between calls)")
    times, peaks = run_compiled(bench.unet, bench.step_of, compiled, args, device, memory)
    rows = [{"variant": name, "compiled": True, "macs": macs[name], "median_ms": statistics.median(times[name]),
             "peak_memory_bytes": peaks[name], "times_ms": times[name]} for name in compiled]
    add_dsap_average(rows, compiled=True)
    return rows


def graph_rows(bench: Bench, args, device, memory, macs: dict[str, int]) -> list[dict]:
    graphed = [name for name in args.variants if name in GRAPHABLE]
    log(f"  --cuda-graph: {', '.join(graphed)} (the peers and tomesd keep Python state or host draws per call)")
    times, peaks, errors = run_graphed(bench.unet, bench.sample, bench.timestep, bench.inputs, graphed, args, device,
                                       memory)
    rows = [{"variant": name, "compiled": "cuda-graph", "macs": macs[name], "median_ms": None,
             "peak_memory_bytes": None, "times_ms": None, "error": error} for name, error in errors.items()]
    for name in times:
        rows.append({"variant": name, "compiled": "cuda-graph", "macs": macs[name],
                     "median_ms": statistics.median(times[name]), "peak_memory_bytes": peaks[name],
                     "times_ms": times[name]})
        log(f"  cuda-graph {name:<17} {rows[-1]['median_ms']:8.2f} ms")
    add_dsap_average(rows, compiled="cuda-graph")
    return rows


def add_speedups(rows: list[dict]) -> None:
    """Each row's speed-up against the dense row of its mode (None where either has no time)."""
    for row in rows:
        dense = next((r for r in rows if r["variant"] == "dense" and r["compiled"] == row["compiled"]), None)
        timed = dense and dense["median_ms"] and row["median_ms"]  # an uncaptured CUDA-graph row has no time
        row["speedup_vs_dense"] = dense["median_ms"] / row["median_ms"] if timed else None


def run(args: argparse.Namespace) -> dict:
    """Every variant of ``args.variants``: eager, then compiled (``--compile``) and replayed as CUDA graphs
    (``--cuda-graph``); the report :func:`format_table` prints and ``--out`` writes."""
    device = torch.device(args.device)
    load_before = os.getloadavg()  # other work on the machine: every variant shares it (interleaved rounds)
    for reason in args.left_out.values():
        log(reason)
    bench = Bench(args, device)
    # what each pruning-path op runs on, as the pruning layer resolves a model-wide backend (fails early if forced
    # to a backend that cannot run here)
    backends = {op: family_for(op, args.backend, device) for op in KERNEL_OPS}
    macs = count_macs(args.scale, args.height, args.width, args.batch, args.variants)
    memory = PeakMemory(device)
    rows = eager_rows(bench, args, device, memory, macs)
    if args.compile:
        rows += compiled_rows(bench, args, device, memory, macs)
    if args.cuda_graph:
        rows += graph_rows(bench, args, device, memory, macs)
    add_speedups(rows)
    return {
        "benchmark": "unet_e2e",
        "device": device_name(device),
        "versions": versions(),
        "settings": {
            "scale": args.scale, "height": args.height, "width": args.width, "batch": args.batch,
            "dtype": args.dtype, "warmup": args.warmup, "reps": args.reps, "atedm_backend": args.backend,
            "resolved_backends": backends, "tomesd": {"ratio": TOMESD_RATIO, **TOMESD_SDXL}, "seed": args.seed,
            "deepcache": peers.DEEPCACHE, "tgate": peers.TGATE,
        },
        "left_out": args.left_out,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "macs_note": "multiply-accumulates per U-Net call (atedm_kernels.tools.flops), batch included",
        "rows": rows,
    }


def add_dsap_average(rows: list[dict], compiled: bool) -> None:
    """The 50-step DSAP mean step (time and MACs) from the two phase rows of this mode, when both were timed."""
    phase = {r["variant"]: r for r in rows if r["compiled"] == compiled and r["median_ms"] is not None}
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
        f"{settings['dtype']}; median of {settings['reps']} interleaved calls after {settings['warmup']} warm-up",
    ]
    lines += [f"left out: {reason}" for reason in report.get("left_out", {}).values()]
    header = f"{'variant':<18}{'mode':<11}{'GMACs':>10}{'median ms':>12}{'x dense':>9}{'peak GiB':>10}{'pruning path':>14}"
    lines += [header, "-" * len(header)]
    for row in report["rows"]:
        speedup = f"{row['speedup_vs_dense']:.2f}" if row["speedup_vs_dense"] is not None else "n/a"
        memory = f"{row['peak_memory_bytes'] / 2**30:.2f}" if row["peak_memory_bytes"] else "n/a"
        overhead = row.get("pruning_overhead")
        extra = f"{overhead['fraction_of_call']:.1%}" if overhead else ""
        mode = {False: "eager", True: "compiled", "cuda-graph": "cuda-graph"}[row["compiled"]]
        median = f"{row['median_ms']:.1f}" if row["median_ms"] is not None else "n/a"
        lines.append(f"{row['variant']:<18}{mode:<11}{row['macs'] / 1e9:>10.1f}{median:>12}{speedup:>9}"
                     f"{memory:>10}{extra:>14}")
    lines.append("pruning path: extra cost of AT-EDM's ops over the dense SDPA they replace, share of a profiled call")
    lines += [f"{row['variant']}: mean step of its run, {row['setting']}" for row in report["rows"] if "setting" in row]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="atedm bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a check, not a measurement: defaults to the tiny model "
                        "on the CPU, fp32, 128 px, 1 thread, 1 warm-up and 3 timed calls (options given explicitly win)")
    parser.add_argument("--scale", choices=tuple(SCALES), help="model size (default full)")
    parser.add_argument("--height", type=int, help="image height in pixels (default 1024)")
    parser.add_argument("--width", type=int, help="image width in pixels (default 1024)")
    parser.add_argument("--batch", type=int, default=2, help="U-Net batch (2 = one image with CFG)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default fp16 on CUDA, fp32 on a CPU")
    parser.add_argument("--device", help="default cuda when available, else cpu")
    parser.add_argument("--warmup", type=int, help="untimed calls per variant (default 10 on CUDA, 1 on a CPU)")
    parser.add_argument("--reps", type=int, help="timed rounds (default 50 on CUDA, 3 on a CPU)")
    parser.add_argument("--compile", action="store_true", help="also time every variant under torch.compile")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="also time dense and the pruning variants as replayed CUDA graphs (CUDA only): the "
                        "call without its host cost")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="AT-EDM's op backend (AtEdmConfig.backend)")
    parser.add_argument("--variants", nargs="+", choices=TIMED,
                        help="default: all; a peer whose package is missing is then left out with its reason")
    parser.add_argument("--threads", type=int, help="CPU intra-op threads (--smoke: 1; else torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the report (raw timings included) to this JSON file")
    args = parser.parse_args(argv)
    smoke = {"scale": "tiny", "height": 128, "width": 128, "dtype": "fp32", "device": "cpu", "warmup": 1, "reps": 3,
             "threads": 1}  # a tiny model's many small ops run fastest on one thread
    for option, value in smoke.items():
        if args.smoke and getattr(args, option) is None:
            setattr(args, option, value)
    args.scale = args.scale or "full"
    args.height, args.width = args.height or 1024, args.width or 1024
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("fp16" if on_cuda else "fp32")
    args.warmup = 10 if args.warmup is None and on_cuda else 1 if args.warmup is None else args.warmup
    args.reps = 50 if args.reps is None and on_cuda else 3 if args.reps is None else args.reps
    args.left_out = {}
    for name in args.variants or TIMED:
        if name in peers.PACKAGES and (reason := peers.missing(name)):
            if args.variants:
                parser.error(f"--variants {name}: {reason}")
            args.left_out[name] = f"{name}: left out: {reason}"
    args.variants = args.variants or [name for name in TIMED if name not in args.left_out]
    if args.warmup < 1 or args.reps < 1:
        parser.error("--warmup and --reps must be >= 1")
    if args.height % 8 or args.width % 8 or args.height < 8 or args.width < 8:
        parser.error(f"--height and --width must be positive multiples of 8, got {args.height}x{args.width}")
    if on_cuda and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device (use --device cpu, or --smoke)")
    if args.cuda_graph and not on_cuda:
        parser.error("--cuda-graph needs --device cuda (CUDA graphs exist on CUDA only)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    finally:
        torch.set_num_threads(threads)
    print(format_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
