"""The demo's pieces: the fast random build and the alternating timed runs (the full-scale code path on the tiny
U-Net's config), the per-step trace on the trained Fashion-MNIST denoiser in U-Net order, and the picture."""

import math

import torch

from atedm_kernels.tools.demo import (
    DemoSettings,
    run,
    run_order,
    speed_table,
    trace_trained,
)
from atedm_kernels.tools.demo_picture import draw_selections
from atedm_kernels.sdxl import AtEdmConfig
from atedm_kernels.tools.models import build_sdxl_unet, unet_config, unet_inputs
from atedm_kernels.sdxl.schedule import attention_blocks
from atedm_kernels.tools.fashion.model import load_denoiser

CPU = torch.device("cpu")


def test_random_build_fills_every_parameter_at_pytorch_default_scale():
    unet = build_sdxl_unet("tiny", CPU, torch.float32, seed=3, fill="pool")
    again = build_sdxl_unet("tiny", CPU, torch.float32, seed=3, fill="pool")
    for (name, p), (_, q) in zip(unet.named_parameters(), again.named_parameters()):
        assert p.device == CPU and torch.isfinite(p).all() and torch.equal(p, q), name
        if p.dim() >= 2:
            fan_in = p[0].numel()
            bound = 1 / math.sqrt(fan_in)
            assert p.abs().max() <= bound * (1 + 1e-6), name
            if p.numel() >= 4096:  # U(-b, b) has std b / sqrt(3)
                assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.1, name
            if p.shape[0] >= 2:
                assert not torch.equal(p[0], p[1]), name  # the tiled pool does not repeat rows
        elif name.endswith("weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert p.abs().max() <= 0.02 and p.abs().max() > 0, name
    out = unet(**unet_inputs(unet, 2, 64, 64)).sample
    assert torch.isfinite(out).all() and out.abs().mean() > 0


def test_runs_alternate_so_load_changes_hit_both():
    assert run_order(1) == ["dense", "atedm"]
    assert run_order(2) == ["dense", "atedm", "atedm", "dense"]
    assert run_order(3).count("dense") == 3


def test_trace_has_every_block_in_unet_order_at_every_step():
    config = AtEdmConfig(prune_less_steps=1)
    trace, dense, pruned = trace_trained(3, config, seed=1, label=1)
    unet = load_denoiser().unet
    expected = [name for name, block, *_ in attention_blocks(unet) if len(block.transformer_blocks) >= 2]
    assert [b.name for b in trace.blocks] == expected  # down, mid, up: not the order of first appearance
    assert trace.phases == ["prune_less", "normal", "normal"]
    recorded = {(s.block, s.step) for s in trace.selections}
    dense_early = {b.name for b in trace.blocks if (b.stage, b.index) == ("down", 0)
                   or (b.stage == "up" and b.index == b.count - 1)}
    assert dense_early and all((name, 0) not in recorded for name in dense_early)
    assert all((b.name, step) in recorded for b in trace.blocks for step in (1, 2))
    for s in trace.selections:
        grid = next(b.grid for b in trace.blocks if b.name == s.block)
        assert s.scores.numel() == grid[0] * grid[1] and int(s.kept.sum()) == config.kept_tokens(s.scores.numel())
    assert dense.shape == pruned.shape == (32, 32) and 0 <= float(dense.min()) and float(dense.max()) <= 1
    assert not torch.equal(dense, pruned)  # AT-EDM pruned in steps 1 and 2


def test_picture_is_written(tmp_path):
    trace, dense, pruned = trace_trained(2, AtEdmConfig(prune_less_steps=1), seed=0, label=0)
    path = draw_selections(trace, tmp_path / "masks.png", model="trained", keep_ratio=0.37,
                           samples=[("dense", dense), ("AT-EDM", pruned)])
    from PIL import Image

    width, height = Image.open(path).size
    assert width > 300 and height > (len(trace.blocks) + 1) * 60  # one row per pruning block, then the samples


def test_full_scale_code_path_on_a_small_config(tmp_path):
    """What `atedm demo` runs on a CPU by default (the full model), on the tiny config: alternating runs, the
    estimate first, labelled times."""
    lines = []
    settings = DemoSettings(
        scale="full", size=96, steps=1, repeats=2, config=AtEdmConfig(), picture_steps=2,  # the CLI's default config
        picture_config=AtEdmConfig(prune_less_steps=1), device=CPU, out=tmp_path,
        warmup_size=64, progress=False, unet_config=unet_config("tiny"),
    )
    result = run(settings, echo=lines.append)
    assert len(result.dense.seconds) == 2 and len(result.atedm.seconds) == 2
    assert result.atedm.label == "AT-EDM normal step" and result.atedm.macs_per_step < result.dense.macs_per_step
    assert result.estimate_seconds > 0 and result.picture.exists()
    # one step per run: timed in DSAP's normal phase (a 1-step run is all prune-less), and the output says so
    assert any("timed in its normal phase" in line for line in lines)
    estimate_line = next(i for i, line in enumerate(lines) if "estimate" in line)
    assert "SD-XL base's full U-Net architecture" in lines[estimate_line - 3]
    table = speed_table(result)
    assert "time per step" in table and "total (2 runs x 1 step)" in table and "speed-up" in table
