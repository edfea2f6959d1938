"""Multiply-accumulate (MAC) counts of a diffusion U-Net forward, dense or under AT-EDM.

What is counted, per U-Net call (one denoising step of a classifier-free-guidance batch ``B``; SD-XL's paper
figures use ``B = 2``), in multiply-accumulates, exactly as the paper's "TFLOPs" are counted:

* ``nn.Linear`` on ``T`` rows: ``T * in_features * out_features`` (bias adds are not MACs);
* ``nn.Conv2d``: ``numel(out) * in_channels / groups * kh * kw`` (``conv_in``/``conv_out``, resnets, samplers);
* both attention matmuls of every ``Attention`` module, with ``Cq``/``Cv`` the widths of ``to_q``/``to_v``
  (``heads * head_dim``), ``N`` query tokens and ``M`` key tokens:
  ``q k^T``: ``B * N * M * Cq``, ``P v``: ``B * N * M * Cv``; so self-attention is ``2 * B * N^2 * C`` and
  cross-attention ``2 * B * N * L * C`` with ``L = 77`` text tokens.

Not counted (as in the paper, which counts matrix products only): norms, activations, softmax, residual adds,
interpolation, and AT-EDM's own bookkeeping: G-WPR (``num_iters * B * N^2`` MACs of matrix-vector products, about
3.4e8 per 4096-token block at 10 iterations, under 1e-3 of a step in all), top-k, similarity sources, gather and
recovery; likewise tomesd's matching. The fused kernel's second pass that recomputes ``q k^T`` for the map is an
implementation cost (the ops' own work, timed by the benchmarks), not part of the model's count.

How: one forward of the model on the ``meta`` device (shapes only, no memory, about a second for SD-XL) with
forward hooks on every ``nn.Linear``, ``nn.Conv2d`` and ``Attention`` module; a model on another device is counted
on a ``meta`` twin built from its config (or, ``on_meta=False``, with a real forward where it is: a small CPU
model). Under an :class:`~atedm_kernels.sdxl.AtEdmConfig`, AT-EDM is applied with the reference backend (every op
has a meta implementation), and each block's ``active`` flag is pinned to what the phase prescribes
(``handle.pin_phase``), so the hooks see the token counts the pruning really produces: in a pruned block, ``proj_in``
and the first layer (``attn1``, ``attn2``, ``ff``) run on ``N`` tokens, layers ``2..L`` and ``proj_out`` on
``K = config.kept_tokens(N)``.
Schedule phases: ``"normal"`` (every block prunes, except the second level under AT-EDM-dagger),
``"prune_less"`` (DSAP's early steps: the prune-less blocks run dense) and ``"average"``:
``(s * prune_less + (num_steps - s) * normal) / num_steps`` with ``s = config.prune_less_count(num_steps)`` (15 of
50 with the default ``prune_less_fraction=0.3``).

Reconciliation with the paper (SD-XL base, 1024x1024, ``B = 2``; ``python -m atedm_kernels.tools.flops``):

===============================  ============  ========================  ==========
                                 this count    paper's THOP convention   paper
===============================  ============  ========================  ==========
dense                            6.761 T       6.729 T                   6.7 T
AT-EDM, normal step              4.042 T       4.026 T                   4.1 T
AT-EDM, prune-less step (F-L)    4.974 T       4.952 T
AT-EDM, mean of 50 steps         4.321 T       4.304 T
AT-EDM-dagger, normal step       4.430 T       4.412 T
===============================  ============  ========================  ==========

The paper (supplementary A.5) counts with THOP, which hooks ``nn.Linear``/``nn.Conv2d`` modules (same MAC
conventions as here) but misses the attention matmuls, done functionally; its calibration block adds
``F_cali = 4 * B * N_a * (HW)^2 * C`` per attention block, with ``B`` the images per prompt and the 4 = 2 (the
CFG pair) x 2 (the two matmuls): that is exactly the self-attention term ``2 * B_cfg * N^2 * C`` per layer here.
Cross-attention matmuls (``2 * B * N * 77 * C``, 0.032 T dense) are missed by THOP and not calibrated, so the
paper's convention is this count minus cross-attention (``MacsReport.paper_convention``). Dense then agrees to
0.4%. For AT-EDM the paper's 4.1 T is 1.8% above its own convention's 4.026 T (within the 3% the tests allow);
the paper rounds to one decimal, and its other figures are no tighter: it says pruning before the first layer's
feed-forward "reduces the cost from 4.1 to 4.0 TFLOPs", but the first-layer feed-forwards of SD-XL's 11 pruned
blocks cost 0.44 T dense, so pruning them at 63% saves 0.28 T, not 0.1 T. Keeping ``proj_out`` on all ``N``
tokens (recovery before it) would add 0.023 T, not enough to explain the gap either.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from .._validation import check_bool, check_choice, check_int

PHASES = ("normal", "prune_less", "average")
TEXT_TOKENS = 77  # L: CLIP's padded prompt length, the key length of every cross-attention
VAE_SCALE = 8  # pixels per latent element
KINDS = ("linear", "conv", "self_attention", "cross_attention")
LinearKind = tuple[int, int, int, bool]  # an nn.Linear call: (rows, in_features, out_features, has_bias)
# Module classes whose MACs are reported as one row; anything else is grouped under its top-level child
# (conv_in, time_embedding, add_embedding, conv_out, ...).
UNIT_CLASSES = ("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D")


@dataclass(frozen=True)
class MacsReport:
    """MACs of one U-Net call.

    Attributes:
        total: all counted MACs (int; the ``"average"`` phase is rounded to the nearest MAC).
        blocks: MACs per unit, keyed by module path: each attention block ("down_blocks.1.attentions.0"), resnet
            ("down_blocks.0.resnets.1"), sampler ("up_blocks.0.upsamplers.0"), and top-level module ("conv_in",
            "time_embedding", ...). Sums to ``total``.
        kinds: MACs per kind: "linear", "conv", "self_attention", "cross_attention". Sums to ``total``.
        tokens: for each attention block that pruned, ``(N, K)`` (for "average": those of the normal phase).
        label: what was counted (model size, resolution, batch, method, phase).
        linears: calls per ``nn.Linear`` kind ``(rows, in_features, out_features, has_bias)`` (for "average": the
            weighted mean, a float). ``sum(calls * rows * in * out)`` is ``kinds["linear"]`` (to a MAC for
            "average"); what ``benchmarks/benchmark_pruned_linears.py`` times kind by kind.
    """

    total: int
    blocks: dict[str, int]
    kinds: dict[str, int]
    tokens: dict[str, tuple[int, int]] = field(default_factory=dict)
    label: str = ""
    linears: dict[LinearKind, float] = field(default_factory=dict)

    @property
    def paper_convention(self) -> int:
        """THOP plus the paper's calibration block (A.5): everything but the cross-attention matmuls."""
        return self.total - self.kinds["cross_attention"]

    def groups(self) -> dict[str, int]:
        """MACs per kind of unit: "attention blocks", "resnets", "samplers", "other"."""
        out = dict.fromkeys(("attention blocks", "resnets", "samplers", "other"), 0)
        for name, macs in self.blocks.items():
            out[_group_of(name)] += macs
        return out

    def table(self) -> str:
        """A fixed-width table: one row per unit (MACs in G, share of the total, N->K where pruned), then sums."""
        lines = [self.label] if self.label else []
        header = f"{'module':<34}{'GMACs':>12}{'share':>8}" + ("  tokens N->K" if self.tokens else "")  # dense: none
        lines += [header, "-" * len(header)]
        for name, macs in self.blocks.items():
            tokens = f"  {self.tokens[name][0]}->{self.tokens[name][1]}" if name in self.tokens else ""
            lines.append(f"{name:<34}{macs / 1e9:>12.2f}{100 * macs / self.total:>7.1f}%{tokens}")
        lines.append("-" * len(header))
        for name, macs in [*self.groups().items(), *self.kinds.items()]:
            lines.append(f"{name:<34}{macs / 1e9:>12.2f}{100 * macs / self.total:>7.1f}%")
        lines.append(f"{'total':<34}{self.total / 1e9:>12.2f}  ({self.total / 1e12:.3f} T)")
        lines.append(f"{'paper convention (no cross-attn)':<34}{self.paper_convention / 1e9:>12.2f}")
        return "\n".join(lines)


def _group_of(name: str) -> str:
    if ".attentions." in name:
        return "attention blocks"
    if ".resnets." in name:
        return "resnets"
    if "samplers." in name:
        return "samplers"
    return "other"


def _unit_names(model: nn.Module) -> dict[nn.Module, str]:
    """Each submodule -> the path of the unit its MACs are reported under (the outermost enclosing unit, else the
    top-level child)."""
    units: dict[nn.Module, str] = {}
    current: list[str] = []  # unit paths enclosing the current module, outermost first
    for name, module in model.named_modules():
        while current and not name.startswith(current[-1] + "."):
            current.pop()
        if any(cls.__name__ in UNIT_CLASSES for cls in type(module).__mro__):
            current.append(name)
        if name:
            units[module] = current[0] if current else name.split(".")[0]
    return units


def _check_size(height, width, batch) -> None:
    for name, value in (("height", height), ("width", width)):
        check_int(name, value, VAE_SCALE)
        if value % VAE_SCALE:
            raise ValueError(f"{name} must be a multiple of {VAE_SCALE} pixels (the VAE's scale), got {value}")
    check_int("batch", batch, 1)


def _step_inputs(unet: nn.Module, batch: int, height: int, width: int, timestep=999.0) -> dict:
    """Keyword inputs of one U-Net call, zero tensors on the model's device (on meta: shapes only)."""
    config = unet.config
    param = next(unet.parameters())

    def empty(*shape):
        return torch.zeros(*shape, device=param.device, dtype=param.dtype)

    inputs = {
        "sample": empty(batch, config.in_channels, height // VAE_SCALE, width // VAE_SCALE),
        "timestep": timestep,  # default a host float: AT-EDM's step counter reads it without a device sync
        "encoder_hidden_states": empty(batch, TEXT_TOKENS, config.cross_attention_dim),
    }
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": empty(batch, text_dim), "time_ids": empty(batch, 6)}
    return inputs


class MacCounter:
    """Counts the MACs of every forward of ``unet`` made while it is entered, patches (tomesd's, DeepCache's,
    T-GATE's, the pruning layers') included: ``with MacCounter(unet) as counter: <calls>``, then
    ``counter.report(label)`` sums them. An ``Attention`` whose output a patch reuses from a cache, running neither
    projection, counts 0; attention matmuls are counted from the rows its projections really see (B*N queries into
    ``to_q``, B*M keys into ``to_k``), so methods that shrink the tokens inside the processor (SiTo) or before the
    module (tomesd) count right."""

    def __init__(self, unet: nn.Module) -> None:
        from diffusers.models.attention_processor import Attention

        self.unet = unet
        self._attention_class = Attention
        self._units = _unit_names(unet)
        self.blocks: dict[str, int] = defaultdict(int)
        self.kinds = dict.fromkeys(KINDS, 0)
        self.linears: dict[LinearKind, int] = defaultdict(int)  # calls per kind
        self._projections = {}  # to_q / to_k module -> (its Attention, "q" or "k")
        self._rows_seen: dict[nn.Module, dict[str, int]] = {}
        self._hooks = []

    def _add(self, module: nn.Module, kind: str, macs: int) -> None:
        self.blocks[self._units[module]] += macs
        self.kinds[kind] += macs

    def _on_linear(self, module: nn.Linear, args, out: torch.Tensor) -> None:
        rows = args[0].numel() // module.in_features  # [..., in] -> T rows
        self._add(module, "linear", rows * module.in_features * module.out_features)
        self.linears[rows, module.in_features, module.out_features, module.bias is not None] += 1
        if module in self._projections:
            attention, role = self._projections[module]
            self._rows_seen[attention][role] = rows

    def _on_conv(self, module: nn.Conv2d, args, out: torch.Tensor) -> None:
        kh, kw = module.kernel_size
        self._add(module, "conv", out.numel() * module.in_channels // module.groups * kh * kw)

    def _on_attention_start(self, module, args, kwargs) -> None:
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)  # [B, M, C'] or None
        hidden = args[0] if args else kwargs["hidden_states"]  # [B, N, C] (or [B, C, H, W])
        kind = "self_attention" if context is None else "cross_attention"
        self._rows_seen[module] = {"batch": hidden.shape[0], "kind": kind}

    def _on_attention_end(self, module, args, out) -> None:
        seen = self._rows_seen.pop(module)
        if "q" not in seen and "k" not in seen and not getattr(module, "fused_projections", False):
            return  # its output came from a cache (T-GATE's reuse): no projection, no matmul ran
        if "q" not in seen or "k" not in seen:
            raise ValueError(
                "unet runs an attention without its to_q/to_k projections (fused QKV?): its matmuls cannot be "
                "counted; call unet.unfuse_qkv_projections() first"
            )
        keys = seen["k"] // seen["batch"]  # per batch element: every query meets the M keys of its own element
        width_qk, width_v = module.to_q.out_features, module.to_v.out_features
        self._add(module, seen["kind"], seen["q"] * keys * (width_qk + width_v))  # q k^T + P v

    def __enter__(self) -> "MacCounter":
        for module in self._units:
            if isinstance(module, nn.Linear):
                self._hooks.append(module.register_forward_hook(self._on_linear))
            elif isinstance(module, nn.Conv2d):
                self._hooks.append(module.register_forward_hook(self._on_conv))
            elif isinstance(module, self._attention_class):
                self._projections[module.to_q], self._projections[module.to_k] = (module, "q"), (module, "k")
                self._hooks.append(module.register_forward_pre_hook(self._on_attention_start, with_kwargs=True))
                self._hooks.append(module.register_forward_hook(self._on_attention_end))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def report(self, label: str = "") -> MacsReport:
        """Everything counted so far, as one report."""
        return MacsReport(sum(self.kinds.values()), dict(self.blocks), dict(self.kinds), label=label,
                          linears=dict(self.linears))


def count_forward_macs(unet: nn.Module, height: int, width: int, batch: int = 2, label: str = "",
                       timestep=999.0) -> MacsReport:
    """MACs of one forward of ``unet`` exactly as it stands (see :class:`MacCounter`).

    The forward runs on the model's own device, so pass a ``meta`` model unless it is small. Zero-filled inputs
    (random values do not change a MAC count); ``timestep`` is the call's timestep argument (a schedule entry for
    methods that follow the run's steps).
    """
    _check_size(height, width, batch)
    inputs = _step_inputs(unet, batch, height, width, timestep)
    with MacCounter(unet) as counter, torch.no_grad():
        # sample and timestep positional, as pipelines pass them (tomesd's hook needs it)
        unet(inputs.pop("sample"), inputs.pop("timestep"), **inputs)
    return counter.report(label)


def _meta_twin(unet: nn.Module) -> nn.Module:
    """``unet`` itself if it lives on the meta device, else a fresh meta model built from its config."""
    if next(unet.parameters()).device.type == "meta":
        return unet
    with torch.device("meta"):
        return type(unet).from_config(unet.config).eval()


def _count_phase(unet: nn.Module, height: int, width: int, batch: int, config, phase: str, label: str) -> MacsReport:
    """One pruned U-Net call (AT-EDM or SiTo, by ``config``'s type) with every pruning unit forced to what
    ``phase`` prescribes."""
    from .methods import accelerate

    handle = accelerate(unet, dataclasses.replace(config, backend="reference"))
    handle.pin_phase(phase)
    try:
        report = count_forward_macs(unet, height, width, batch, label)
        tokens = {u.name: u.last_tokens for u in handle.units if u.active and u.last_tokens is not None}
    finally:
        handle.remove()
    return dataclasses.replace(report, tokens=tokens)


def _weighted(parts: list[tuple[float, MacsReport]], label: str) -> MacsReport:
    """The weighted mean of reports (weights sum to 1), rounded to whole MACs."""
    blocks = {name: round(sum(w * r.blocks[name] for w, r in parts)) for name in parts[0][1].blocks}
    kinds = {kind: round(sum(w * r.kinds[kind] for w, r in parts)) for kind in KINDS}
    linears: dict[LinearKind, float] = defaultdict(float)
    for w, r in parts:
        for kind, calls in r.linears.items():
            linears[kind] += w * calls
    return MacsReport(sum(kinds.values()), blocks, kinds, dict(parts[-1][1].tokens), label, dict(linears))


def count_unet_macs(
    unet: nn.Module,
    height: int,
    width: int,
    batch: int = 2,
    config=None,
    phase: str = "normal",
    num_steps: int = 50,
    on_meta: bool = True,
) -> MacsReport:
    """MACs of one U-Net step at ``height x width`` pixels, dense (``config=None``) or under AT-EDM.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (or a pipeline with ``.unet``) without AT-EDM applied (with
            ``on_meta``, a model off the meta device is replaced by a meta twin built from its config).
        height, width: image size in pixels (multiples of 8; the latent is ``height/8 x width/8``).
        batch: U-Net batch; 2 is one image with classifier-free guidance, how the paper counts.
        config: an ``AtEdmConfig`` or a ``SiToConfig``, or None for the dense U-Net.
        phase: "normal", "prune_less" (DSAP's early steps) or "average" (the mean step of a
            ``num_steps`` run). Ignored for the dense U-Net.
        num_steps: denoising steps of the run "average" describes.
        on_meta: count on the meta device (default: no memory, no arithmetic; the way to count a full-size model).
            False counts with a real forward of ``unet`` where it is: faster for a small CPU model, since a meta
            forward spends about a millisecond of Python shape logic per op.

    Returns:
        a :class:`MacsReport`; ``report.total`` is the MAC count (SD-XL, 1024 px, batch 2: 6.76e12 dense,
        4.04e12 AT-EDM normal).
    """
    from .methods import method_of

    _check_size(height, width, batch)
    check_choice("phase", phase, PHASES)
    check_int("num_steps", num_steps, 1)
    check_bool("on_meta", on_meta)
    method = method_of(config)  # TypeError for anything but an AtEdmConfig, a SiToConfig or None
    unet = getattr(unet, "unet", unet)
    if not isinstance(unet, nn.Module) or not hasattr(unet, "down_blocks"):
        raise ValueError(f"unet must be a diffusers UNet2DConditionModel or a pipeline with .unet, got {type(unet)}")
    if getattr(unet, "_atedm_handle", None) is not None:
        raise ValueError("unet already has token pruning applied: pass the plain U-Net and the config as config=")

    if on_meta:
        unet = _meta_twin(unet)
    label = f"{type(unet).__name__} {height}x{width}, batch {batch}"
    if method == "dense":
        return count_forward_macs(unet, height, width, batch, f"{label}, dense")
    if method == "atedm":
        label += f", AT-EDM keep {config.keep_ratio}{' dagger' if config.skip_second_level else ''}"
    else:
        label += f", SiTo prune {config.prune_ratio}"
    if phase != "average":
        return _count_phase(unet, height, width, batch, config, phase, f"{label}, {phase} step")
    early = config.prune_less_count(num_steps)
    parts = [(early / num_steps, _count_phase(unet, height, width, batch, config, "prune_less", ""))] if early else []
    if early < num_steps:
        parts.append(((num_steps - early) / num_steps, _count_phase(unet, height, width, batch, config, "normal", "")))
    return _weighted(parts, f"{label}, mean of {num_steps} steps ({early} prune-less)")


def count_run_macs(unet: nn.Module, name: str, height: int, width: int, batch: int = 2,
                   on_meta: bool = True) -> tuple[int, list[dict]]:
    """Mean MACs per step of a peer method's whole run (``name``: "deepcache", "tgate" or "atedm+deepcache", at
    the authors' settings and step counts of :mod:`atedm_kernels.tools.peers`) and its calls.

    One call of each kind of step is counted, in step order on one run (so caches are filled as in the run), and
    weighted by how many of the run's steps are of its kind. ``batch`` is the CFG batch; T-GATE's calls after its
    gate step take half of it. Returns ``(mean, calls)`` with ``calls`` a list of ``{"step", "weight", "batch",
    "macs"}``.
    """
    from .peers import PeerRun

    _check_size(height, width, batch)
    unet = getattr(unet, "unet", unet)
    if on_meta:
        unet = _meta_twin(unet)
    calls = []
    with PeerRun(unet, name, backend="reference") as run:
        for call in run.calls():
            run.prepare(call.step)
            call_batch = batch // 2 if call.half_batch else batch
            report = count_forward_macs(unet, height, width, call_batch, timestep=run.timestep(call.step))
            calls.append({"step": call.step, "weight": call.weight, "batch": call_batch, "macs": report.total})
    return round(sum(c["weight"] * c["macs"] for c in calls)), calls


def main() -> None:
    """Print the SD-XL base counts at 1024x1024, batch 2 (dense, AT-EDM phases, AT-EDM-dagger)."""
    from ..sdxl import AtEdmConfig
    from .models import build_sdxl_unet

    unet = build_sdxl_unet("full", device="meta")
    dense = count_unet_macs(unet, 1024, 1024)
    print(dense.table(), end="\n\n")
    for config in (AtEdmConfig(), AtEdmConfig(skip_second_level=True)):
        for phase in PHASES:
            report = count_unet_macs(unet, 1024, 1024, config=config, phase=phase)
            print(f"{report.label}: {report.total / 1e12:.4f} T ({report.total}), "
                  f"{100 * (1 - report.total / dense.total):.1f}% less than dense; "
                  f"paper convention {report.paper_convention / 1e12:.4f} T")
    print(f"dense: {dense.total / 1e12:.4f} T ({dense.total}); paper convention {dense.paper_convention / 1e12:.4f} T")


if __name__ == "__main__":
    main()
