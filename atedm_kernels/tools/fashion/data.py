"""Fashion-MNIST as tensors: 28x28 images padded to 32x32 (the U-Net's three levels halve it twice), in [-1, 1].

The four IDX files come from Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``) or any
folder holding them; :data:`SHA256` pins their content, so a run on other bytes stops with one line.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "ATEDM_FASHION_MNIST"  # a folder with the four .gz files, where they are not at DEFAULT_ROOT
FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
SHA256 = {  # the files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SIZE = 32  # pixels per side after padding
PAD = (SIZE - 28) // 2


def root() -> Path:
    return Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file's array: a big-endian header (magic: two zero bytes, a type code, the rank; then the sizes)."""
    raw = gzip.decompress(path.read_bytes())
    rank = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def load(split: str, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of ``split`` ("train": 60,000, "test": 10,000): images ``[N, 1, 32, 32]`` float32 in
    [-1, 1] (the 2-pixel border is background, -1), labels ``[N]`` int64 in 0..9."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    paths = {kind: root() / FILES[split, kind] for kind in ("images", "labels")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: apt-get install dataset-fashion-mnist, or set {ROOT_ENV} "
                                    "to a folder with the four Fashion-MNIST .gz files")
        if verify and file_sha256(path) != SHA256[path.name]:
            raise ValueError(f"{path}: sha256 differs from the Fashion-MNIST release this project pins")
    images = torch.from_numpy(_read_idx(paths["images"]).copy()).float().div(127.5).sub(1.0)  # [N, 28, 28]
    images = torch.nn.functional.pad(images[:, None], (PAD,) * 4, value=-1.0)  # [N, 1, 32, 32]
    labels = torch.from_numpy(_read_idx(paths["labels"]).astype(np.int64))  # [N]
    return images, labels
