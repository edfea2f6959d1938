"""Every CUDA kernel of ``csrc/`` at small, odd sizes, in every storage dtype: the program compute-sanitizer watches.

Run by ``tests/test_cuda_kernels.py::test_compute_sanitizer`` and by ``.ci/gpu``'s sanitizer step, each under
``compute-sanitizer --tool memcheck|racecheck|synccheck``. ``--device cpu`` runs the same calls through the
``auto`` backend on CPU tensors (``.ci/gpu --dry-run``), so the program cannot rot between GPU runs.

    python tests/cuda_sanitizer_workload.py [--device cuda|cpu]
"""

from __future__ import annotations

import argparse

import torch

import atedm_kernels as ak


def exercise(device: str) -> None:
    backend = "cuda" if device == "cuda" else "auto"
    torch.manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for n, channels in ((1, 3), (7, 5), (100, 8), (1000, 77), (1025, 640)):
            amap = torch.softmax(torch.randn(3, n, n, device=device), -1).to(dtype)  # [B, N, N]
            keep = max(1, round(0.37 * n))
            scores = ak.gwpr(amap, 3, 0.1, backend=backend)  # [B, N]
            keep_idx, prune_idx = ak.select_tokens(scores.to(dtype), keep, backend=backend)
            src = ak.similarity_sources(amap, keep_idx, prune_idx, backend=backend)  # [B, N - K]
            x = torch.randn(3, n, channels, device=device).to(dtype)  # [B, N, C]
            x_kept = ak.gather_tokens(x, keep_idx, backend=backend)  # [B, K, C]
            ak.recover_tokens(x_kept, keep_idx, prune_idx, src, backend=backend)
            ak.select_tokens(torch.zeros(3, n, device=device), n, backend=backend)  # all tied, keep everything
        if device != "cuda":
            continue
        # out-of-range indices: the CUDA kernels skip them, never dereference them (the references raise)
        x = torch.randn(2, 10, 6, device=device).to(dtype)
        bad = torch.tensor([[0, -5, 10, 3], [12, 9, -1, 2]], device=device)
        ak.gather_tokens(x, bad, backend=backend)
        ak.recover_tokens(x[:, :4], bad, torch.tensor([[1, 2, 4, 5, 6, 7], [0, 1, 3, 4, 5, 6]], device=device),
                          torch.tensor([[0, 9, -1, 1, 2, 3], [3, 4, 0, 1, 2, 3]], device=device), backend=backend)
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    exercise(args.device)
    print("sanitizer workload done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
