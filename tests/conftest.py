"""Shared test configuration: ``gpu`` tests skip cleanly where CUDA is missing; every test gets fresh seeds."""

import os

import torch

if not torch.cuda.is_available():
    # Triton fixes interpreted-vs-compiled when triton.language is first imported (diffusers imports it early), so
    # CPU runs must ask for the interpreter before anything else loads Triton. Never on a GPU: benchmarks and GPU
    # tests there must run compiled kernels.
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from atedm_kernels.tools.models import build_tiny_pipeline  # noqa: E402
from atedm_kernels.tools.models import _tiny_tokenizer_files  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def gen():
    """A fresh CPU generator per test (fixed seed: failures reproduce; random inputs, never zeros)."""
    return torch.Generator().manual_seed(0x5EED)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = tmp_path_factory.mktemp("clip")
    vocab, merges = _tiny_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(vocab), str(merges), model_max_length=77, pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe")
    build_tiny_pipeline(seed=0).save_pretrained(folder)
    return folder
