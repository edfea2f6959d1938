"""Train the Fashion-MNIST denoiser once: ``python -m atedm_kernels.tools.fashion.train``.

ε-prediction MSE on the 60,000 training images, classifier-free guidance training (the class dropped to
:data:`~.model.NULL_CLASS` with probability ``--uncond``), AdamW at a constant learning rate after a linear warm-up
(so the first ``n`` steps of a longer run are exactly a run of ``n`` steps), gradient norm clipped at 1, and an
exponential moving average of the weights, which is what gets saved. Every ``--save-every`` steps it writes the EMA
weights and ``train_log.json`` (the settings, the data's checksums, the loss curve), so a run cut short leaves a
usable checkpoint whose step count the log states.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path

import torch

from . import data, model as fashion_model

LOG_FILE = fashion_model.WEIGHTS / "train_log.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100, help="steps of linear learning-rate warm-up")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights")
    parser.add_argument("--uncond", type=float, default=0.1, help="probability of training on the null class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--log-every", type=int, default=25)
    parser.add_argument("--out", type=Path, default=fashion_model.DENOISER_FILE)
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "warmup", "threads", "save_every", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = data.load("train")  # [60000, 1, 32, 32], [60000]
    denoiser = fashion_model.FashionDenoiser().train()
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    scheduler = fashion_model.noise_scheduler()
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=args.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(args.seed)
    log = {
        "command": "python -m atedm_kernels.tools.fashion.train " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out",)),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data_sha256": data.SHA256,
        "parameters": sum(p.numel() for p in denoiser.parameters()),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
        "steps_done": 0, "seconds": 0.0, "loss": [],
    }
    order, position = torch.randperm(len(images), generator=generator), 0
    window, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        if position + args.batch > len(order):
            order, position = torch.randperm(len(images), generator=generator), 0
        index = order[position: position + args.batch]
        position += args.batch
        x0, label = images[index], labels[index].clone()  # [B, 1, 32, 32], [B]
        label[torch.rand(len(label), generator=generator) < args.uncond] = fashion_model.NULL_CLASS
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, fashion_model.TRAIN_TIMESTEPS, (len(x0),), generator=generator)
        loss = torch.nn.functional.mse_loss(denoiser(scheduler.add_noise(x0, noise, t), t, label), noise)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / args.warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), 1.0)
        optimizer.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), denoiser.parameters()):
                averaged.lerp_(current, 1 - decay)
        window.append(loss.item())
        if step % args.log_every == 0:
            log["loss"].append([step, sum(window) / len(window)])
            elapsed = time.perf_counter() - start
            print(f"step {step}/{args.steps}  loss {log['loss'][-1][1]:.4f}  {elapsed / step:.2f} s/step  "
                  f"{elapsed / 60:.1f} min", flush=True)
            window = []
        if step % args.save_every == 0 or step == args.steps:
            log["steps_done"], log["seconds"] = step, round(time.perf_counter() - start, 1)
            fashion_model.save(ema, args.out, {"steps": step, "seed": args.seed})
            args.out.with_name(LOG_FILE.name).write_text(json.dumps(log, indent=1) + "\n")
    if not math.isfinite(log["loss"][-1][1]):
        raise SystemExit("training diverged: the loss is not finite")


if __name__ == "__main__":
    main()
