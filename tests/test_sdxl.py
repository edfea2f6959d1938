"""The SD-XL layer on the tiny random-weight SD-XL-architecture U-Net (CPU), and at full size on a GPU."""

import pytest
import torch

from atedm_kernels import BACKENDS, BackendUnavailableError
from atedm_kernels.backends import OP_KERNELS
from atedm_kernels.sdxl import AtEdmConfig, apply
from atedm_kernels.tools.models import build_sdxl_unet, build_tiny_pipeline, unet_inputs

PIXELS = 128  # 16x16 latent: 64 tokens at the A2 level, 16 at the multi-layer level


@pytest.fixture(scope="module")
def unet():
    return build_sdxl_unet("tiny", seed=1)


def run(unet, inputs, **overrides):
    with torch.no_grad():
        return unet(**{**inputs, **overrides}).sample


def test_keep_ratio_one_equals_dense(unet):
    inputs = unet_inputs(unet, 2, PIXELS, PIXELS, seed=2)
    dense = run(unet, inputs)
    with apply(unet, AtEdmConfig(keep_ratio=1.0, prune_less_steps=0)) as handle:
        pruned = run(unet, inputs)
        assert all(kept is not None for kept in handle.stats()[0].kept.values())  # every block really pruned
    torch.testing.assert_close(pruned, dense, rtol=1e-5, atol=1e-5)


def test_remove_restores_the_unet_exactly(unet):
    inputs = unet_inputs(unet, 2, PIXELS, PIXELS, seed=3)
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    dense = run(unet, inputs)
    handle = apply(unet, AtEdmConfig(prune_less_steps=0))
    assert not torch.equal(run(unet, inputs), dense)
    handle.remove()
    assert torch.equal(run(unet, inputs), dense)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert not unet._forward_pre_hooks and not any(m._forward_hooks for m in unet.modules())
    assert not hasattr(unet, "_atedm_handle")


def test_default_config_changes_output_keeps_it_finite(unet):
    inputs = unet_inputs(unet, 2, PIXELS, PIXELS, seed=4)
    dense = run(unet, inputs)
    with apply(unet, AtEdmConfig(prune_less_steps=0)):
        pruned = run(unet, inputs)
    assert pruned.shape == dense.shape and torch.isfinite(pruned).all()
    relative = (pruned - dense).norm() / dense.norm()
    assert 1e-3 < relative < 1.0, relative


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_masks_are_per_sample(unet, batch):
    """Each batch element is pruned on its own map: a sample's output does not depend on its batch mates."""
    inputs = unet_inputs(unet, batch, PIXELS, PIXELS, seed=5)
    with apply(unet, AtEdmConfig(prune_less_steps=0)):
        together = run(unet, inputs)
        for b in range(batch):
            alone = run(
                unet,
                inputs,
                sample=inputs["sample"][b : b + 1],
                encoder_hidden_states=inputs["encoder_hidden_states"][b : b + 1],
                added_cond_kwargs={k: v[b : b + 1] for k, v in inputs["added_cond_kwargs"].items()},
            )
            torch.testing.assert_close(together[b : b + 1], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("height,width", [(96, 128), (136, 96)])
def test_non_square_latents(unet, height, width):
    inputs = unet_inputs(unet, 2, height, width, seed=6)
    dense = run(unet, inputs)
    with apply(unet, AtEdmConfig(prune_less_steps=0)) as handle:
        pruned = run(unet, inputs)
        record = handle.stats()[0]
    assert pruned.shape == dense.shape and torch.isfinite(pruned).all()
    tokens_a2 = -(-height // 16) * -(-width // 16)  # the A2 level sits one stride-2 downsample below the latent
    assert record.tokens["down_blocks.1.attentions.0"] == tokens_a2
    assert record.kept["down_blocks.1.attentions.0"] == max(1, round(0.37 * tokens_a2))


def test_schedule_over_a_50_step_scheduler_loop(unet):
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(50)
    inputs = unet_inputs(unet, 2, 64, 64, seed=7)  # 8x8 latent: cheap steps
    config = AtEdmConfig()
    with apply(unet, config) as handle:
        for _ in range(2):  # a second generation resets the count when the timestep rises again
            latents = inputs["sample"]
            for t in scheduler.timesteps:
                noise = run(unet, inputs, sample=scheduler.scale_model_input(latents, t), timestep=t)
                latents = scheduler.step(noise, t, latents).prev_sample
            scheduler.set_timesteps(50)
        records = handle.stats()
    assert [r.step for r in records] == list(range(50))
    first_down = {"down_blocks.1.attentions.0", "down_blocks.2.attentions.0"}
    last_up = {"up_blocks.0.attentions.2", "up_blocks.1.attentions.2"}
    for record in records:
        dense = {name for name, kept in record.kept.items() if kept is None}
        if record.step < 15:
            assert record.phase == "prune_less" and dense == first_down | last_up
        else:
            assert record.phase == "normal" and dense == set()
        for name, n in record.tokens.items():
            assert record.kept[name] == max(1, round(0.37 * n))
    assert len(records[0].kept) == 11  # 2 + 2 down, 1 mid, 3 + 3 up


def test_reset_and_dagger(unet):
    inputs = unet_inputs(unet, 1, PIXELS, PIXELS, seed=8)
    with apply(unet, AtEdmConfig(skip_second_level=True, prune_less_blocks="L-F")) as handle:
        for t in (900.0, 800.0, 800.0, 700.0):
            run(unet, inputs, timestep=torch.tensor(t))
        assert [r.step for r in handle.stats()] == [0, 1, 2]
        prune_less = handle.stats()[0]
        assert prune_less.kept["down_blocks.1.attentions.0"] is None  # level 2: dagger never prunes it
        assert prune_less.kept["down_blocks.2.attentions.1"] is None  # "L-F": last block of each down stage
        assert prune_less.kept["up_blocks.0.attentions.0"] is None  # ... and the first of each up stage
        assert prune_less.kept["down_blocks.2.attentions.0"] == max(1, round(0.37 * 16))
        handle.reset()
        run(unet, inputs, timestep=torch.tensor(500.0))
        assert [r.step for r in handle.stats()] == [0]


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("keep_ratio", 0.0, ValueError),
        ("keep_ratio", 1.5, ValueError),
        ("keep_ratio", "0.5", TypeError),
        ("num_iters", 0, ValueError),
        ("num_iters", True, TypeError),
        ("prune_less_steps", -1, ValueError),
        ("prune_less_blocks", "F-X", ValueError),
        ("skip_second_level", "yes", TypeError),
        ("backend", "fast", ValueError),
        ("damping", 2.0, ValueError),
    ],
)
def test_config_validation_names_the_field(field, value, error):
    """A wrong type raises TypeError, a wrong value ValueError (as :mod:`atedm_kernels._validation` promises)."""
    with pytest.raises(error, match=field):
        AtEdmConfig(**{field: value})


def test_apply_rejects_bad_targets(unet):
    with pytest.raises(TypeError, match="pipe_or_unet"):
        apply(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="config"):
        apply(unet, {"keep_ratio": 0.5})
    with apply(unet), pytest.raises(ValueError, match="already"):
        apply(unet)


def test_compiled_unet_matches_eager(unet):
    inputs = unet_inputs(unet, 2, 64, 64, seed=9)
    with apply(unet, AtEdmConfig(prune_less_steps=1)):
        eager = [run(unet, inputs, timestep=torch.tensor(t)) for t in (999.0, 950.0)]
        torch._dynamo.reset()
        compiled = torch.compile(unet, backend="aot_eager")
        got = [run(compiled, inputs, timestep=torch.tensor(t)) for t in (800.0, 750.0)]  # new generation
        got = [run(compiled, inputs, timestep=torch.tensor(t)) for t in (999.0, 950.0)]
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_the_config_accepts_runs_the_unet(unet, backend):
    """``AtEdmConfig.backend`` prefers a kernel family and each op falls back as "auto" does where the family has no
    kernel for it ("cpu" has no select_tokens kernel): the same pruned output as the references, or, for "cuda" on
    CPU tensors, one clear error that names the backend and why it cannot run."""
    inputs = unet_inputs(unet, 2, 64, 64, seed=5)
    with apply(unet, AtEdmConfig(prune_less_steps=0, backend="reference")):
        want = run(unet, inputs)
    with apply(unet, AtEdmConfig(prune_less_steps=0, backend=backend)) as handle:
        if backend == "cuda":
            with pytest.raises(BackendUnavailableError, match="backend 'cuda' is unavailable: the tensors are on 'cpu'"):
                run(unet, inputs)
            return
        got = run(unet, inputs)
        record = handle.stats()[0]
    assert all(kept is not None for kept in record.kept.values())  # every block pruned
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # stats() says which family ran each op: the preferred one where it has a kernel, else what "auto" picks on a
    # CPU tensor (the CPU kernel where there is one, else the reference)
    ran = {"attention_with_map", "gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens"}
    assert set(record.kernels) == ran
    for op, family in record.kernels.items():
        if backend == "reference":
            assert family == "reference", op
        elif backend in OP_KERNELS[op]:
            assert family == backend, op
        else:
            assert family == ("cpu" if "cpu" in OP_KERNELS[op] else "reference"), op
    if backend == "cpu":
        assert (record.kernels["gwpr"], record.kernels["select_tokens"]) == ("cpu", "reference")


def test_compiled_unet_with_dynamic_shapes_matches_eager(unet):
    """``torch.compile(dynamic=True)``: token counts reach the ops as SymInts (K = round(keep_ratio * N) too), and
    two image sizes run through one graph per phase."""
    with apply(unet, AtEdmConfig(prune_less_steps=0)):
        cases = [unet_inputs(unet, 2, size, size, seed=3) for size in (64, 48)]
        eager = [run(unet, inputs, timestep=torch.tensor(999.0)) for inputs in cases]
        torch._dynamo.reset()
        compiled = torch.compile(unet, backend="aot_eager", dynamic=True)
        got = [run(compiled, inputs, timestep=torch.tensor(999.0)) for inputs in cases]
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scheduler_name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_pipeline_clock_follows_the_scheduler(scheduler_name):
    """Second-order schedulers call the U-Net twice per step (KDPM2 at two different timesteps): the DSAP clock
    counts denoising steps, not U-Net calls or distinct timesteps."""
    import diffusers

    pipe = build_tiny_pipeline(seed=0)
    pipe.scheduler = getattr(diffusers, scheduler_name).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    with apply(pipe, AtEdmConfig(prune_less_steps=2)) as handle:
        pipe("a cube", num_inference_steps=4, height=64, width=64, output_type="np")
        records = handle.stats()
        assert [r.step for r in records] == [0, 1, 2, 3]
        assert [r.phase for r in records] == ["prune_less"] * 2 + ["normal"] * 2
        pipe("a ball", num_inference_steps=3, height=64, width=64, output_type="np")  # a new generation
        assert [r.step for r in handle.stats()] == [0, 1, 2]


def test_img2img_starts_part_way_into_the_schedule():
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(**build_tiny_pipeline(seed=0).components)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 64, 64)
    with apply(pipe, AtEdmConfig(prune_less_steps=3)) as handle:
        pipe("a cube", image=image, strength=0.5, num_inference_steps=8, output_type="np")
        records = handle.stats()
    assert [r.step for r in records] == [4, 5, 6, 7]  # the last half of an 8-step schedule
    assert all(r.phase == "normal" for r in records)


def test_tiny_pipeline_end_to_end():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    with apply(pipe, AtEdmConfig(prune_less_steps=1)) as handle:
        image = pipe("a red cube", num_inference_steps=3, height=128, width=128, output_type="np").images[0]
        assert len(handle.stats()) == 3
    assert image.shape == (128, 128, 3) and (image >= 0).all() and (image <= 1).all()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton", "cuda"])
def test_full_sdxl_fp16_gpu_kernels_match_reference(backend):
    unet = build_sdxl_unet("full", device="cuda", dtype=torch.float16)
    inputs = unet_inputs(unet, 2, 1024, 1024, seed=10)
    dense = run(unet, inputs)
    with apply(unet, AtEdmConfig(prune_less_steps=0, backend="reference")):
        reference = run(unet, inputs)
    with apply(unet, AtEdmConfig(prune_less_steps=0, backend=backend)):
        kernels = run(unet, inputs)
    assert torch.isfinite(kernels).all() and kernels.shape == dense.shape
    # Token selection may differ at near-ties between fp16 maps, so compare as a whole, not element-wise.
    assert (kernels.float() - reference.float()).norm() / reference.float().norm() < 0.05


def test_a_processor_set_after_apply_is_wrapped_and_kept(unet):
    from diffusers.models.attention_processor import AttnProcessor2_0

    inputs = unet_inputs(unet, 1, PIXELS, PIXELS, seed=11)
    handle = apply(unet, AtEdmConfig(prune_less_steps=0))
    pruned = run(unet, inputs)
    unet.set_attn_processor(AttnProcessor2_0())  # e.g. a user switching attention after AT-EDM
    torch.testing.assert_close(run(unet, inputs), pruned, rtol=1e-5, atol=1e-5)  # still AT-EDM, same math
    assert all(kept is not None for kept in handle.stats()[-1].kept.values())
    handle.remove()
    assert all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert not hasattr(unet, "_atedm_handle")


def test_a_failed_call_leaves_nothing_behind(unet):
    inputs = unet_inputs(unet, 1, PIXELS, PIXELS, seed=12)
    with apply(unet, AtEdmConfig(prune_less_steps=0)) as handle:
        bad = {**inputs, "encoder_hidden_states": inputs["encoder_hidden_states"][..., :3]}  # breaks cross-attn
        with pytest.raises(RuntimeError):
            run(unet, bad, timestep=torch.tensor(900.0))
        assert any(b._amap is not None or b._restore is not None for b in handle.blocks)  # left mid-way
        assert all(type(p).__module__.startswith("diffusers") for p in unet.attn_processors.values())
        good = run(unet, inputs, timestep=torch.tensor(800.0))
        assert all(b._amap is None and b._restore is None for b in handle.blocks)
        assert handle.stats()[-1].kept == {b.name: b.last_tokens[1] for b in handle.blocks}
    assert torch.isfinite(good).all()
