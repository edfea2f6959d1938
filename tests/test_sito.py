"""SiTo: the per-stage references against a float64 brute force, the ``sito_select`` op, and the U-Net layer."""

import itertools
import math

import pytest
import torch

import atedm_kernels as ak
from atedm_kernels.sdxl import AtEdmConfig, apply
from atedm_kernels.tools.models import build_sdxl_unet, build_tiny_pipeline, unet_inputs
from atedm_kernels.sdxl.sito_layer import SiToConfig, apply_sito
from atedm_kernels.sito import (
    base_tokens_reference,
    normalize_tokens,
    num_patches,
    pruned_tokens_reference,
    recovery_sources_reference,
    similarity_scores_reference,
    sito_kept_tokens,
    sito_select,
    sito_select_reference,
)

# --------------------------------------------------------------------------------------------------------------
# An independent brute force: explicit loops, float64, cos(a, b) = a.b / (|a| |b|), ties resolved by hand.
# --------------------------------------------------------------------------------------------------------------


def _cos(a, b) -> float:
    """Cosine of two tokens (tensors or lists of floats), in Python floats (IEEE double)."""
    a, b = (t.tolist() if isinstance(t, torch.Tensor) else t for t in (a, b))
    na, nb = math.sqrt(sum(v * v for v in a)), math.sqrt(sum(v * v for v in b))
    return 0.0 if na == 0 or nb == 0 else sum(u * v for u, v in zip(a, b)) / (na * nb)


def brute_force(x, h, w, sx, sy, prune_ratio, noise=None, noise_alpha=0.0):
    """One batch element ``x [N, C]`` -> (keep list, prune list, src list, base list)."""
    x = x.double().tolist()
    n = h * w
    cos = [[_cos(x[i], x[j]) for j in range(n)] for i in range(n)]
    score = [sum(cos[i]) + (noise_alpha * noise[i].item() if noise is not None else 0.0) for i in range(n)]
    base = []
    for py, px in itertools.product(range(math.ceil(h / sy)), range(math.ceil(w / sx))):
        patch = [r * w + c for r in range(py * sy, min(h, py * sy + sy)) for c in range(px * sx, min(w, px * sx + sx))]
        best = patch[0]
        for t in sorted(patch)[1:]:
            if score[t] > score[best]:  # strict: the lower index wins ties
                best = t
        base.append(best)
    prune_count = max(0, min(round(prune_ratio * n), n - len(base)))
    others = [t for t in range(n) if t not in base]
    ranked = sorted(others, key=lambda t: (-max(cos[t][b] for b in base), t))
    pruned = sorted(ranked[:prune_count])
    kept = sorted(set(range(n)) - set(pruned))
    src = []
    for p in pruned:
        best = 0
        for j in range(1, len(kept)):
            if cos[p][kept[j]] > cos[p][kept[best]]:
                best = j
        src.append(best)
    return kept, pruned, src, sorted(base)


GRIDS = [(3, 5, 2, 2), (5, 3, 2, 3), (4, 4, 2, 2), (1, 7, 3, 1), (7, 1, 1, 2), (6, 7, 4, 3), (2, 2, 5, 5), (5, 6, 1, 1)]


@pytest.mark.parametrize("h,w,sx,sy", GRIDS)
@pytest.mark.parametrize("prune_ratio", [0.0, 0.3, 0.5, 0.9])
def test_reference_matches_brute_force(gen, h, w, sx, sy, prune_ratio):
    n = h * w
    x = torch.randn(2, n, 5, generator=gen, dtype=torch.float64)
    noise = torch.randn(2, n, generator=gen, dtype=torch.float64)
    keep_idx, prune_idx, src = sito_select_reference(x, h, w, sx, sy, prune_ratio, noise, 0.3)
    for b in range(2):
        kept, pruned, want_src, base = brute_force(x[b], h, w, sx, sy, prune_ratio, noise[b], 0.3)
        assert keep_idx[b].tolist() == kept and prune_idx[b].tolist() == pruned and src[b].tolist() == want_src
        assert set(base) <= set(kept)
    assert keep_idx.shape[1] == sito_kept_tokens(h, w, sx, sy, prune_ratio)
    assert keep_idx.dtype == prune_idx.dtype == src.dtype == torch.int64


@pytest.mark.parametrize("h,w,sx,sy", [(3, 5, 2, 2), (4, 4, 2, 2), (5, 6, 3, 2)])
def test_ties_follow_the_index_rules(gen, h, w, sx, sy):
    """Few directions at power-of-two scales, chosen so that every cosine (0, 1/2, 1) and every sum of them is exact
    in both implementations: scores, base matches and sources tie exactly, and only the index rules decide."""
    n = h * w
    prototypes = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 1, 1], [1, -1, 1, -1]], dtype=torch.float64)
    labels = torch.randint(0, 4, (2, n), generator=gen)
    scale = 2.0 ** torch.randint(-2, 3, (2, n, 1), generator=gen).double()
    x = prototypes[labels] * scale  # [2, N, 4]
    for ratio in (0.25, 0.5, 0.75):
        keep_idx, prune_idx, src = sito_select_reference(x, h, w, sx, sy, ratio, None, 0.0)
        for b in range(2):
            kept, pruned, want_src, _ = brute_force(x[b], h, w, sx, sy, ratio)
            assert keep_idx[b].tolist() == kept and prune_idx[b].tolist() == pruned and src[b].tolist() == want_src


def test_stages_one_by_one(gen):
    h, w, sx, sy = 5, 7, 3, 2
    x = torch.randn(1, h * w, 6, generator=gen, dtype=torch.float64)
    xn = normalize_tokens(x)
    scores = similarity_scores_reference(xn)  # [1, N]
    dense = torch.tensor([sum(_cos(x[0, i], x[0, j]) for j in range(h * w)) for i in range(h * w)], dtype=torch.float64)
    torch.testing.assert_close(scores[0], dense, rtol=1e-12, atol=1e-12)
    base = base_tokens_reference(scores, h, w, sx, sy)
    assert base.shape == (1, num_patches(h, w, sx, sy)) == (1, 9)
    patch_of = [(t // w) // sy * math.ceil(w / sx) + (t % w) // sx for t in base[0].tolist()]
    assert sorted(patch_of) == list(range(9))  # one base token per patch, partial patches included
    keep_idx, prune_idx = pruned_tokens_reference(xn, base, 20)
    assert prune_idx.shape == (1, 20) and set(base[0].tolist()) <= set(keep_idx[0].tolist())
    src = recovery_sources_reference(xn, keep_idx, prune_idx)
    sims = xn[0, prune_idx[0]] @ xn[0, keep_idx[0]].T
    assert torch.equal(src[0], sims.argmax(-1))


def test_cap_keeps_every_base_token(gen):
    x = torch.randn(1, 12, 4, generator=gen)
    keep_idx, prune_idx, _ = sito_select(x, 3, 4, 2, 2, 0.95)  # round(11.4) = 11 > N - P = 12 - 4
    assert keep_idx.shape == (1, 4) and prune_idx.shape == (1, 8)
    keep_idx, prune_idx, src = sito_select(x, 3, 4, 1, 1, 0.5)  # every token is a base token: nothing to prune
    assert keep_idx.shape == (1, 12) and prune_idx.shape == src.shape == (1, 0)


# --------------------------------------------------------------------------------------------------------------
# The op
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_op_matches_reference_and_splits_tokens(gen, dtype):
    h, w = 7, 9
    x = torch.randn(3, h * w, 16, generator=gen).to(dtype)
    noise = torch.randn(3, h * w, generator=gen)
    keep_idx, prune_idx, src = sito_select(x, h, w, 2, 2, 0.5, noise, 0.1)
    want = sito_select_reference(x.double(), h, w, 2, 2, 0.5, noise.double(), 0.1)
    if dtype == torch.float32:  # the op computes in float32: the float64 answer, barring near-ties
        for got, ref in zip((keep_idx, prune_idx, src), want):
            assert torch.equal(got, ref)
    k = sito_kept_tokens(h, w, 2, 2, 0.5)
    assert keep_idx.shape == (3, k) and prune_idx.shape == src.shape == (3, h * w - k)
    both = torch.cat([keep_idx, prune_idx], 1).sort(-1).values
    assert torch.equal(both, torch.arange(h * w).expand(3, -1))
    assert (keep_idx.diff(dim=-1) > 0).all() and (prune_idx.diff(dim=-1) > 0).all()
    assert src.min() >= 0 and src.max() < k
    recovered = ak.recover_tokens(ak.gather_tokens(x, keep_idx), keep_idx, prune_idx, src)
    assert torch.equal(recovered.gather(1, keep_idx[..., None].expand(-1, -1, 16)), ak.gather_tokens(x, keep_idx))


def test_noise_moves_base_tokens(gen):
    x = torch.randn(1, 64, 8, generator=gen)
    quiet = sito_select(x, 8, 8, 2, 2, 0.5)
    loud = sito_select(x, 8, 8, 2, 2, 0.5, torch.randn(1, 64, generator=gen) * 100, 1.0)
    assert not torch.equal(quiet[0], loud[0])
    assert torch.equal(quiet[0], sito_select(x, 8, 8, 2, 2, 0.5, torch.randn(1, 64, generator=gen), 0.0)[0])


def test_opcheck_and_compile(gen):
    x = torch.randn(2, 15, 6, generator=gen)
    noise = torch.randn(2, 15, generator=gen)
    op = torch.ops.atedm.sito_select.default
    torch.library.opcheck(op, (x, 3, 5, 2, 2, 0.5, noise, 0.1, "reference"))
    torch.library.opcheck(op, (x, 5, 3, 3, 2, 0.0, None, 0.0, "auto"))

    def prune_recover(x, noise):
        keep_idx, prune_idx, src = sito_select(x, 3, 5, 2, 2, 0.5, noise, 0.1)
        return ak.recover_tokens(ak.gather_tokens(x, keep_idx) * 2.0, keep_idx, prune_idx, src)

    torch._dynamo.reset()
    compiled = torch.compile(prune_recover, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, noise), prune_recover(x, noise), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change,error,name",
    [
        ({"x": torch.randn(15, 6)}, ValueError, "x"),
        ({"x": torch.randint(0, 3, (2, 15, 6))}, TypeError, "x"),
        ({"x": [[0.0]]}, TypeError, "x"),
        ({"h": 4}, ValueError, "x must hold N = h"),
        ({"w": 0}, ValueError, "w"),
        ({"h": 3.0}, TypeError, "h"),
        ({"sx": 0}, ValueError, "sx"),
        ({"sy": True}, TypeError, "sy"),
        ({"prune_ratio": 1.0}, ValueError, "prune_ratio"),
        ({"prune_ratio": -0.1}, ValueError, "prune_ratio"),
        ({"prune_ratio": "half"}, TypeError, "prune_ratio"),
        ({"noise_alpha": -1.0}, ValueError, "noise_alpha"),
        ({"noise_alpha": float("nan")}, ValueError, "noise_alpha"),
        ({"noise": torch.randn(2, 14)}, ValueError, "noise"),
        ({"noise": torch.zeros(2, 15, dtype=torch.int64)}, TypeError, "noise"),
        ({"noise": torch.randn(2, 15, device="meta")}, ValueError, "noise"),
        ({"backend": "cuda"}, ValueError, "backend"),
        ({"backend": "fast"}, ValueError, "backend"),
        ({"backend": 3}, TypeError, "backend"),
    ],
)
def test_bad_inputs_name_the_argument(change, error, name):
    args = {"x": torch.randn(2, 15, 6), "h": 3, "w": 5, "sx": 2, "sy": 2, "prune_ratio": 0.5,
            "noise": None, "noise_alpha": 0.1, "backend": "auto"}
    args.update(change)
    with pytest.raises(error, match=name):
        sito_select(**args)
    if isinstance(args["x"], torch.Tensor) and all(type(args[k]) is int for k in ("h", "w", "sx", "sy")):
        if type(args["prune_ratio"]) is float and isinstance(args["backend"], str):
            with pytest.raises(error, match=name):  # the op itself checks too, not only the wrapper
                torch.ops.atedm.sito_select(*args.values())


# --------------------------------------------------------------------------------------------------------------
# The U-Net layer (tiny random-weight SD-XL-architecture U-Net: attention at levels 2 and 3)
# --------------------------------------------------------------------------------------------------------------

PIXELS = 128  # 16x16 latent: 8x8 = 64 tokens at level 2, 4x4 = 16 at level 3
SMALL = 64  # 8x8 latent: cheap steps


@pytest.fixture(scope="module")
def unet():
    return build_sdxl_unet("tiny", seed=1)


def run(unet, inputs, **overrides):
    with torch.no_grad():
        return unet(**{**inputs, **overrides}).sample


LEVEL2 = ("down_blocks.1.", "up_blocks.1.")  # the tiny U-Net's 2-layer blocks one downsample below the latent


@pytest.fixture(scope="module")
def dense_case(unet):
    """Inputs (batch 2, 128 px) and the dense output, shared so that CPU time goes to the pruned runs."""
    inputs = unet_inputs(unet, 2, PIXELS, PIXELS, seed=2)
    return inputs, run(unet, inputs)


def test_ratio_zero_equals_dense(unet, dense_case):
    inputs, dense = dense_case
    with apply_sito(unet, SiToConfig(prune_ratio=0.0)) as handle:
        pruned = run(unet, inputs)
        record = handle.stats()[0]
    assert len(record.kept) == 2 * 2 + 2 * 4 + 4 + 3 * 4 + 3 * 2  # every BasicTransformerBlock
    assert all(record.kept[name] == record.tokens[name] for name in record.kept)  # ran the path, kept all
    torch.testing.assert_close(pruned, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ak.BACKENDS)
def test_every_backend_the_config_accepts_runs_the_unet(unet, dense_case, backend):
    """``SiToConfig.backend`` is a kernel-family preference resolved per op, as AT-EDM's: the same output as the
    references, and ``stats()`` says which family ran each op ("cuda" on CPU tensors: one clear error)."""
    inputs, _ = dense_case
    with apply_sito(unet, SiToConfig(seed=0, backend="reference")):
        want = run(unet, inputs)
    with apply_sito(unet, SiToConfig(seed=0, backend=backend)) as handle:
        if backend == "cuda":
            with pytest.raises(ak.BackendUnavailableError, match="backend 'cuda' is unavailable"):
                run(unet, inputs)
            return
        got = run(unet, inputs)
        kernels = handle.stats()[0].kernels
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # no op of SiTo's has a "cpu" or "triton" kernel: on CPU tensors every one runs its reference
    assert kernels == dict.fromkeys(("sito_select", "gather_tokens", "recover_tokens"), "reference")


def test_remove_restores_the_unet_exactly(unet, dense_case):
    inputs, dense = dense_case
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    handle = apply_sito(unet, SiToConfig(prune_ratio=0.6))
    assert not torch.equal(run(unet, inputs), dense)
    handle.remove()
    assert torch.equal(run(unet, inputs), dense)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert not unet._forward_pre_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())
    assert not hasattr(unet, "_atedm_handle")


def test_default_config_changes_output_keeps_it_finite(unet, dense_case):
    inputs, dense = dense_case
    with apply_sito(unet) as handle:
        pruned = run(unet, inputs)
        record = handle.stats()[0]
    assert pruned.shape == dense.shape and torch.isfinite(pruned).all()
    relative = (pruned - dense).norm() / dense.norm()
    assert 1e-3 < relative < 1.0, relative
    for name, n in record.tokens.items():
        side = 8 if name.startswith(LEVEL2) else 4
        assert n == side * side and record.kept[name] == n // 2  # P = n / 4 <= n / 2 pruned


@pytest.mark.parametrize("height,width", [(96, 128), (136, 96)])
def test_non_square_latents(unet, height, width):
    inputs = unet_inputs(unet, 2, height, width, seed=6)
    config = SiToConfig()
    with apply_sito(unet, config) as handle:
        pruned = run(unet, inputs)
        record = handle.stats()[0]
    assert pruned.shape == inputs["sample"].shape and torch.isfinite(pruned).all()
    latent = (height // 8, width // 8)
    grid2 = tuple(-(-s // 2) for s in latent)  # one stride-2 downsample (diffusers pads: ceil)
    grid3 = tuple(-(-s // 2) for s in grid2)
    for name, n in record.tokens.items():
        h, w = grid2 if name.startswith(LEVEL2) else grid3
        assert n == h * w and record.kept[name] == config.kept_tokens(h, w)
    assert record.kept["down_blocks.1.attentions.0.transformer_blocks.0"] == {(96, 128): 24, (136, 96): 27}[
        (height, width)
    ]


def test_batches_of_1_2_3_are_pruned_per_sample(unet):
    """Without noise each sample's output is independent of its batch mates (batch 3 and 2 vs. each sample alone)."""
    inputs = unet_inputs(unet, 3, SMALL, SMALL, seed=5)

    def rows(lo, hi):
        return {
            "sample": inputs["sample"][lo:hi],
            "encoder_hidden_states": inputs["encoder_hidden_states"][lo:hi],
            "added_cond_kwargs": {k: v[lo:hi] for k, v in inputs["added_cond_kwargs"].items()},
        }

    with apply_sito(unet, SiToConfig(noise_alpha=0.0)) as handle:
        three = run(unet, inputs)
        two = run(unet, inputs, **rows(0, 2))
        alone = torch.cat([run(unet, inputs, **rows(b, b + 1)) for b in range(3)])
        assert all(k is not None for k in handle.stats()[0].kept.values())
    torch.testing.assert_close(three, alone, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two, alone[:2], rtol=1e-4, atol=1e-4)


def test_stats_steps_levels_and_reset(unet):
    inputs = unet_inputs(unet, 1, SMALL, SMALL, seed=8)
    config = SiToConfig(prune_less_steps=1, levels=[3])
    with apply_sito(unet, config) as handle:
        for t in (900.0, 800.0, 800.0, 700.0):
            run(unet, inputs, timestep=torch.tensor(t))
        records = handle.stats()
        assert [r.step for r in records] == [0, 1, 2]
        assert records[0].phase == "prune_less" and all(k is None for k in records[0].kept.values())
        for record in records[1:]:
            assert record.phase == "normal"
            assert set(record.tokens) == set(record.kept)  # every level-3 layer pruned
            assert all(record.tokens[n] == 4 and record.kept[n] == config.kept_tokens(2, 2) == 2 for n in record.kept)
        assert len(records[0].kept) == 2 * 4 + 4 + 3 * 4  # levels=(3,): the level-2 layers are not wrapped
        assert not any(name.startswith(LEVEL2) for name in records[0].kept)
        handle.reset()
        run(unet, inputs, timestep=torch.tensor(500.0))
        assert [r.step for r in handle.stats()] == [0]


def test_seeded_noise_is_reproducible_per_generation(unet):
    inputs = unet_inputs(unet, 2, SMALL, SMALL, seed=9)
    with apply_sito(unet, SiToConfig(seed=7, prune_ratio=0.6)) as handle:
        first = [run(unet, inputs, timestep=torch.tensor(t)) for t in (999.0, 900.0)]
        assert [r.step for r in handle.stats()] == [0, 1]
        again = run(unet, inputs, timestep=torch.tensor(999.0))  # a rising timestep: new generation, reseeded
        assert [r.step for r in handle.stats()] == [0]
    assert torch.equal(first[0], again) and not torch.equal(first[0], first[1])


@pytest.mark.parametrize(
    "field,value,error",
    [
        ("prune_ratio", 1.0, ValueError),
        ("prune_ratio", -0.5, ValueError),
        ("prune_ratio", "0.5", TypeError),
        ("sx", 0, ValueError),
        ("sy", 1.5, TypeError),
        ("sx", True, TypeError),
        ("noise_alpha", -0.1, ValueError),
        ("noise_alpha", float("inf"), ValueError),
        ("levels", (), ValueError),
        ("levels", (0,), ValueError),
        ("levels", "2", TypeError),
        ("prune_less_steps", -1, ValueError),
        ("seed", 1.5, TypeError),
        ("backend", "fast", ValueError),
    ],
)
def test_config_validation_names_the_field(field, value, error):
    """A wrong type raises TypeError, a wrong value ValueError (as :mod:`atedm_kernels._validation` promises)."""
    with pytest.raises(error, match=field):
        SiToConfig(**{field: value})


def test_apply_rejects_bad_targets(unet):
    with pytest.raises(TypeError, match="pipe_or_unet"):
        apply_sito(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="config"):
        apply_sito(unet, AtEdmConfig())
    with pytest.raises(ValueError, match="levels"):
        apply_sito(unet, SiToConfig(levels=(1,)))  # SD-XL's first level has no attention
    assert not any(m._forward_pre_hooks for m in unet.modules())
    with apply_sito(unet):
        with pytest.raises(ValueError, match="already"):
            apply_sito(unet)
        with pytest.raises(ValueError, match="already"):
            apply(unet)  # AT-EDM cannot be stacked on SiTo
    with apply(unet), pytest.raises(ValueError, match="already"):
        apply_sito(unet)


def test_tiny_pipeline_end_to_end():
    pipe = build_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    with apply_sito(pipe, SiToConfig(seed=0)) as handle:
        image = pipe("a red cube", num_inference_steps=2, height=SMALL, width=SMALL, output_type="np").images[0]
        records = handle.stats()
    assert [r.step for r in records] == [0, 1] and all(r.phase == "normal" for r in records)
    assert all(k is not None for r in records for k in r.kept.values())
    assert image.shape == (SMALL, SMALL, 3) and (image >= 0).all() and (image <= 1).all()
