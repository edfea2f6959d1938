"""Quality where the attention maps are learnt: every method on the trained Fashion-MNIST denoiser, the same seeds
and classes for all, measured by the yardstick (``atedm quality``).

Sampling: DDIM (eta 0, so a seed and a class fix the sample) over :data:`STEPS` steps of the training schedule,
classifier-free guidance ``eps = eps_u + GUIDANCE * (eps_c - eps_u)`` with the CFG pair in one batch, as SD-XL's
pipelines run it. Sample ``i`` of a run has seed ``seed_offset + i`` (its starting noise) and class ``i % 10``.

Per method: MACs per step (one image's CFG pair, counted over a whole run by
:class:`~atedm_kernels.tools.flops.MacCounter`, divided by the steps: DSAP, DeepCache and T-GATE change the cost step
by step), FID of its samples to the held-out images (the yardstick's features against the committed reference
statistics), class accuracy (the yardstick's prediction against the class asked for), and fidelity to dense: the RMS
pixel distance (images in [-1, 1]) of each sample to the dense sample of the same seed and class, averaged, with its
standard error over samples.

Spread: dense is sampled on :data:`SPREAD_SETS` disjoint seed sets; the standard deviation of their FIDs is what a
FID difference between two methods must exceed to mean something (every method shares the first set's seeds, so
their differences are paired and vary less than that).

The methods (:func:`methods`): dense; AT-EDM (DSAP on, off, reversed: the prune-less phase at the end of the run
instead of the start; dagger; every ``wpr`` variant); the paper's ablations on the same layer (random selection,
padding zeros, interpolation, the pruning layer before the feed-forward); the peers at their SD-XL settings (tomesd,
SiTo, DeepCache, T-GATE, AT-EDM + DeepCache); and a sweep of keep ratios for AT-EDM, random selection and tomesd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import peers
from ..flops import MacCounter
from ...sdxl import AtEdmConfig, SiToConfig
from ..methods import TOMESD_RATIO, TOMESD_SDXL, installed, tomesd_patched
from . import model as fashion_model
from . import yardstick

STEPS = 25  # T-GATE's authors' step count; DeepCache's interval and DSAP's fraction apply to any count
GUIDANCE = 2.0
SPREAD_SETS = 3
KEEP_SWEEP = (0.25, 0.6)  # beside AT-EDM's default 0.37
TOMESD_SWEEP = (0.7,)  # beside the SD-XL setting's 0.5


@dataclass(frozen=True)
class Method:
    """One row: ``kind`` picks how it is installed; ``atedm`` its AT-EDM config; ``dsap`` how AT-EDM's phases
    follow the steps ("on": the config's schedule; "off": every step normal; "reversed": the prune-less steps at
    the end); ``ratio`` tomesd's merge ratio; ``group`` where it sits in the tables; ``keep`` its keep ratio for
    the trade-off plot."""

    name: str
    kind: str
    group: str
    atedm: AtEdmConfig | None = None
    dsap: str = "on"
    ratio: float | None = None
    keep: float | None = None


def methods(sweep: bool = True) -> list[Method]:
    base = AtEdmConfig()
    rows = [
        Method("dense", "dense", "reference"),
        Method("atedm", "atedm", "atedm", base, keep=base.keep_ratio),
        Method("atedm-dsap-off", "atedm", "atedm", base, dsap="off", keep=base.keep_ratio),
        Method("atedm-dsap-reversed", "atedm", "atedm", base, dsap="reversed", keep=base.keep_ratio),
        Method("atedm-dagger", "atedm", "atedm", AtEdmConfig(skip_second_level=True), keep=base.keep_ratio),
        *[Method(f"atedm-wpr-{kind}", "atedm", "atedm", AtEdmConfig(wpr=kind), keep=base.keep_ratio)
          for kind in ("entropy", "hard_clip", "soft_clip", "power")],
        Method("random-selection", "atedm", "ablation", AtEdmConfig(selection="random"), keep=base.keep_ratio),
        Method("recovery-zeros", "atedm", "ablation", AtEdmConfig(recovery="zeros"), keep=base.keep_ratio),
        Method("recovery-interpolate", "atedm", "ablation", AtEdmConfig(recovery="interpolate"),
               keep=base.keep_ratio),
        Method("prune-before-ff", "atedm", "ablation", AtEdmConfig(prune_before_ff=True), keep=base.keep_ratio),
        Method("tomesd", "tomesd", "peer", ratio=TOMESD_RATIO),
        Method("sito", "sito", "peer"),
        Method("deepcache", "deepcache", "peer"),
        Method("tgate", "tgate", "peer"),
        Method("atedm+deepcache", "atedm+deepcache", "peer", base),  # PeerRun applies AtEdmConfig() itself
    ]
    if sweep:
        for keep in KEEP_SWEEP:
            rows.append(Method(f"atedm-keep{keep:g}", "atedm", "sweep", AtEdmConfig(keep_ratio=keep), keep=keep))
            rows.append(Method(f"random-keep{keep:g}", "atedm", "sweep",
                               AtEdmConfig(keep_ratio=keep, selection="random"), keep=keep))
        for ratio in TOMESD_SWEEP:
            rows.append(Method(f"tomesd-{ratio:g}", "tomesd", "sweep", ratio=ratio))
    return rows


def missing_package(method: Method) -> str | None:
    """Why ``method`` cannot run here (its peer package is not importable), else None."""
    if method.kind in peers.PACKAGES:
        return peers.missing(method.kind)
    if method.kind == "tomesd" and importlib.util.find_spec("tomesd") is None:
        return 'tomesd is not importable; pip install "atedm-kernels[cli]"'
    return None


class Installed:
    """``method`` on ``denoiser.unet`` for one sampling run over ``scheduler``'s timesteps; a context manager.
    ``before_step(i)`` runs before step i's call; ``guided(i)`` says whether that call carries the CFG pair."""

    def __init__(self, method: Method, denoiser, scheduler) -> None:
        self.method, self.unet, self.scheduler = method, denoiser.unet, scheduler
        self.handle = None  # AT-EDM's or SiTo's handle, where the method has one
        self.peer: peers.PeerRun | None = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Installed:
        method, unet = self.method, self.unet
        with contextlib.ExitStack() as stack:  # undone at once if installing fails, else kept until __exit__
            if method.kind in ("atedm", "sito"):
                config = method.atedm if method.kind == "atedm" else SiToConfig(seed=0)
                self.handle = stack.enter_context(installed(unet, config))
            if method.kind in peers.PACKAGES:  # DeepCache, T-GATE, AT-EDM on DeepCache, over this run's schedule
                self.peer = stack.enter_context(peers.PeerRun(unet, method.kind, scheduler=self.scheduler))
                self.handle = self.peer.handle
            if method.kind == "tomesd":
                stack.enter_context(tomesd_patched(unet, method.ratio))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def before_step(self, step: int, num_steps: int) -> None:
        if self.method.kind == "atedm" and self.method.dsap == "off":
            self.handle.pin_phase("normal")
        elif self.method.kind == "atedm" and self.method.dsap == "reversed":  # the prune-less steps at the end
            late = step >= num_steps - self.method.atedm.prune_less_count(num_steps)
            self.handle.pin_phase("prune_less" if late else "normal")
        if self.peer is not None:
            self.peer.prepare(step)  # T-GATE's flags for this step

    def guided(self, step: int) -> bool:
        """T-GATE drops classifier-free guidance from its gate step on (the cached cross-attention carries it)."""
        return not (self.method.kind == "tgate" and step >= peers.TGATE["gate_step"])


def sampler(steps: int = STEPS):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(fashion_model.noise_scheduler().config, clip_sample=False)
    scheduler.set_timesteps(steps)
    return scheduler


def start_noise(seeds: list[int]) -> torch.Tensor:
    """``[B, 1, 32, 32]``: sample ``i``'s starting noise from a generator seeded by ``seeds[i]``."""
    return torch.cat([torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.no_grad()
def sample(denoiser, method: Method, labels: torch.Tensor, seeds: list[int], steps: int = STEPS,
           guidance: float = GUIDANCE, observer=None, setup=None) -> torch.Tensor:
    """One sampling run of ``method`` for ``labels`` ``[B]`` from ``seeds``: images ``[B, 1, 32, 32]`` in [-1, 1].
    ``observer(block, scores, keep_idx, step)`` sees every AT-EDM selection; ``setup(installed)`` runs once the
    method is installed (:class:`Installed`; its ``handle`` is AT-EDM's or SiTo's), before the first step."""
    scheduler = sampler(steps)
    x = start_noise(seeds)  # [B, 1, 32, 32]
    null = torch.full_like(labels, fashion_model.NULL_CLASS)
    torch.manual_seed(seeds[0])  # tomesd's random partitions draw from the global generator
    with Installed(method, denoiser, scheduler) as installed:
        if observer is not None and installed.handle is not None:
            handle = installed.handle
            handle.observe(lambda block, scores, keep_idx: observer(block, scores, keep_idx, handle.step))
        if setup is not None:
            setup(installed)
        for step, t in enumerate(scheduler.timesteps):  # t: a view of the schedule, as pipelines pass it
            installed.before_step(step, steps)
            if installed.guided(step):
                eps_u, eps_c = denoiser(torch.cat([x, x]), t, torch.cat([null, labels])).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = denoiser(x, t, labels)
            x = scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1.0, 1.0)


def sample_many(denoiser, method: Method, count: int, seed_offset: int, batch: int, **kwargs) -> torch.Tensor:
    """``count`` samples (seed ``seed_offset + i``, class ``i % 10``) in runs of ``batch``: ``[count, 1, 32, 32]``."""
    out = []
    for start in range(0, count, batch):
        index = list(range(start, min(start + batch, count)))
        labels = torch.tensor([i % fashion_model.NUM_CLASSES for i in index])
        out.append(sample(denoiser, method, labels, [seed_offset + i for i in index], **kwargs))
    return torch.cat(out)


def macs_per_step(denoiser, method: Method, steps: int = STEPS) -> int:
    """MACs of one image's U-Net calls (its CFG pair) per step, averaged over a whole run."""
    with MacCounter(denoiser.unet) as counter:
        sample(denoiser, method, torch.tensor([0]), [0], steps)
    return round(counter.report().total / steps)


def measure(images: torch.Tensor, labels: torch.Tensor, judge, reference, dense: torch.Tensor | None) -> dict:
    features, predicted = yardstick.features_and_predictions(judge, images)
    mean, cov = yardstick.statistics(features)
    row = {"fid": yardstick.frechet_distance(mean, cov, *reference),
           "class_accuracy": (predicted == labels).double().mean().item()}
    if dense is not None:
        distance = (images - dense).flatten(1).square().mean(1).sqrt()  # [N] RMS pixel distance
        row["fidelity_rmse"] = distance.mean().item()
        row["fidelity_rmse_stderr"] = (distance.std() / math.sqrt(len(distance))).item()
        row["fidelity_per_sample"] = [round(d, 6) for d in distance.tolist()]  # for paired comparisons
    return row


def run(count: int, batch: int, sweep: bool = True, names: list[str] | None = None, steps: int = STEPS,
        log=print) -> dict:
    """Every method (or those in ``names``; dense always) on ``count`` samples: the report :mod:`.report` writes."""
    denoiser = fashion_model.load_denoiser()
    judge = yardstick.load_yardstick()
    reference = yardstick.load_reference()
    chosen = [m for m in methods(sweep) if names is None or m.name in names or m.name == "dense"]
    skipped = {m.name: why for m in chosen if (why := missing_package(m))}
    for name, why in skipped.items():
        log(f"  skipping {name}: {why}")
    chosen = [m for m in chosen if m.name not in skipped]
    labels = torch.tensor([i % fashion_model.NUM_CLASSES for i in range(count)])
    report = {"settings": {"samples": count, "steps": steps, "guidance": GUIDANCE, "sampler": "DDIM, eta 0",
                           "seeds": f"0..{count - 1}, class = seed % 10", "spread_sets": SPREAD_SETS,
                           "tomesd": {"ratio": TOMESD_RATIO, **TOMESD_SDXL}, "deepcache": peers.DEEPCACHE,
                           "tgate": peers.TGATE, "torch": torch.__version__,
                           "threads": torch.get_num_threads()},
              "rows": [], "spread": {}, "skipped": skipped}
    samples: dict[str, torch.Tensor] = {}
    for method in chosen:
        start = time.perf_counter()
        images = sample_many(denoiser, method, count, 0, batch, steps=steps)
        samples[method.name] = images
        row = {"method": method.name, "group": method.group, "keep_ratio": method.keep, "tomesd_ratio": method.ratio,
               "dsap": method.dsap if method.kind == "atedm" else None,
               "config": dataclasses.asdict(method.atedm) if method.atedm else None,
               "macs_per_step": macs_per_step(denoiser, method, steps),
               **measure(images, labels, judge, reference, None if method.name == "dense" else samples["dense"]),
               "seconds": round(time.perf_counter() - start, 1)}
        report["rows"].append(row)
        log(f"  {method.name:<22} FID {row['fid']:7.2f}  accuracy {row['class_accuracy']:.3f}  "
            f"fidelity {row.get('fidelity_rmse', 0.0):.4f}  MACs/step {row['macs_per_step'] / 1e6:8.1f} M  "
            f"{row['seconds']:.0f} s")
    dense_fids = [report["rows"][0]["fid"]]
    for k in range(1, SPREAD_SETS):
        images = sample_many(denoiser, methods()[0], count, k * count, batch, steps=steps)
        dense_fids.append(measure(images, labels, judge, reference, None)["fid"])
    report["spread"] = {"dense_fid_per_seed_set": dense_fids,
                        "dense_fid_std": torch.tensor(dense_fids).std().item(),
                        "seed_sets": [f"{k * count}..{(k + 1) * count - 1}" for k in range(SPREAD_SETS)]}
    log(f"  dense FID over {SPREAD_SETS} seed sets: {', '.join(f'{f:.2f}' for f in dense_fids)}")
    dense_macs = report["rows"][0]["macs_per_step"]
    for row in report["rows"]:
        row["macs_vs_dense"] = row["macs_per_step"] / dense_macs
    report["samples"] = samples  # popped by the writer (grids), never written to JSON
    return report


GRID_METHODS = ("dense", "atedm", "atedm-dsap-off", "atedm-dagger", "random-selection", "recovery-zeros",
                "recovery-interpolate", "tomesd", "sito", "deepcache", "tgate", "atedm+deepcache")
MASK_BLOCKS = ("down_blocks.1.attentions.0", "mid_block.attentions.0")  # a 256-token and a 64-token block


def masks_at(denoiser, method: Method, count: int, step: int, steps: int) -> tuple[torch.Tensor, dict[str, list]]:
    """Samples of seeds ``0..count-1`` under ``method`` and the kept-token masks of :data:`MASK_BLOCKS` at
    ``step`` (the conditional half of the CFG batch; white: kept)."""
    from .figures import keep_mask

    masks: dict[str, list] = {}

    def observer(block, scores, keep_idx, at_step) -> None:  # keep_idx [2B, K]: unconditional half first
        if at_step == step and block.name in MASK_BLOCKS:
            tokens = scores.shape[1]
            masks[f"{method.name} {block.name.split('.attentions')[0]} ({tokens})"] = [
                keep_mask(keep_idx[count + i], tokens) for i in range(count)]

    labels = torch.arange(count) % fashion_model.NUM_CLASSES
    images = sample(denoiser, method, labels, list(range(count)), steps, observer=observer)
    return images, masks


def write(report: dict, out: Path, log=print) -> None:
    """``quality_fashion.json``, ``quality_fashion_tradeoff.png``, ``quality_fashion_grid.png`` and
    ``quality_fashion_masks.png`` into ``out``."""
    from . import figures

    out.mkdir(parents=True, exist_ok=True)
    samples = report.pop("samples")
    figures.sample_grid(samples, list(GRID_METHODS), 10, out / "quality_fashion_grid.png")
    figures.tradeoff_plot(report["rows"], report["spread"]["dense_fid_std"], out / "quality_fashion_tradeoff.png")
    denoiser = fashion_model.load_denoiser()
    steps = report["settings"]["steps"]
    step = steps // 2
    pruned, masks = {}, {}
    for method in (m for m in methods(False) if m.name in ("atedm", "random-selection")):
        pruned[method.name], recorded = masks_at(denoiser, method, 10, step, steps)
        masks.update(recorded)
    figures.mask_grid(samples["dense"][:10], pruned, masks, out / "quality_fashion_masks.png",
                      f"seeds 0-9 (class = seed); masks at step {step} of {steps}, white = kept token")
    (out / "quality_fashion.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"wrote {out / 'quality_fashion.json'} and three PNGs beside it")
