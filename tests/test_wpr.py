"""Cross-attention G-WPR in the pruning layer (``AtEdmConfig.wpr``) and the few-step preset
(``AtEdmConfig.few_step()``), on the tiny random-weight SD-XL-architecture pipeline (CPU)."""

import copy

import pytest
import torch

from atedm_kernels import ops, reference
from atedm_kernels.sdxl import AtEdmConfig, apply
from atedm_kernels.tools.models import build_sdxl_unet, build_tiny_pipeline, unet_inputs
from atedm_kernels.sdxl.config import WPR_KINDS
from tests import brute_force as bf

CROSS_KINDS = [kind for kind in WPR_KINDS if kind != "self"]
TEXT_TOKENS = 77  # the tiny pipeline's tokenizers pad prompts to 77, as SD-XL's do
SHARPEN = 30.0  # scales the pruning layers' attn2 keys: a trained model's peaked cross-attention, not a flat one


def _sharpen_cross_attention(unet) -> None:
    """Peak the random-weight cross-attention maps (row maxima well above ``hard_clip``'s eta of 0.2), so every
    ``wpr`` ranks tokens instead of tying them all."""
    with torch.no_grad():
        for block in unet.modules():
            if type(block).__name__ == "Transformer2DModel" and len(block.transformer_blocks) >= 2:
                block.transformer_blocks[0].attn2.to_k.weight.mul_(SHARPEN)


def _qkv(attn, hidden: torch.Tensor, context: torch.Tensor | None):
    """``attn``'s q [B, H, N, D] from ``hidden`` [B, N, C] and k, v [B, H, M, D] from ``context`` (None: ``hidden``),
    in the dtype of ``attn`` and its inputs."""
    source = hidden if context is None else context

    def split(t):  # [B, T, H*D] -> [B, H, T, D]
        return t.view(t.shape[0], t.shape[1], attn.heads, -1).transpose(1, 2)

    return split(attn.to_q(hidden)), split(attn.to_k(source)), split(attn.to_v(source))


def _reference_attention(attn, hidden: torch.Tensor, context: torch.Tensor | None):
    """float64 output [B, N, C] and head-averaged map [B, N, M] of diffusers ``Attention`` ``attn`` by brute force:
    queries from ``hidden`` [B, N, C], keys and values from ``context`` [B, L, C_ctx] (None: ``hidden``)."""
    ref = copy.deepcopy(attn).double()
    hidden = hidden.double()
    out, amap = bf.attention_with_map(*_qkv(ref, hidden, None if context is None else context.double()), attn.scale)
    out = ref.to_out[0](out.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1))  # [B, N, C]
    return out, amap


def _same_precision_scores(attn, hidden, context, map_dtype: torch.dtype, wpr: str, num_iters: int) -> torch.Tensor:
    """The scores [B, N] a plain float32 PyTorch computation gets from the same inputs (the reference ops on
    ``attn``'s own float32 projections): the yardstick of the layer's float32 rounding against float64."""
    with torch.no_grad():  # the references themselves: the test's spies count the ops' calls
        _, amap = reference.attention_with_map_reference(*_qkv(attn, hidden, context), attn.scale,
                                                         map_dtype)  # [B, N, M]
        if wpr == "self":
            return reference.gwpr_reference(amap, num_iters, 0.0)
        return reference.gwpr_cross_reference(amap, num_iters, wpr)


@pytest.mark.parametrize("wpr", WPR_KINDS)
def test_each_wpr_prunes_in_the_pipeline_with_its_layers_own_map(wpr, monkeypatch):
    """The scores each pruning layer ranks by are ``gwpr`` of its self-attention map ("self") or ``gwpr_cross`` of
    its text cross-attention map (the others), both recomputed in float64 from the layer's inputs; the cross map
    comes from ``attention_with_map`` over the 77 text tokens (one call per pruning layer, none for "self");
    recovery reads the self-attention map whatever ``wpr`` is; K is right in every block."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    _sharpen_cross_attention(pipe.unet)
    config = AtEdmConfig(wpr=wpr, prune_less_steps=0, backend="reference")

    key_lengths = []  # M of every attention_with_map call
    attention_with_map = ops.attention_with_map

    def attention_spy(q, k, v, *args, **kwargs):
        key_lengths.append(k.shape[2])
        return attention_with_map(q, k, v, *args, **kwargs)

    recovery_maps = []  # the map similarity_sources read, per pruning call
    similarity_sources = ops.similarity_sources

    def sources_spy(amap, keep_idx, prune_idx, **kwargs):
        recovery_maps.append(amap)
        return similarity_sources(amap, keep_idx, prune_idx, **kwargs)

    monkeypatch.setattr(ops, "attention_with_map", attention_spy)
    monkeypatch.setattr(ops, "similarity_sources", sources_spy)

    inputs, outputs, checked = {}, {}, []

    def capture_inputs(name):
        def hook(module, args, kwargs):
            inputs[name] = (args[0], kwargs.get("encoder_hidden_states"))  # [B, N, C], [B, L, C_ctx] or None
        return hook

    def capture_output(name):
        def hook(module, args, kwargs, output):
            outputs[name] = output  # [B, N, C]
        return hook

    def observer(block, scores, keep_idx):  # runs inside the pruning layer, right after its selection
        if len(checked) >= len(names):
            return  # the first U-Net call checks every block; brute force is slow
        first = block.transformer.transformer_blocks[0]
        hidden, _ = inputs[(block.name, "attn1")]
        _, self_map = _reference_attention(first.attn1, hidden, None)  # [B, N, N]
        # the layer's map is the exact one rounded to its dtype: float16 where the cpu kernels read it in place
        # (pruning.map_dtype_for), so within one float16 ulp there, within float32 rounding otherwise
        map_dtype = recovery_maps[-1].dtype
        one_ulp = 2.0**-10 if map_dtype == torch.float16 else 0.0
        torch.testing.assert_close(recovery_maps[-1].double(), self_map, rtol=one_ulp, atol=1e-6)
        if wpr == "self":
            want = bf.gwpr(self_map.to(map_dtype), config.num_iters)
            same_precision = _same_precision_scores(first.attn1, hidden, None, map_dtype, wpr, config.num_iters)
        else:
            hidden, context = inputs[(block.name, "attn2")]
            assert context.shape[1] == TEXT_TOKENS
            out, cross_map = _reference_attention(first.attn2, hidden, context)  # [B, N, C], [B, N, L]
            torch.testing.assert_close(outputs[block.name].double(), out, rtol=1e-5, atol=1e-5)
            assert (cross_map.amax(-1) > 0.2).any(-1).all()  # peaked rows in each sample: hard_clip has terms
            want = bf.gwpr_cross(cross_map.to(map_dtype), config.num_iters, wpr)  # the cross map: same dtype
            same_precision = _same_precision_scores(first.attn2, hidden, context, map_dtype, wpr, config.num_iters)
        assert scores.dtype == torch.float32 and (scores.amax(-1) > scores.amin(-1)).all()  # a ranking, not ties
        # judged against the float64 scores with the error a plain float32 computation makes (the cross kinds' weights
        # amplify the map's float32 rounding; how much depends on the BLAS's summation order, its thread count)
        error = (scores.double() - want).abs().max().item()
        yardstick = (same_precision.double() - want).abs().max().item()
        assert error <= 4 * yardstick + 1e-6 * want.abs().max().item(), (error, yardstick)
        assert keep_idx.shape == (hidden.shape[0], config.kept_tokens(hidden.shape[1]))
        checked.append(block.name)

    with apply(pipe, config) as handle:
        names = [block.name for block in handle.blocks]
        for block in handle.blocks:
            first = block.transformer.transformer_blocks[0]
            for label in ("attn1", "attn2"):
                getattr(first, label).register_forward_pre_hook(capture_inputs((block.name, label)), with_kwargs=True)
            first.attn2.register_forward_hook(capture_output(block.name), with_kwargs=True)
        handle.observe(observer)
        # A negative prompt: SD-XL zeroes an empty one, and zero keys give a uniform cross map that ranks nothing.
        image = pipe("a red cube", negative_prompt="a blue ball", num_inference_steps=2, height=128, width=128,
                     output_type="np").images[0]
        records = handle.stats()

    assert sorted(checked) == sorted(names) and len(names) == 11
    assert torch.isfinite(torch.from_numpy(image)).all()
    assert [r.step for r in records] == [0, 1] and all(r.phase == "normal" for r in records)
    for record in records:
        assert len(record.kept) == 11
        for name, n in record.tokens.items():
            assert record.kept[name] == max(1, round(0.37 * n))
    calls = 2 * len(names)  # U-Net calls x pruning layers
    assert key_lengths.count(TEXT_TOKENS) == (0 if wpr == "self" else calls)
    assert len(key_lengths) == calls + key_lengths.count(TEXT_TOKENS)  # one self map per layer, nothing else


@pytest.mark.parametrize("wpr", ["entropy", "power"])
def test_cross_wpr_composes_with_the_users_cross_attention_processor(wpr):
    """Fused QKV (attn2 projects keys and values with ``to_kv``) and a processor AT-EDM does not know (its own
    output kept, the map from a second attention) give the plain processor's output."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    class CustomProcessor(AttnProcessor2_0):  # same math, but not a type AT-EDM treats as plain
        pass

    unet = build_sdxl_unet("tiny", seed=3)
    _sharpen_cross_attention(unet)
    inputs = unet_inputs(unet, 2, 128, 128, seed=4)
    with torch.no_grad(), apply(unet, AtEdmConfig(wpr=wpr, prune_less_steps=0)) as handle:
        plain = unet(**inputs).sample
        assert all(kept is not None for kept in handle.stats()[-1].kept.values())
        unet.fuse_qkv_projections()
        fused = unet(**inputs).sample
        unet.unfuse_qkv_projections()
        unet.set_attn_processor(CustomProcessor())
        custom = unet(**inputs).sample
    with torch.no_grad():
        dense = unet(**inputs).sample
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(custom, plain, rtol=1e-4, atol=1e-4)
    assert (plain - dense).abs().max() > 1e-3  # it pruned


def test_cross_wpr_with_a_zeroed_negative_prompt_keeps_the_first_tokens():
    """SD-XL zeroes an empty negative prompt: the unconditional half's keys are zero, its cross map uniform, so its
    cross scores all tie and it keeps its first K tokens (as the README says); the conditional half ranks by its map."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    _sharpen_cross_attention(pipe.unet)
    kept = []  # keep_idx [2, K] per pruning call, unconditional half first
    with apply(pipe, AtEdmConfig(wpr="entropy", prune_less_steps=0)) as handle:
        handle.observe(lambda block, scores, keep_idx: kept.append(keep_idx))
        pipe("a red cube", num_inference_steps=1, height=64, width=64, output_type="np")
    assert len(kept) == 11
    assert all(torch.equal(keep_idx[0], torch.arange(keep_idx.shape[1])) for keep_idx in kept)
    assert not all(torch.equal(keep_idx[1], torch.arange(keep_idx.shape[1])) for keep_idx in kept)


def test_wpr_self_leaves_cross_attention_alone():
    """The default ("self", today's behaviour) never wraps a cross-attention processor."""
    unet = build_sdxl_unet("tiny", seed=5)
    seen = []
    with apply(unet, AtEdmConfig(prune_less_steps=0)) as handle:
        assert handle.config.wpr == "self"
        for block in handle.blocks:
            attn2 = block.transformer.transformer_blocks[0].attn2
            attn2.register_forward_pre_hook(lambda module, args: seen.append(type(module.processor).__module__))
        with torch.no_grad():
            unet(**unet_inputs(unet, 1, 64, 64, seed=6))
    assert len(seen) == 11 and all(module.startswith("diffusers") for module in seen)


@pytest.mark.parametrize(
    "kwargs,field",
    [({"wpr": "median"}, "wpr"), ({"wpr": None}, "wpr"), ({"wpr": "power", "damping": 0.15}, "damping")],
)
def test_bad_wpr_is_one_clear_line(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=field) as info:  # TypeError for None
        AtEdmConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_few_step_preset_values():
    config = AtEdmConfig.few_step()
    assert (config.keep_ratio, config.prune_less_steps, config.prune_less_blocks) == (0.37, 1, "F-L")
    assert [config.prune_less_count(n) for n in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert AtEdmConfig.few_step(backend="reference", wpr="entropy").backend == "reference"
    with pytest.raises(ValueError, match="keep_ratio"):
        AtEdmConfig.few_step(keep_ratio=2.0)


def _few_step_schedulers():
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    return {
        "lcm": lambda config: LCMScheduler.from_config(config),
        "euler-trailing": lambda config: EulerDiscreteScheduler.from_config(config, timestep_spacing="trailing"),
    }


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("scheduler", ["lcm", "euler-trailing"])
def test_few_step_preset_in_a_distilled_style_pipeline(scheduler, steps):
    """1-4 steps, no classifier-free guidance (as SDXL-Turbo and Lightning run): the clock finds every step, the
    first is prune-less (the F-L blocks dense), the rest normal, the image finite."""
    pipe = build_tiny_pipeline(seed=0)
    pipe.scheduler = _few_step_schedulers()[scheduler](pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    first_down = {"down_blocks.1.attentions.0", "down_blocks.2.attentions.0"}
    last_up = {"up_blocks.0.attentions.2", "up_blocks.1.attentions.2"}
    with apply(pipe, AtEdmConfig.few_step()) as handle:
        image = pipe("a red cube", num_inference_steps=steps, guidance_scale=0.0, height=64, width=64,
                     output_type="np").images[0]
        records = handle.stats()
    assert len(pipe.scheduler.timesteps) == steps
    assert [r.step for r in records] == list(range(steps)) and all(r.num_steps == steps for r in records)
    assert [r.phase for r in records] == ["prune_less"] + ["normal"] * (steps - 1)
    for record in records:
        dense = {name for name, kept in record.kept.items() if kept is None}
        assert dense == (first_down | last_up if record.step == 0 else set())
    assert torch.isfinite(torch.from_numpy(image)).all()
