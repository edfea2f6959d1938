"""The evaluation harness end to end on CPU: a tiny random-weight pipeline saved to disk and loaded back by the real
loading code, a tiny random-weight CLIP for the CLIP score and CLIP-feature FID (real weights cannot be fetched)."""

import json

import pytest
import torch

from atedm_kernels.tools.eval import ClipImageFeatures, EvalSettings, evaluate, fid, load_clip, read_captions
from atedm_kernels.tools.generate import load_pipeline
from atedm_kernels.sdxl import AtEdmConfig


def test_read_captions_dedupes_coco_json(tmp_path):
    coco = {"annotations": [
        {"image_id": 1, "caption": "a dog "}, {"image_id": 1, "caption": "a brown dog"},
        {"image_id": 2, "caption": "a cat"}, {"image_id": 3, "caption": "a dog"},
    ]}
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps(coco))
    assert read_captions(path) == ["a dog", "a cat"]
    text = tmp_path / "captions.txt"
    text.write_text("one\n\ntwo\none\nthree\n")
    assert read_captions(text, limit=2) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="captions"):
        read_captions(tmp_path / "missing.txt")


def test_fid_is_zero_for_identical_sets_and_positive_otherwise(tmp_path, tiny_clip_dir):
    from PIL import Image

    gen = torch.Generator().manual_seed(1)
    paths = []
    for i in range(6):
        pixels = (torch.rand(32, 32, 3, generator=gen) * 255).byte().numpy()
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    feature = ClipImageFeatures(*load_clip(str(tiny_clip_dir), torch.device("cpu")))
    assert abs(fid(paths, paths, feature)) < 1e-3
    assert fid(paths[:3], paths[3:], feature) > 0


def test_evaluate_end_to_end_and_resume(tmp_path, tiny_pipeline_dir, tiny_clip_dir):
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"))
    pipe.set_progress_bar_config(disable=True)
    captions = ["a red cube", "a blue ball", "two green trees"]
    settings = EvalSettings(steps=2, height=64, width=64)
    loader = lambda: load_clip(str(tiny_clip_dir), torch.device("cpu"))  # noqa: E731
    methods = {"atedm": AtEdmConfig(prune_less_steps=1)}
    results = evaluate(pipe, captions, tmp_path, methods, settings, loader, feature="clip", progress=False)
    assert set(results["methods"]) == {"dense", "atedm"}
    assert all(torch.isfinite(torch.tensor(v)) for m in results["methods"].values() for v in m.values())
    assert "fid" in results["methods"]["atedm"] and json.loads((tmp_path / "metrics.json").read_text())
    first = (tmp_path / "atedm" / "000000.png").stat().st_mtime_ns
    (tmp_path / "dense" / "000001.png").unlink()  # an interrupted run: only the missing image is redone
    evaluate(pipe, captions, tmp_path, methods, settings, loader, feature="clip", progress=False)
    assert (tmp_path / "atedm" / "000000.png").stat().st_mtime_ns == first
    assert (tmp_path / "dense" / "000001.png").exists()


def test_reference_images_are_cropped_and_resumes_refuse_other_settings(tmp_path, tiny_pipeline_dir, tiny_clip_dir):
    from PIL import Image

    references = tmp_path / "coco"
    references.mkdir()
    gen = torch.Generator().manual_seed(2)
    for i, (w, h) in enumerate([(96, 80), (64, 120), (50, 50)]):  # raw COCO-like sizes, none the generated size
        Image.fromarray((torch.rand(h, w, 3, generator=gen) * 255).byte().numpy()).save(references / f"{i}.jpg")
    (references / "captions.txt").write_text("not an image")
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"))
    pipe.set_progress_bar_config(disable=True)
    loader = lambda: load_clip(str(tiny_clip_dir), torch.device("cpu"))  # noqa: E731
    settings = EvalSettings(steps=2, height=64, width=64)
    out = tmp_path / "eval"
    results = evaluate(pipe, ["a cube", "a ball"], out, {}, settings, loader, feature="clip",
                       reference_images=references, progress=False)
    assert "fid" in results["methods"]["dense"]
    with pytest.raises(ValueError, match="other settings"):
        evaluate(pipe, ["a cube", "a ball"], out, {}, EvalSettings(steps=3, height=64, width=64), loader,
                 feature="clip", progress=False)
