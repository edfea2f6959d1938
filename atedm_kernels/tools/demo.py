"""``atedm demo``: what AT-EDM selects on a trained model, and what it does to SD-XL's speed (nothing is
downloaded).

Two parts, each labelled as such in the output:

1. **Picture** (seconds, on the CPU): a short DDIM loop with AT-EDM on the trained Fashion-MNIST denoiser of SD-XL's
   layout that ships with the package (:mod:`.tools.fashion`), recording every pruning block's G-WPR scores and kept
   tokens at every step, drawn by :mod:`.demo_picture` beside the dense and AT-EDM samples of the same seed.
2. **Speed**: denoising step(s) dense and with AT-EDM on the timed model (random weights), by default SD-XL base's full
   U-Net architecture (2.6 B parameters): on a CPU one step at 512x512 px in float32 (about 25 s dense on 2 cores),
   on a GPU 10 steps at 1024x1024 px in float16. Runs alternate (dense, AT-EDM, AT-EDM, dense, ...) so that a load
   change on a shared machine hits both alike. Before the long part, one step at a small warm-up size is timed and
   scaled by the MACs ratio into an estimate; a progress bar ticks once per resnet and attention block.

The timed model is built with ``build_sdxl_unet(fill="pool")`` (:mod:`.models`): on the ``meta`` device, then filled
from a tiled random pool, about 10 s for 10 GB of float32 instead of about 40 s of diffusers' initialisation; its
values (PyTorch's default scale) do not change what a step costs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..sdxl import AtEdmConfig, apply

from .demo_picture import BlockInfo, Selection, Trace, draw_selections
from .models import build_sdxl_unet, parameter_bytes, unet_config, unet_inputs

CFG_BATCH = 2  # one image with classifier-free guidance: the U-Net sees the conditional and unconditional halves
PROGRESS_MODULES = ("ResnetBlock2D", "Transformer2DModel")  # the progress bar ticks after each of these


def level_grid(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """Token grid of a feature level: each level below the first halves the latent (stride-2, padded conv)."""
    rows, cols = latent_hw
    for _ in range(level - 1):
        rows, cols = math.ceil(rows / 2), math.ceil(cols / 2)
    return rows, cols


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def denoise(unet, inputs: dict, steps: int, device: torch.device) -> float:
    """Run ``steps`` Euler steps of a real diffusers scheduler; returns the wall time in seconds."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(steps, device=device)
    latents = inputs["sample"] * scheduler.init_noise_sigma  # [B, 4, h, w]
    _sync(device)
    start = time.perf_counter()
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(latents, t)
        noise = unet(**{**inputs, "sample": model_in, "timestep": t}).sample
        latents = scheduler.step(noise, t, latents).prev_sample
    _sync(device)
    return time.perf_counter() - start


def trace_trained(steps: int, config: AtEdmConfig, seed: int, label: int) -> tuple[Trace, torch.Tensor, torch.Tensor]:
    """AT-EDM on the trained Fashion-MNIST denoiser (SD-XL's layout, learnt attention maps): one image of class
    ``label`` from ``seed``, ``steps`` DDIM steps with classifier-free guidance. Returns every selection of the
    conditional batch element, and the dense and AT-EDM samples ``[32, 32]`` in [0, 1] of the same seed."""
    from .fashion import model as fashion_model
    from .fashion import quality

    denoiser = fashion_model.load_denoiser()
    labels = torch.tensor([label])
    with apply(denoiser.unet, config) as handle:  # the blocks in U-Net order, for the rows
        counts: dict[tuple[str, int], int] = {}
        for block in handle.blocks:
            counts[(block.stage, block.level)] = counts.get((block.stage, block.level), 0) + 1
        seen: dict[tuple[str, int], int] = {}
        blocks = []
        for block in handle.blocks:
            key = (block.stage, block.level)
            seen[key] = seen.get(key, 0) + 1
            grid = level_grid((fashion_model.unet_config()["sample_size"],) * 2, block.level)
            blocks.append(BlockInfo(block.name, block.stage, block.level, seen[key] - 1, counts[key],
                                    len(block.transformer.transformer_blocks), grid))
    selections: list[Selection] = []

    def record(block, scores, keep_idx, step):  # scores [2, N], keep_idx [2, K]: (unconditional, conditional)
        kept = torch.zeros(scores.shape[1], dtype=torch.bool)
        kept[keep_idx[1]] = True
        selections.append(Selection(step, block.name, scores[1].float(), kept))

    dense = quality.sample(denoiser, quality.Method("dense", "dense", "reference"), labels, [seed], steps)
    pruned = quality.sample(denoiser, quality.Method("atedm", "atedm", "atedm", config), labels, [seed], steps,
                            observer=record)
    phases = ["prune_less" if step < config.prune_less_count(steps) else "normal" for step in range(steps)]
    return Trace(blocks, phases, selections), (dense[0, 0] + 1) / 2, (pruned[0, 0] + 1) / 2


@dataclass
class Variant:
    """Timed runs of one variant: each run is ``steps`` denoising steps."""

    label: str
    macs_per_step: int
    steps: int
    seconds: list[float] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.seconds)

    @property
    def per_step(self) -> float:
        return self.total / (len(self.seconds) * self.steps)


def run_order(repeats: int) -> list[str]:
    """Alternating order of the timed runs: dense, atedm, atedm, dense, dense, atedm, ..."""
    order = []
    for r in range(repeats):
        order += ["dense", "atedm"] if r % 2 == 0 else ["atedm", "dense"]
    return order


class BlockProgress:
    """A tqdm bar that ticks after every resnet and attention block of a U-Net forward."""

    def __init__(self, unet, calls: int, enabled: bool = True) -> None:
        from tqdm.auto import tqdm

        modules = [m for m in unet.modules() if type(m).__name__ in PROGRESS_MODULES]
        self.bar = tqdm(total=calls * len(modules), unit="block", disable=not enabled, leave=False)
        self.hooks = [m.register_forward_hook(self._tick) for m in modules]

    def _tick(self, *_) -> None:  # a forward hook must return None, or it replaces the module's output
        self.bar.update(1)

    def describe(self, text: str) -> None:
        self.bar.set_description(text)

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
        self.bar.close()


def timed_phase(steps: int) -> str | None:
    """The DSAP phase AT-EDM's timed runs are pinned to: "normal" for one step per run (DSAP makes the first 30% of
    a run's steps prune-less, so a 1-step run would time only the prune-less phase), else None: the real schedule."""
    return "normal" if steps == 1 else None


def _macs(unet_cfg: dict, size: int, config: AtEdmConfig | None, steps: int) -> int:
    from diffusers import UNet2DConditionModel

    from .flops import count_unet_macs

    with torch.device("meta"):
        meta = UNet2DConditionModel(**unet_cfg)
    if config is None:
        return count_unet_macs(meta, size, size, batch=CFG_BATCH).total
    phase = timed_phase(steps) or "average"
    return count_unet_macs(meta, size, size, batch=CFG_BATCH, config=config, phase=phase, num_steps=steps).total


@dataclass
class DemoSettings:
    scale: str  # the timed model: "full" or "tiny"
    size: int  # pixels (square) of the timed runs
    steps: int  # denoising steps per timed run
    repeats: int  # timed runs per variant
    config: AtEdmConfig  # AT-EDM of the timed runs
    picture_steps: int
    picture_config: AtEdmConfig
    device: torch.device
    out: Path
    warmup_size: int  # pixels of the warm-up step the estimate is scaled from
    seed: int = 0
    progress: bool = True
    unet_config: dict | None = None  # overrides scale's config (tests run the full-scale path on a small one)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_needed(settings: DemoSettings) -> int:
    """Bytes the timed CPU runs need: float32 weights, plus activations that grow with the pixel count (measured:
    11.0 GB peak resident for the full model at 512 px, weights 10.3 GB)."""
    weights = parameter_bytes(settings.unet_config or unet_config(settings.scale), torch.float32)
    return int(1.05 * weights + 0.5e9 * (settings.size / 512) ** 2 + 0.5e9)


def check_memory(settings: DemoSettings) -> None:
    """On a CPU, refuse in one line (naming --scale) a run that cannot fit in the available memory."""
    if settings.device.type != "cpu":
        return
    available, needed = available_memory(), memory_needed(settings)
    if available is not None and available < needed:
        raise ValueError(
            f"--scale {settings.scale} at {settings.size} px needs about {needed / 1e9:.0f} GB of free memory, "
            f"{available / 1e9:.1f} GB are available: free memory, lower --size, or use --scale tiny"
        )


@dataclass
class DemoResult:
    dense: Variant
    atedm: Variant
    picture: Path
    estimate_seconds: float  # of all timed runs, printed before them
    build_seconds: float

    @property
    def speedup(self) -> float:
        return self.dense.per_step / self.atedm.per_step


def atedm_label(phases: list[str]) -> str:
    """What the AT-EDM runs timed, from their steps' DSAP phases."""
    prune_less = phases.count("prune_less")
    if prune_less == 0:
        return "AT-EDM normal step" if len(phases) == 1 else f"AT-EDM, {len(phases)} normal steps"
    return f"AT-EDM, DSAP mean of {len(phases)} steps ({prune_less} prune-less)"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run(settings: DemoSettings, echo: Callable[[str], None] = print) -> DemoResult:
    """Both parts of the demo, printing as it goes; returns the timings and the picture's path."""
    picture_path = draw_picture(settings, echo)
    return time_speed(settings, picture_path, echo)


def draw_picture(settings: DemoSettings, echo: Callable[[str], None]) -> Path:
    """Part 1: AT-EDM's selection on the trained Fashion-MNIST denoiser, on the CPU (a few seconds)."""
    from .fashion.data import CLASSES

    label = settings.seed % 10
    echo(f"[picture] the trained Fashion-MNIST denoiser of SD-XL's layout, class {CLASSES[label]!r}, seed "
         f"{settings.seed}, {settings.picture_steps} DDIM steps with AT-EDM (keep_ratio "
         f"{settings.picture_config.keep_ratio})")
    trace, dense_image, atedm_image = trace_trained(settings.picture_steps, settings.picture_config, settings.seed,
                                                    label)
    picture_path = draw_selections(
        trace, settings.out / "atedm_masks.png", model=f"trained Fashion-MNIST denoiser, class {CLASSES[label]!r}, "
        "32x32 px", keep_ratio=settings.picture_config.keep_ratio,
        samples=[("dense", dense_image), ("AT-EDM", atedm_image)])
    echo(f"[picture] wrote {picture_path}: G-WPR scores and kept tokens of every pruning block at every step, "
         "and the dense and AT-EDM samples of the same seed")
    return picture_path


def time_speed(settings: DemoSettings, picture_path: Path, echo: Callable[[str], None]) -> DemoResult:
    """Part 2: dense against AT-EDM on the timed model (random weights): a warm-up estimate, then the timed runs."""
    device, dtype = settings.device, (torch.float16 if settings.device.type == "cuda" else torch.float32)
    cfg = settings.unet_config or unet_config(settings.scale)
    model_name = ("SD-XL base's full U-Net architecture" if settings.scale == "full"
                  else "a tiny U-Net with SD-XL's block structure")
    order = run_order(settings.repeats)
    echo(f"[speed] {model_name}, random weights, {settings.size}x{settings.size} px, batch {CFG_BATCH} (one image "
         f"with classifier-free guidance), {str(dtype).removeprefix('torch.')} on {device}"
         + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
         + f"; {settings.steps} Euler step(s) per run, runs in the order {', '.join(order)}")
    dense = Variant("dense", _macs(cfg, settings.size, None, settings.steps), settings.steps)
    atedm = Variant("AT-EDM", _macs(cfg, settings.size, settings.config, settings.steps), settings.steps)
    start = time.perf_counter()
    unet = build_sdxl_unet(settings.scale, device, dtype, seed=settings.seed, config=cfg, fill="pool",
                           progress=settings.progress)
    build_seconds = time.perf_counter() - start
    count = sum(p.numel() for p in unet.parameters())
    count_text = f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"
    echo(f"[speed] built the U-Net: {count_text} random parameters in {build_seconds:.1f} s")

    phase = timed_phase(settings.steps)
    if phase is not None:
        echo(f"[speed] one step per run: AT-EDM is timed in its {phase} phase (a 1-step run would be all prune-less "
             "under DSAP, which keeps the first 30% of a run's steps lighter); --steps N times a whole N-step schedule")
    estimate = _warm_up_estimate(settings, unet, cfg, phase, order, dense, atedm, echo)

    inputs = unet_inputs(unet, CFG_BATCH, settings.size, settings.size, seed=settings.seed)
    progress = BlockProgress(unet, len(order) * settings.steps, settings.progress)
    try:
        for i, variant in enumerate(order):
            progress.describe(f"run {i + 1}/{len(order)} ({'dense' if variant == 'dense' else 'AT-EDM'})")
            if variant == "dense":
                dense.seconds.append(denoise(unet, inputs, settings.steps, device))
            else:
                with apply(unet, settings.config) as handle:
                    handle.pin_phase(phase)
                    atedm.seconds.append(denoise(unet, inputs, settings.steps, device))
                    atedm.label = atedm_label([r.phase for r in handle.stats()])
    finally:
        progress.close()
    return DemoResult(dense, atedm, picture_path, estimate, build_seconds)


def _warm_up_estimate(settings: DemoSettings, unet, cfg: dict, phase: str | None, order: list[str],
                      dense: Variant, atedm: Variant, echo: Callable[[str], None]) -> float:
    """Warm up (first-call set-up, kernel compilation), time one step of each at the warm-up size and scale it by
    the MACs ratio into an estimate of the whole timed part, in seconds."""
    device = settings.device
    warm = unet_inputs(unet, CFG_BATCH, settings.warmup_size, settings.warmup_size, seed=settings.seed)
    denoise(unet, warm, 1, device)
    with apply(unet, settings.config) as handle:  # one step: the phase of the timed runs' first step
        handle.pin_phase(phase)
        denoise(unet, warm, 1, device)
        warm_atedm = denoise(unet, warm, 1, device)
    warm_dense = denoise(unet, warm, 1, device)
    scale_dense = dense.macs_per_step / _macs(cfg, settings.warmup_size, None, 1)
    scale_atedm = atedm.macs_per_step / _macs(cfg, settings.warmup_size, settings.config, 1)
    est_dense, est_atedm = warm_dense * scale_dense, warm_atedm * scale_atedm
    estimate = settings.steps * sum(est_dense if v == "dense" else est_atedm for v in order)
    echo(f"[speed] warm-up step at {settings.warmup_size}x{settings.warmup_size} px: dense {warm_dense:.2f} s, "
         f"AT-EDM {warm_atedm:.2f} s; estimate at {settings.size}x{settings.size} px (scaled by MACs): dense "
         f"~{est_dense:.1f} s per step, AT-EDM ~{est_atedm:.1f} s per step, about {_minutes(estimate)} in all")
    return estimate


def speed_table(result: DemoResult) -> str:
    """The timings: MACs per step, time per step, total time of all runs, speed-up per step."""
    runs, steps = len(result.dense.seconds), result.dense.steps
    width = max(len(v.label) for v in (result.dense, result.atedm)) + 2
    total = f"total ({runs} run{'s' * (runs > 1)} x {steps} step{'s' * (steps > 1)})"
    lines = [f"{'':{width}}{'MACs per step':>15}{'time per step':>15}{total:>28}{'speed-up':>10}"]
    for v in (result.dense, result.atedm):
        lines.append(f"{v.label:{width}}{v.macs_per_step / 1e9:>13.1f} G{v.per_step:>13.2f} s{v.total:>26.1f} s"
                     f"{result.dense.per_step / v.per_step:>9.2f}x")
    each = "; ".join(f"{name} " + ", ".join(f"{s:.1f}" for s in v.seconds) + " s"
                     for name, v in (("dense", result.dense), ("AT-EDM", result.atedm)))
    lines.append(f"each run: {each}")
    lines.append(f"MACs saved per step: {1 - result.atedm.macs_per_step / result.dense.macs_per_step:.1%}")
    return "\n".join(lines)
