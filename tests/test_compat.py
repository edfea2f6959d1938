"""AT-EDM and SiTo combined with what diffusers users combine them with, on tiny random-weight SD-XL pipelines (CPU).

For each scenario and both methods: the run is finite, ``keep_ratio=1.0`` / ``prune_ratio=0`` (with every pruning
unit really running its pruning path) equals the dense run, ``remove()`` restores it bit for bit and leaves the
user's processors, and every step's DSAP phase is the expected one. The whole matrix (:data:`MATRIX`) is in the
default run, marked ``compat`` (``python -m pytest -m compat tests/test_compat.py`` runs it alone); the "works with"
table of the README is generated from it (``python tests/test_compat.py --write`` runs it and writes the
table).
"""

import math

import pytest
import torch

from atedm_kernels.sdxl import AtEdmConfig, SiToConfig, apply, apply_sito
from atedm_kernels.tools.models import build_tiny_pipeline

SIZE = 64  # pixels: an 8x8 latent, 16 tokens at the A2 level, 4 at the multi-layer level
# Identity settings; AT-EDM's step 0 is prune-less (its F-L blocks call the user's processor), step 1 prunes.
EXACT = {"atedm": lambda: AtEdmConfig(keep_ratio=1.0, prune_less_steps=1), "sito": lambda: SiToConfig(prune_ratio=0.0)}
APPLY = {"atedm": apply, "sito": apply_sito}
METHODS = ["atedm", "sito"]


def tiny_pipe(cls=None, **extra):
    base = build_tiny_pipeline(seed=0)
    pipe = base if cls is None else cls(**{**base.components, **extra})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps=2, seed=0, **kwargs):
    """Latents of one seeded generation (no VAE decode: exact and cheap)."""
    kwargs = {"height": SIZE, "width": SIZE, **kwargs}
    return pipe("a red cube", num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                output_type="latent", **kwargs).images


def processor_types(unet):
    return {name: type(p) for name, p in unet.attn_processors.items()}


def phases(handle):
    return [r.phase for r in handle.stats()]


def expected_phases(num_steps, fraction=0.3):
    early = math.ceil(round(fraction * num_steps, 9))
    return ["prune_less"] * early + ["normal"] * (num_steps - early)


def check_exact(pipe, method, run, config=None):
    """Dense vs. the method at its identity setting vs. removed: equal, equal, bit for bit."""
    dense = run(pipe)
    before = processor_types(pipe.unet)
    handle = APPLY[method](pipe, config or EXACT[method]())
    try:
        pruned = run(pipe)
        records = handle.stats()
    finally:
        handle.remove()
    assert torch.isfinite(pruned).all()
    torch.testing.assert_close(pruned, dense, rtol=1e-4, atol=1e-4)
    assert records and any(k is not None for r in records for k in r.kept.values())  # the pruning path ran
    assert all(r.kept[n] == r.tokens[n] for r in records for n in r.tokens)  # ... keeping every token
    assert processor_types(pipe.unet) == before
    assert torch.equal(run(pipe), dense)
    return records


# --------------------------------------------------------------------------------------------------------------
# Processors installed before or after apply (each of these failed before the per-call processor wrapping)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipe()


@pytest.fixture
def clean_pipe(pipe):
    """The shared pipeline, given back with diffusers' default processors and no handle."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    yield pipe
    handle = getattr(pipe.unet, "_atedm_handle", None)
    if handle is not None:
        handle.remove()
    pipe.unet.set_attn_processor(AttnProcessor2_0())


@pytest.mark.parametrize("method", METHODS)
def test_attention_slicing_before_apply(clean_pipe, method):
    clean_pipe.enable_attention_slicing(1)
    check_exact(clean_pipe, method, generate)


@pytest.mark.parametrize("method", METHODS)
def test_pag_pipeline_with_apply(pipe, method):
    from diffusers import StableDiffusionXLPAGPipeline

    pag = StableDiffusionXLPAGPipeline(**pipe.components, pag_applied_layers="mid")  # mid: a pruning block
    pag.set_progress_bar_config(disable=True)
    check_exact(pag, method, lambda p: generate(p, pag_scale=3.0))


@pytest.mark.parametrize("method", METHODS)
def test_set_default_attn_processor_after_apply(clean_pipe, method):
    from diffusers.models.attention_processor import AttnProcessor

    unet = clean_pipe.unet
    dense = generate(clean_pipe)
    handle = APPLY[method](clean_pipe, EXACT[method]())
    unet.set_default_attn_processor()
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())
    torch.testing.assert_close(generate(clean_pipe), dense, rtol=1e-4, atol=1e-4)
    assert all(k is not None for k in handle.stats()[-1].kept.values())
    handle.remove()
    assert all(type(p) is AttnProcessor for p in unet.attn_processors.values())


@pytest.mark.parametrize("method", METHODS)
def test_fuse_qkv_after_apply_then_remove_then_unfuse(method):
    pipe = tiny_pipe()
    dense = generate(pipe)
    before = processor_types(pipe.unet)
    handle = APPLY[method](pipe, EXACT[method]())
    pipe.fuse_qkv_projections()
    torch.testing.assert_close(generate(pipe), dense, rtol=1e-4, atol=1e-4)
    assert all(k is not None for k in handle.stats()[-1].kept.values())
    handle.remove()
    pipe.unfuse_qkv_projections()
    assert processor_types(pipe.unet) == before
    assert torch.equal(generate(pipe), dense)


def test_sito_keeps_pruning_after_a_processor_change(clean_pipe):
    """A processor set after apply_sito is wrapped: SiTo still prunes, and says so only because it did."""
    from diffusers.models.attention_processor import AttnProcessor

    dense = generate(clean_pipe)
    with apply_sito(clean_pipe, SiToConfig(prune_ratio=0.5, seed=0)) as handle:
        pruned = generate(clean_pipe)
        clean_pipe.unet.set_attn_processor(AttnProcessor())  # same math as SDPA
        again = generate(clean_pipe)
        record = handle.stats()[-1]
    assert not torch.allclose(pruned, dense, atol=1e-3)
    torch.testing.assert_close(again, pruned, rtol=1e-4, atol=1e-4)
    assert record.tokens and all(record.kept[n] < record.tokens[n] for n in record.tokens)


@pytest.mark.parametrize("method", METHODS)
def test_remove_never_overwrites_processors_installed_since(clean_pipe, method):
    from diffusers.models.attention_processor import AttnProcessor

    handle = APPLY[method](clean_pipe, EXACT[method]())
    generate(clean_pipe, steps=1)
    clean_pipe.unet.set_attn_processor(AttnProcessor())
    handle.remove()
    assert all(type(p) is AttnProcessor for p in clean_pipe.unet.attn_processors.values())


# --------------------------------------------------------------------------------------------------------------
# Seeded SiTo
# --------------------------------------------------------------------------------------------------------------


def test_seeded_sito_is_reproducible_whatever_ran_before(pipe):
    config = SiToConfig(prune_ratio=0.5, seed=3)
    with apply_sito(pipe, config):
        one_step = [generate(pipe, steps=1) for _ in range(2)]  # back-to-back 1-step generations
        series = [generate(pipe, steps=2) for _ in range(6)]  # generation 1 vs generation 6
        shared = type(pipe)(**{**pipe.components, "scheduler": type(pipe.scheduler).from_config(pipe.scheduler.config)})
        shared.set_progress_bar_config(disable=True)
        from_second_pipeline = generate(shared, steps=2)
    assert torch.equal(one_step[0], one_step[1])
    assert torch.equal(series[0], series[5])
    assert torch.equal(from_second_pipeline, series[0])


def _count_graphs(unet, config, inputs):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(unet, backend=backend)
    with apply_sito(unet, config), torch.no_grad():
        for t in (999.0, 500.0):
            compiled(**inputs, timestep=torch.tensor(t))
    torch._dynamo.reset()
    return len(graphs)


def test_seeded_sito_compiles_to_as_few_graphs_as_unseeded(pipe):
    from atedm_kernels.tools.models import unet_inputs

    inputs = unet_inputs(pipe.unet, 2, SIZE, SIZE, seed=1)
    del inputs["timestep"]
    unseeded = _count_graphs(pipe.unet, SiToConfig(prune_ratio=0.5), inputs)
    seeded = _count_graphs(pipe.unet, SiToConfig(prune_ratio=0.5, seed=0), inputs)
    assert seeded == unseeded <= 3, (seeded, unseeded)


# --------------------------------------------------------------------------------------------------------------
# The DSAP clock
# --------------------------------------------------------------------------------------------------------------


def test_four_step_lcm_with_defaults_prunes_every_block_from_step_2(pipe):
    from diffusers import LCMScheduler

    lcm = type(pipe)(**{**pipe.components, "scheduler": LCMScheduler.from_config(pipe.scheduler.config)})
    lcm.set_progress_bar_config(disable=True)
    with apply(lcm) as handle:
        generate(lcm, steps=4, guidance_scale=1.0)
        records = handle.stats()
    assert [r.step for r in records] == [0, 1, 2, 3]
    assert [r.phase for r in records] == ["prune_less"] * 2 + ["normal"] * 2  # ceil(0.3 * 4) = 2
    assert sum(k is None for k in records[0].kept.values()) == 4  # F-L: 2 first-down and 2 last-up blocks dense
    assert all(k is not None for r in records[2:] for k in r.kept.values())


def _loop_phases(unet, scheduler, steps, handle):
    """A hand-written denoising loop over the bare U-Net; returns the phases the handle recorded."""
    from atedm_kernels.tools.models import unet_inputs

    inputs = unet_inputs(unet, 1, SIZE, SIZE, seed=2)
    scheduler.set_timesteps(steps)
    latents = inputs.pop("sample") * scheduler.init_noise_sigma
    del inputs["timestep"]
    with torch.no_grad():
        for t in scheduler.timesteps:
            noise = unet(scheduler.scale_model_input(latents, t), t, **inputs).sample
            latents = scheduler.step(noise, t, latents).prev_sample
    return [(r.step, r.phase) for r in handle.stats()]


@pytest.mark.parametrize("scheduler_name", [
    "EulerDiscreteScheduler",
    pytest.param("HeunDiscreteScheduler", marks=pytest.mark.compat),
    pytest.param("KDPM2DiscreteScheduler", marks=pytest.mark.compat),
])
def test_second_pipeline_and_bare_loop_get_the_applied_pipelines_phases(pipe, scheduler_name):
    import diffusers

    make = getattr(diffusers, scheduler_name).from_config
    first = type(pipe)(**{**pipe.components, "scheduler": make(pipe.scheduler.config)})
    first.set_progress_bar_config(disable=True)
    second = type(pipe)(**{**pipe.components, "scheduler": make(pipe.scheduler.config)})  # its own scheduler
    second.set_progress_bar_config(disable=True)
    steps = 5
    with apply(first, AtEdmConfig()) as handle:
        generate(first, steps=steps, guidance_scale=1.0)
        applied = [(r.step, r.phase) for r in handle.stats()]
        generate(second, steps=steps, guidance_scale=1.0)
        shared = [(r.step, r.phase) for r in handle.stats()]
        loop = _loop_phases(first.unet, make(pipe.scheduler.config), steps, handle)
    assert applied == list(enumerate(expected_phases(steps)))  # ceil(0.3 * 5) = 2
    assert shared == applied and loop == applied


def test_img2img_starts_part_way_and_back_to_back_runs_restart(pipe):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with apply(pipe, AtEdmConfig()) as handle:
        img2img("a cube", image=image, strength=0.5, num_inference_steps=8, output_type="latent")
        assert [(r.step, r.num_steps, r.phase) for r in handle.stats()] == [(i, 8, "normal") for i in range(4, 8)]
        for _ in range(2):  # back-to-back one-step generations: each a run of its own, in the prune-less phase
            generate(pipe, steps=1, guidance_scale=1.0)
            assert [(r.step, r.num_steps, r.phase) for r in handle.stats()] == [(0, 1, "prune_less")]


# --------------------------------------------------------------------------------------------------------------
# The full matrix (python -m pytest -m compat tests/test_compat.py)
# --------------------------------------------------------------------------------------------------------------


def _scheduler(name, **overrides):
    def run(pipe):
        import diffusers

        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **overrides)
        return lambda p: generate(p, steps=4)
    return run


def _processors(setup):
    def run(pipe):
        setup(pipe)
        return generate
    return run


def _img2img(pipe):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    other = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    other.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return lambda p: other("a cube", image=image, strength=0.6, num_inference_steps=4, output_type="latent",
                           generator=torch.Generator().manual_seed(0)).images


def _inpaint(pipe):
    from diffusers import StableDiffusionXLInpaintPipeline

    other = StableDiffusionXLInpaintPipeline(**pipe.components)
    other.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)
    image, mask = torch.rand(1, 3, SIZE, SIZE, generator=gen), (torch.rand(1, 1, SIZE, SIZE, generator=gen) > 0.5)
    return lambda p: other("a cube", image=image, mask_image=mask.float(), strength=0.8, num_inference_steps=4,
                           output_type="latent", generator=torch.Generator().manual_seed(0)).images


def _controlnet(pipe):
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(pipe.unet).eval()
    other = StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=controlnet)
    other.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return lambda p: other("a cube", image=image, num_inference_steps=2, output_type="latent",
                           generator=torch.Generator().manual_seed(0)).images


def _pag(pipe):
    from diffusers import StableDiffusionXLPAGPipeline

    other = StableDiffusionXLPAGPipeline(**pipe.components, pag_applied_layers=["mid", "down_blocks.1"])
    other.set_progress_bar_config(disable=True)
    return lambda p: generate(other, pag_scale=3.0)


LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _lora_config():
    peft = pytest.importorskip("peft", reason="LoRA rows need peft (the test extra installs it)")
    # init_lora_weights=False: random A and B, so the adapter changes the output (the default starts B at zero)
    return peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=LORA_TARGETS)


def _lora_scaled(pipe):
    without = generate(pipe)
    torch.manual_seed(0)
    pipe.unet.add_adapter(_lora_config(), adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.5])
    assert (generate(pipe) - without).abs().max() > 0.1  # the adapter is live: the rows test LoRA, not its absence
    return generate


def _lora_fused(pipe):
    _lora_scaled(pipe)
    pipe.fuse_lora(adapter_names=["style"], lora_scale=0.8)
    return generate


def _lora_loaded(pipe):
    """``load_lora_weights`` from a state dict made here: a donor U-Net's random adapter in diffusers' format."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    config = _lora_config()
    donor = build_tiny_pipeline(seed=0).unet
    torch.manual_seed(1)
    donor.add_adapter(config)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(donor))
    without = generate(pipe)
    pipe.load_lora_weights({f"unet.{key}": value for key, value in state.items()}, adapter_name="loaded")
    assert (generate(pipe) - without).abs().max() > 0.1  # the loaded adapter is live
    return generate


def _ip_adapter(pipe):
    """IP-Adapter with a tiny random CLIP image encoder and random adapter weights (image projection to 4 tokens,
    ``to_k_ip`` / ``to_v_ip`` on every cross-attention), loaded with ``load_ip_adapter`` from a state dict."""
    import numpy as np
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    embed_dim, tokens, cross_dim = 16, 4, pipe.unet.config.cross_attention_dim
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=embed_dim)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pipe.register_modules(image_encoder=encoder, feature_extractor=processor)
    gen = torch.Generator().manual_seed(3)
    image_proj = {"proj.weight": 0.1 * torch.randn(cross_dim * tokens, embed_dim, generator=gen),
                  "proj.bias": torch.zeros(cross_dim * tokens), "norm.weight": torch.ones(cross_dim),
                  "norm.bias": torch.zeros(cross_dim)}
    adapter = {}
    for index, name in enumerate(pipe.unet.attn_processors):  # keyed by processor index, as diffusers saves them
        if name.endswith("attn2.processor"):
            width = pipe.unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            adapter[f"{index}.to_k_ip.weight"] = 0.1 * torch.randn(width, cross_dim, generator=gen)
            adapter[f"{index}.to_v_ip.weight"] = 0.1 * torch.randn(width, cross_dim, generator=gen)
    pipe.load_ip_adapter({"image_proj": image_proj, "ip_adapter": adapter}, subfolder=None, weight_name=None,
                         image_encoder_folder=None)
    pipe.set_ip_adapter_scale(0.7)
    images = [Image.fromarray((np.random.default_rng(seed).random((32, 32, 3)) * 255).astype("uint8"))
              for seed in (0, 1)]
    assert (generate(pipe, ip_adapter_image=images[0]) - generate(pipe, ip_adapter_image=images[1])).abs().max() > 0.05
    return lambda p: generate(p, ip_adapter_image=images[0])


def _compiled(pipe):
    torch._dynamo.reset()
    pipe.unet = torch.compile(pipe.unet, backend="aot_eager")
    return generate


# scenario -> (what the user sets up, returning how one generation runs; the "works with" table's wording)
MATRIX = {
    "sdpa": (lambda pipe: generate, "diffusers' default attention (SDPA)"),
    "attn-processor": (_processors(lambda p: p.unet.set_default_attn_processor()), "`set_default_attn_processor()`"),
    "sliced": (_processors(lambda p: p.enable_attention_slicing(1)), "`enable_attention_slicing()`"),
    "fused-qkv": (_processors(lambda p: p.fuse_qkv_projections()), "`fuse_qkv_projections()`"),
    "freeu": (_processors(lambda p: p.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)), "FreeU"),
    "pag": (_pag, "PAG (`StableDiffusionXLPAGPipeline`)"),
    "no-cfg": (lambda pipe: lambda p: generate(p, guidance_scale=1.0), "no classifier-free guidance"),
    "3-per-prompt": (lambda pipe: lambda p: generate(p, num_images_per_prompt=3), "several images per prompt"),
    "non-square": (lambda pipe: lambda p: generate(p, height=48, width=80), "non-square sizes"),
    "img2img": (_img2img, "img2img (starts part-way)"),
    "inpaint": (_inpaint, "inpainting"),
    "controlnet": (_controlnet, "ControlNet"),
    "euler": (_scheduler("EulerDiscreteScheduler"), "Euler"),
    "euler-a": (_scheduler("EulerAncestralDiscreteScheduler"), "Euler ancestral"),
    "dpm++2m": (_scheduler("DPMSolverMultistepScheduler"), "DPM++ 2M"),
    "ddim": (_scheduler("DDIMScheduler"), "DDIM"),
    "unipc": (_scheduler("UniPCMultistepScheduler"), "UniPC"),
    "lcm": (_scheduler("LCMScheduler"), "LCM"),
    "heun": (_scheduler("HeunDiscreteScheduler"), "Heun (second order)"),
    "kdpm2": (_scheduler("KDPM2DiscreteScheduler"), "KDPM2 (second order)"),
    "trailing": (_scheduler("EulerDiscreteScheduler", timestep_spacing="trailing"),
                 'Euler with `timestep_spacing="trailing"` (SDXL-Lightning, Turbo)'),
    "edm-euler": (_scheduler("EDMEulerScheduler"), "EDM Euler (`EDMEulerScheduler`)"),
    "edm-dpm++2m": (_scheduler("EDMDPMSolverMultistepScheduler"), "EDM DPM++ 2M (`EDMDPMSolverMultistepScheduler`)"),
    "lora": (_lora_scaled, "LoRA through PEFT (`add_adapter`, `set_adapters` at scale 0.5)"),
    "lora-fused": (_lora_fused, "LoRA fused (`fuse_lora(lora_scale=0.8)`)"),
    "lora-loaded": (_lora_loaded, "LoRA from a state dict (`load_lora_weights`)"),
    "ip-adapter": (_ip_adapter, "IP-Adapter (`load_ip_adapter`, an image prompt)"),
    "compile": (_compiled, "`torch.compile` of the U-Net"),
}


@pytest.mark.compat
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scenario", list(MATRIX))
def test_matrix(scenario, method, record_property):
    record_property("compat", (scenario, method))  # what the table writer reads: never parsed back from the test id
    pipe = tiny_pipe()
    run = MATRIX[scenario][0](pipe)
    config = AtEdmConfig(keep_ratio=1.0) if method == "atedm" else None  # AT-EDM with the default DSAP clock
    records = check_exact(pipe, method, run, config)
    num_steps = records[-1].num_steps
    assert num_steps is not None  # every pipeline's timesteps are schedule entries: no host read
    first = records[0].step
    want = expected_phases(num_steps)[first:] if method == "atedm" else ["normal"] * (num_steps - first)
    assert [r.step for r in records] == list(range(first, num_steps))
    assert [r.phase for r in records] == want


def test_table_writer_reads_each_case_from_its_recorded_property():
    """The table from a known set of reports: scenario and method where they belong, names with '-' and '+' too."""
    from types import SimpleNamespace

    def report(scenario, method, when, passed):
        return SimpleNamespace(user_properties=[("compat", (scenario, method))], when=when, passed=passed,
                               failed=not passed)

    outcomes = {}
    for r in (report("dpm++2m", "atedm", "setup", True), report("dpm++2m", "atedm", "call", True),
              report("attn-processor", "sito", "call", True), report("compile", "atedm", "call", False),
              report("euler-a", "sito", "call", True), report("euler-a", "sito", "teardown", False)):
        record_outcome(outcomes, r)
    assert outcomes == {("dpm++2m", "atedm"): True, ("attn-processor", "sito"): True, ("compile", "atedm"): False,
                        ("euler-a", "sito"): False}
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in works_with_table(outcomes).splitlines()}
    assert rows["DPM++ 2M"] == "| DPM++ 2M | yes | not run |"
    assert rows["`set_default_attn_processor()`"] == "| `set_default_attn_processor()` | not run | yes |"
    assert rows["`torch.compile` of the U-Net"] == "| `torch.compile` of the U-Net | **fails** | not run |"
    assert rows["Euler ancestral"] == "| Euler ancestral | not run | **fails** |"


def works_with_table(outcomes: dict[tuple[str, str], bool]) -> str:
    """The README's "works with" table from ``{(scenario, method): passed}`` of a :func:`test_matrix` run."""
    def cell(scenario, method):
        passed = outcomes.get((scenario, method))
        return "not run" if passed is None else "yes" if passed else "**fails**"

    rows = ["| with | AT-EDM | SiTo |", "|---|---|---|"]
    rows += [f"| {label} | {cell(name, 'atedm')} | {cell(name, 'sito')} |" for name, (_, label) in MATRIX.items()]
    return "\n".join(rows)


def record_outcome(outcomes: dict[tuple[str, str], bool], report) -> None:
    """Fold one pytest report of :func:`test_matrix` into ``{(scenario, method): passed}``: a case passes when its call
    passed and none of its phases failed. The case comes from the property the test recorded, not from its id
    (scenario names hold '-' and '+')."""
    case = dict(report.user_properties).get("compat")
    if case is not None and (report.when == "call" or report.failed):
        outcomes[tuple(case)] = outcomes.get(tuple(case), True) and report.passed


def main() -> None:
    """Run the matrix, print the table; ``--write`` also writes it into the README between its compat markers."""
    import sys
    from pathlib import Path

    outcomes = {}

    class Collect:
        def pytest_runtest_logreport(self, report):
            record_outcome(outcomes, report)

    pytest.main(["-q", "-p", "no:cacheprovider", "-m", "compat", f"{__file__}::test_matrix"], plugins=[Collect()])
    table = works_with_table(outcomes)
    print(table)
    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        start, end = "<!-- compat:start -->\n", "\n<!-- compat:end -->"
        text = readme.read_text()
        head, rest = text.split(start)
        readme.write_text(head + start + table + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()
