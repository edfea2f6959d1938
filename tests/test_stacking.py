"""AT-EDM stacked on DeepCache (and not on T-GATE), and the peers' run accounting, on a tiny SD-XL pipeline (CPU).

Needs the ``peers`` extra (DeepCache 0.1.1, tgate 1.0.0); each test skips without the package it uses.
"""

import math

import pytest
import torch

from atedm_kernels.tools import flops, peers
from atedm_kernels.sdxl import AtEdmConfig, apply
from atedm_kernels.tools.models import build_tiny_pipeline

DeepCache = pytest.importorskip("DeepCache", reason="DeepCache is not installed (pip install -e '.[peers]')")

SIZE = 64  # pixels: an 8x8 latent, 16 tokens at the A2 level, 4 at the multi-layer level
STEPS = 7  # DeepCache (interval 3) runs steps 0, 3 and 6 in full; DSAP's prune-less phase is steps 0-2


@pytest.fixture(scope="module")
def pipe():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps=STEPS):
    """Latents of one seeded generation (no VAE decode)."""
    return pipe("a red cube", num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                height=SIZE, width=SIZE, output_type="latent").images  # [1, 4, 8, 8]


def enable_deepcache(pipe):
    helper = DeepCache.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(**peers.DEEPCACHE)
    helper.enable()
    return helper


def full_steps(steps=STEPS):
    return [step for step in range(steps) if peers.deepcache_full(step)]


@pytest.mark.parametrize("atedm_first", [True, False], ids=["atedm-then-deepcache", "deepcache-then-atedm"])
def test_keep_ratio_1_on_deepcache_equals_deepcache_alone(pipe, atedm_first):
    dense = generate(pipe)
    helper = enable_deepcache(pipe)
    try:
        cached = generate(pipe)
    finally:
        helper.disable()
    assert not torch.allclose(cached, dense, atol=1e-3)  # DeepCache really skipped work
    handle = apply(pipe, AtEdmConfig(keep_ratio=1.0)) if atedm_first else None
    helper = enable_deepcache(pipe)
    handle = handle or apply(pipe, AtEdmConfig(keep_ratio=1.0))
    try:
        stacked = generate(pipe)
        records = handle.stats()
    finally:
        handle.remove()
        helper.disable()
    torch.testing.assert_close(stacked, cached, rtol=1e-4, atol=1e-4)
    pruned = [r.step for r in records if any(k is not None for k in r.kept.values())]
    assert pruned == full_steps()  # the pruning path ran (keeping every token) in DeepCache's full steps only
    assert all(r.kept[n] == r.tokens[n] for r in records for n in r.tokens)
    assert torch.equal(generate(pipe), dense)  # both removed: the plain pipeline again


@pytest.mark.parametrize("atedm_first", [True, False], ids=["atedm-then-deepcache", "deepcache-then-atedm"])
def test_dsap_phases_and_pruning_per_step_under_deepcache(pipe, atedm_first):
    config = AtEdmConfig()  # keep 0.37, prune-less for the first ceil(0.3 * 7) = 3 steps
    handle = apply(pipe, config) if atedm_first else None
    helper = enable_deepcache(pipe)
    handle = handle or apply(pipe, config)
    selections = []  # (step, block name) of every token selection: the spy
    handle.observe(lambda block, scores, keep_idx: selections.append((handle.step, block.name)))
    try:
        generate(pipe)
        records = handle.stats()
        expected = {step: {b.name for b in handle.blocks if handle.prunes(b, records[step].phase)}
                    for step in full_steps()}
    finally:
        handle.remove()
        helper.disable()
    early = config.prune_less_count(STEPS)
    assert [r.step for r in records] == list(range(STEPS))  # the clock counted every call, cached ones too
    assert [r.phase for r in records] == ["prune_less"] * early + ["normal"] * (STEPS - early)
    assert sorted({step for step, _ in selections}) == full_steps()  # cached steps never reach a pruning layer
    for step, blocks in expected.items():
        assert {name for s, name in selections if s == step} == blocks  # F-L blocks dense in prune-less steps
        assert all(records[step].kept[name] == config.kept_tokens(records[step].tokens[name]) for name in blocks)
    assert expected[0] != expected[STEPS - 1]  # both phases were among the full steps


@pytest.mark.parametrize("name", list(peers.PACKAGES))
def test_peer_run_mean_is_the_mean_of_every_step(name):
    """The weighted calls of ``PeerRun`` (one per kind of step) give the same mean as counting every step of the
    authors' run call by call, on the tiny U-Net with real forwards; and the run leaves the U-Net as it was."""
    if name == "tgate":
        pytest.importorskip("tgate", reason="tgate is not installed (pip install -e '.[peers]')")
    from atedm_kernels.tools.models import build_sdxl_unet

    unet = build_sdxl_unet("tiny", device="cpu")
    before = flops.count_forward_macs(unet, SIZE, SIZE, 2)
    mean, calls = flops.count_run_macs(unet, name, SIZE, SIZE, 2, on_meta=False)
    with peers.PeerRun(unet, name, backend="reference") as run:
        every = []
        for step in range(run.num_steps):
            run.prepare(step)
            half = name == "tgate" and step >= peers.TGATE["gate_step"]
            report = flops.count_forward_macs(unet, SIZE, SIZE, 1 if half else 2, timestep=run.timestep(step))
            every.append(report.total)
    assert mean == round(sum(every) / len(every))
    assert len(set(every)) > 1 and math.isclose(sum(c["weight"] for c in calls), 1.0)
    assert flops.count_forward_macs(unet, SIZE, SIZE, 2) == before


def test_atedm_on_tgate_stops_with_one_clear_line(pipe):
    """T-GATE's Attention.forward never calls the processor, so AT-EDM gets no map: it must say so, not prune
    silently wrong."""
    tgate = pytest.importorskip("tgate", reason="tgate is not installed (pip install -e '.[peers]')")
    dense = generate(pipe)
    tgate.TgateSDXLLoader(pipe)
    try:
        with apply(pipe, AtEdmConfig()), pytest.raises(ValueError, match="bypasses its processor"):
            pipe.tgate("a red cube", num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="latent",
                       generator=torch.Generator().manual_seed(0), **peers.TGATE)
    finally:
        peers.remove_tgate(pipe.unet)
    assert torch.equal(generate(pipe), dense)


def test_tgate_leaves_its_patch_and_remove_tgate_undoes_it(pipe):
    tgate = pytest.importorskip("tgate", reason="tgate is not installed (pip install -e '.[peers]')")
    dense = generate(pipe)
    try:
        tgate.TgateSDXLLoader(pipe).tgate("a red cube", num_inference_steps=12, height=SIZE, width=SIZE,
                                          output_type="latent", generator=torch.Generator().manual_seed(0),
                                          **peers.TGATE)
        assert not torch.allclose(generate(pipe), dense, atol=1e-3)  # plain calls still reuse its caches
    finally:
        peers.remove_tgate(pipe.unet)
    attentions = [m for m in pipe.unet.modules() if type(m).__name__ == "Attention"]
    assert not any("forward" in vars(m) for m in attentions)  # the processors are called again
    assert torch.equal(generate(pipe), dense)
