"""``atedm generate``: images from a local SD-XL pipeline, dense and accelerated, side by side with the same seed."""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch


class ModelNotAvailableError(RuntimeError):
    """The model is neither a local folder nor already in the Hugging Face cache (nothing is ever downloaded)."""


@dataclass
class Generated:
    method: str  # "dense", "atedm" or "sito"
    prompt: str
    image: object  # PIL.Image.Image
    seconds: float
    macs_per_step: int | None


def how_to_get(model: str) -> str:
    """The one-line advice for weights that are not on this machine."""
    folder = model.rstrip("/").split("/")[-1] or "model"
    return (f"on a machine with internet, run `hf download {model} --local-dir {folder}` (older huggingface_hub: "
            f"`huggingface-cli download`), copy the folder here and pass its path")


def _in_hub_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # not a valid hub id either (HFValidationError)
        return False


def resolve_model(model: str, marker: str, what: str) -> str:
    """``model`` as a local folder path or a cached hub id holding ``marker``; else ModelNotAvailableError."""
    path = Path(model).expanduser()
    if path.is_file():
        hint = " (StableDiffusionXLPipeline.from_single_file converts a checkpoint into one)" * (what == "model")
        raise ModelNotAvailableError(f"{what} {model!r} is a single file: pass a saved {what} folder{hint}")
    if path.is_dir():
        if not (path / marker).is_file():
            raise ModelNotAvailableError(f"{what} folder {model!r} has no {marker}: not a saved {what}")
        return str(path)
    if model.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"{what} folder {model!r} does not exist")
    if not _in_hub_cache(model, marker):
        raise ModelNotAvailableError(
            f"{what} {model!r} is not a local folder and not in the Hugging Face cache (atedm never downloads): "
            + how_to_get(model)
        )
    return model


@contextlib.contextmanager
def quiet_loading():
    """Library warnings and info logs while loading weights stay off the command line."""
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        diffusers_logging.set_verbosity(level)


def load_pipeline(model: str, device: torch.device):
    """A ``StableDiffusionXLPipeline`` from a local folder or the local cache only (never downloads)."""
    model = resolve_model(model, "model_index.json", "model")  # before importing diffusers: a bad path fails fast
    from diffusers import StableDiffusionXLPipeline

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    try:
        with quiet_loading():
            pipe = StableDiffusionXLPipeline.from_pretrained(model, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotAvailableError(f"model {model!r} could not be loaded as an SD-XL pipeline: {first}") from exc
    return pipe.to(device)


def generate_images(pipe, prompts: list[str], methods: dict, *, seed: int, steps: int, guidance: float,
                    height: int, width: int, macs: dict[str, int | None]) -> list[Generated]:
    """Generate every prompt with every method (``{name: config or None}``), same seed for all."""
    from .methods import installed

    results = []
    for method, config in methods.items():
        with installed(pipe, config):
            # One untimed step first: kernel compilation, autotuning and allocator warm-up are not the method's.
            pipe(prompts[0], num_inference_steps=1, guidance_scale=guidance, height=height, width=width)
            for prompt in prompts:
                generator = torch.Generator(device="cpu").manual_seed(seed)
                start = time.perf_counter()
                image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=height,
                             width=width, generator=generator).images[0]
                if pipe.device.type == "cuda":
                    torch.cuda.synchronize()
                results.append(Generated(method, prompt, image, time.perf_counter() - start, macs.get(method)))
    return results


def macs_text(macs: int) -> str:
    """``6.76 T MACs/step``; below a T, in G (a tiny model's ``0.06 G``, not ``0.00 T``)."""
    return f"{macs / 1e12:.2f} T MACs/step" if macs >= 1e12 else f"{macs / 1e9:.2f} G MACs/step"


def side_by_side(results: list[Generated]):
    """One row per prompt, one column per method, with time and MACs written under each image."""
    from PIL import Image, ImageDraw

    prompts = list(dict.fromkeys(r.prompt for r in results))
    methods = list(dict.fromkeys(r.method for r in results))
    width, height = results[0].image.size
    caption = 36
    grid = Image.new("RGB", (width * len(methods), (height + caption) * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    by_key = {(r.prompt, r.method): r for r in results}
    for row, prompt in enumerate(prompts):
        for col, method in enumerate(methods):
            r = by_key[(prompt, method)]
            x, y = col * width, row * (height + caption)
            grid.paste(r.image, (x, y))
            macs = macs_text(r.macs_per_step) if r.macs_per_step else "MACs n/a"
            draw.text((x + 4, y + height + 2), f"{method}: {r.seconds:.2f} s", fill="black")
            draw.text((x + 4, y + height + 18), macs, fill="black")
    return grid


def save_results(results: list[Generated], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    prompts = list(dict.fromkeys(r.prompt for r in results))
    for r in results:
        path = out_dir / f"{prompts.index(r.prompt):03d}_{r.method}.png"
        r.image.save(path)
        paths.append(path)
    grid_path = out_dir / "grid.png"
    side_by_side(results).save(grid_path)
    paths.append(grid_path)
    return paths
