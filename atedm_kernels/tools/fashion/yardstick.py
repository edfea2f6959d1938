"""The yardstick: a small CNN classifier trained on Fashion-MNIST, whose penultimate features give a Fréchet
distance (FID, as Inception's features do for photographs) and whose predictions give the class accuracy of
class-conditional samples.

``python -m atedm_kernels.tools.fashion.yardstick`` trains it once (``--epochs`` over the 60,000 training images,
seeded), reports its accuracy on the 10,000 held-out images, and writes the weights and the held-out images'
feature statistics (mean ``[F]``, covariance ``[F, F]``), so measuring needs no data set installed.

FID between feature sets with means ``m1, m2`` and covariances ``S1, S2``:
``|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, computed in float64 with the square root's trace from the
eigenvalues of ``S1^(1/2) S2 S1^(1/2)``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from . import data
from .model import WEIGHTS

CLASSIFIER_FILE = WEIGHTS / "yardstick.safetensors"
REFERENCE_FILE = WEIGHTS / "reference_stats.safetensors"  # held-out images' feature mean and covariance
LOG_FILE = WEIGHTS / "yardstick_log.json"
FEATURES = 128


class Yardstick(nn.Module):
    """``features(x [B, 1, 32, 32] in [-1, 1]) -> [B, 128]``; ``forward`` gives the class logits ``[B, 10]``."""

    def __init__(self) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU(),
                    nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.GELU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(*stage(1, 32), *stage(32, 64), *stage(64, 128),  # 32 -> 4
                                  nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 16, FEATURES), nn.GELU())
        self.head = nn.Linear(FEATURES, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images.clamp(-1.0, 1.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_yardstick(path: Path = CLASSIFIER_FILE) -> Yardstick:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} is missing: python -m atedm_kernels.tools.fashion.yardstick makes it")
    model = Yardstick()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def features_and_predictions(model: Yardstick, images: torch.Tensor, batch: int = 500):
    """``(features [N, F] float64, predicted class [N])`` of ``images`` ``[N, 1, 32, 32]``."""
    feats, preds = [], []
    for chunk in images.split(batch):
        f = model.features(chunk.float())
        feats.append(f.double())
        preds.append(model.head(f).argmax(1))
    return torch.cat(feats), torch.cat(preds)


def statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[F]`` and (unbiased) covariance ``[F, F]`` of ``features`` ``[N, F]``, float64."""
    return features.mean(0), torch.cov(features.T)


def load_reference(path: Path = REFERENCE_FILE) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    stats = load_file(str(path))
    return stats["mean"], stats["cov"]


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """The Fréchet distance of two Gaussians (module docstring), float64."""
    mean1, cov1, mean2, cov2 = (t.double() for t in (mean1, cov1, mean2, cov2))
    values, vectors = torch.linalg.eigh(cov1)
    root1 = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T  # S1^(1/2)
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()  # tr((S1 S2)^(1/2))
    return float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    train_x, train_y = data.load("train")
    test_x, test_y = data.load("test")
    model = Yardstick()
    steps = args.epochs * (len(train_x) // args.batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for start in range(0, len(order) - args.batch + 1, args.batch):
            index = order[start: start + args.batch]
            x = train_x[index]
            flip = torch.rand(len(x), generator=generator) < 0.5  # garments are left-right symmetric
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = nn.functional.cross_entropy(model(x), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        _, predicted = features_and_predictions(model, test_x)
        accuracy = (predicted == test_y).double().mean().item()
        print(f"epoch {epoch + 1}/{args.epochs}: held-out accuracy {accuracy:.4f}", flush=True)
    features, _ = features_and_predictions(model, test_x)
    mean, cov = statistics(features)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(CLASSIFIER_FILE))
    save_file({"mean": mean, "cov": cov}, str(REFERENCE_FILE))
    LOG_FILE.write_text(json.dumps({
        "command": "python -m atedm_kernels.tools.fashion.yardstick " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items()),
        "held_out_accuracy": accuracy, "held_out_images": len(test_x), "features": FEATURES,
        "data_sha256": data.SHA256, "torch": torch.__version__,
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
