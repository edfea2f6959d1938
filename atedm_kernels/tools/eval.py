"""Quality evaluation: FID and CLIP score of accelerated generation against dense, on a caption list.

Protocol (the paper's supplementary A.4): MS-COCO 2017 validation captions, deduplicated so each image has one
caption; images generated with the same seed per caption by the dense pipeline and by each accelerated method;
CLIP score with an OpenCLIP ViT-G/14 (in Hugging Face format, ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``);
FID with torchmetrics' FrechetInceptionDistance against the user's reference images (e.g. COCO val center-cropped
to the generation size) when given, else against the dense pipeline's images (fidelity to the unaccelerated model).
``feature="clip"`` computes FID on the CLIP model's image embeddings instead of InceptionV3 features.

Generation is resumable (an image already on disk is not generated again) and data-parallel: launched with
``accelerate launch`` or ``torchrun``, each process takes its share of the captions on its own GPU, and the main
process computes the metrics once all images exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_CLIP_MODEL = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"


def read_captions(path: str | Path, limit: int | None = None) -> list[str]:
    """Captions from a COCO ``captions_val2017.json`` (first caption of each image) or a text file (one a line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"captions file {str(path)!r} does not exist")
    if path.suffix == ".json":
        annotations = json.loads(path.read_text())["annotations"]
        first_per_image: dict[int, str] = {}
        for ann in annotations:
            first_per_image.setdefault(ann["image_id"], ann["caption"].strip())
        captions = list(first_per_image.values())
    else:
        captions = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    captions = list(dict.fromkeys(captions))  # deduplicated, order kept
    return captions[:limit] if limit is not None else captions


class PooledClip(nn.Module):
    """A transformers ``CLIPModel`` whose ``get_*_features`` return the projected embedding tensors.

    transformers 5 returns model-output objects there, torchmetrics' CLIPScore expects tensors.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(features) -> torch.Tensor:
        return features if isinstance(features, torch.Tensor) else features.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(model_name_or_path: str, device: torch.device):
    """A CLIP model (as :class:`PooledClip`) and its processor in Hugging Face format, from a local folder or the
    local cache only."""
    from transformers import CLIPModel, CLIPProcessor

    from .generate import ModelNotAvailableError, quiet_loading, resolve_model

    name = resolve_model(model_name_or_path, "config.json", "CLIP model")
    try:
        with quiet_loading():
            model = CLIPModel.from_pretrained(name, local_files_only=True).to(device).eval()
            processor = CLIPProcessor.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelNotAvailableError(f"CLIP model {name!r} could not be loaded: {first}") from exc
    return PooledClip(model), processor


class ClipImageFeatures(nn.Module):
    """CLIP image embeddings as FID features: float images in [0, 1] ``[B, 3, H, W]`` -> ``[B, E]``."""

    def __init__(self, model, processor) -> None:
        super().__init__()
        self.model = model
        self.processor = processor
        self.num_features = model.config.projection_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=list(images.float().cpu()), return_tensors="pt", do_rescale=False)
        device = next(self.model.parameters()).device
        return self.model.get_image_features(pixel_values=pixels["pixel_values"].to(device))  # [B, E]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _image_tensor(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image as float ``[3, H, W]`` in [0, 1]; with ``size=(H, W)``, center-cropped to that aspect ratio and
    resized (bicubic) to it, as the paper prepares COCO's reference images."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    if size is not None and image.size != (size[1], size[0]):
        height, width = size
        scale = max(width / image.width, height / image.height)
        crop_w, crop_h = round(width / scale), round(height / scale)
        left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)  # [3, H, W]


def _batches(paths: list[Path], size: int, image_size: tuple[int, int] | None = None):
    for start in range(0, len(paths), size):
        yield torch.stack([_image_tensor(p, image_size) for p in paths[start : start + size]])  # [b, 3, H, W]


def clip_score(image_paths: list[Path], captions: list[str], clip, batch_size: int = 16) -> float:
    """torchmetrics' CLIP score, ``100 * mean max(cos(image, caption), 0)``, with ``clip = (model, processor)``."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=lambda: clip)
    device = next(clip[0].parameters()).device
    metric.to(device)  # torchmetrics moves the model to the images' device: keep both on the CLIP's
    for start, images in zip(range(0, len(image_paths), batch_size), _batches(image_paths, batch_size)):
        pixels = (images * 255.0).to(device)  # CLIPScore takes 0..255
        metric.update(list(pixels), captions[start : start + len(images)])
    return float(metric.compute())


def fid(real_paths: list[Path], fake_paths: list[Path], feature: int | nn.Module = 2048, batch_size: int = 16,
        image_size: tuple[int, int] | None = None) -> float:
    """torchmetrics' FID; ``image_size`` center-crops and resizes the real images to the generated size."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=feature, normalize=True)
    for images in _batches(real_paths, batch_size, image_size):
        metric.update(images, real=True)
    for images in _batches(fake_paths, batch_size):
        metric.update(images, real=False)
    return float(metric.compute())


@dataclass
class EvalSettings:
    steps: int = 50
    guidance: float = 5.0
    height: int = 1024
    width: int = 1024
    seed: int = 0


def generate_missing(pipe, captions: list[str], indices: list[int], folder: Path, method: str, config,
                     settings: EvalSettings, progress: bool = True) -> int:
    """Generate ``captions[i]`` for each ``i`` in ``indices`` into ``folder/{i:06d}.png`` unless it exists."""
    from tqdm.auto import tqdm

    from .methods import installed

    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, captions, method, config, settings)
    todo = [i for i in indices if not (folder / f"{i:06d}.png").exists()]
    if not todo:
        return 0
    with installed(pipe, config):
        for i in tqdm(todo, desc=f"{method} images", disable=not progress):
            generator = torch.Generator(device="cpu").manual_seed(settings.seed + i)
            image = pipe(captions[i], num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                         height=settings.height, width=settings.width, generator=generator).images[0]
            tmp = folder / f"{i:06d}.tmp.png"
            image.save(tmp)
            tmp.rename(folder / f"{i:06d}.png")  # a crash mid-write never leaves a half image behind
    return len(todo)


def _check_manifest(folder: Path, captions: list[str], method: str, config, settings: EvalSettings) -> None:
    """Resume only what was generated with the same captions, method config and settings."""
    import dataclasses
    import hashlib

    manifest = {
        "method": method,
        "config": repr(config),
        "settings": dataclasses.asdict(settings),
        "captions_sha256": hashlib.sha256("\n".join(captions).encode()).hexdigest(),
    }
    path = folder / "manifest.json"
    if path.exists():
        found = json.loads(path.read_text())
        if found != manifest:
            raise ValueError(
                f"{folder} holds images generated with other settings ({found}); "
                "use another output folder or delete it to start over"
            )
    else:
        path.write_text(json.dumps(manifest, indent=2))


def evaluate(pipe, captions: list[str], out_dir: Path, methods: dict, settings: EvalSettings,
             clip_loader: Callable, feature: str = "inception", reference_images: Path | None = None,
             progress: bool = True) -> dict:
    """Generate (resumably, split across processes) and score every method; returns the metrics on the main
    process (and ``{}`` on the others)."""
    from accelerate import PartialState

    if feature not in ("inception", "clip"):
        raise ValueError(f"feature must be 'inception' or 'clip', got {feature!r}")
    state = PartialState()
    indices = list(range(len(captions)))
    real = None
    if reference_images is not None:
        real = sorted(p for p in Path(reference_images).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(real) < 2:
            raise ValueError(f"reference_images {str(reference_images)!r} holds {len(real)} images; FID needs more")
    clip = fid_feature = None
    if state.is_main_process:  # metric models load before hours of generation, so a missing one fails fast
        clip = clip_loader()
        fid_feature = ClipImageFeatures(*clip) if feature == "clip" else 2048
        from torchmetrics.image.fid import FrechetInceptionDistance

        FrechetInceptionDistance(feature=fid_feature, normalize=True)  # InceptionV3 needs torch-fidelity
    with state.split_between_processes(indices) as mine:
        for method, config in {"dense": None, **methods}.items():
            generate_missing(pipe, captions, mine, out_dir / method, method, config, settings,
                             progress and state.is_local_main_process)
    state.wait_for_everyone()
    if not state.is_main_process:
        return {}

    def paths(method):
        return [out_dir / method / f"{i:06d}.png" for i in indices]

    if real is None:
        real = paths("dense")
    size = (settings.height, settings.width)
    results = {"num_captions": len(captions), "fid_reference": str(reference_images or "dense"),
               "fid_feature": feature, "clip_score": "torchmetrics: 100 * mean max(cos, 0)", "methods": {}}
    for method in ["dense", *methods]:
        scores = {"clip_score": clip_score(paths(method), captions, clip)}
        if reference_images is not None or method != "dense":
            scores["fid"] = fid(real, paths(method), fid_feature, image_size=size)
        results["methods"][method] = scores
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results
