"""Command line of atedm-kernels."""

from __future__ import annotations

import argparse

import torch


def _run_ops(args: argparse.Namespace) -> int:
    import atedm_kernels as ak

    gen = torch.Generator().manual_seed(args.seed)
    q, k, v = (torch.randn(args.batch, args.heads, args.tokens, 64, generator=gen) for _ in range(3))
    out, amap = ak.attention_with_map(q, k, v)  # [B, H, N, D], [B, N, N]
    scores = ak.gwpr(amap, 10)  # [B, N]
    keep = max(1, round(args.keep_ratio * args.tokens))
    keep_idx, prune_idx = ak.select_tokens(scores, keep)
    src = ak.similarity_sources(amap, keep_idx, prune_idx)
    tokens = out.transpose(1, 2).flatten(2)  # [B, N, H*D]
    restored = ak.recover_tokens(ak.gather_tokens(tokens, keep_idx), keep_idx, prune_idx, src)
    print(f"attention_with_map: out {tuple(out.shape)}, amap {tuple(amap.shape)} {amap.dtype}")
    print(f"gwpr: scores sum to {scores.sum(-1).tolist()}")
    print(f"select_tokens: kept {keep} of {args.tokens} per sample; first kept {keep_idx[0, :8].tolist()}")
    print(f"recover_tokens: {tuple(restored.shape)}, kept tokens restored exactly: "
          f"{bool(torch.equal(restored.gather(1, keep_idx[..., None].expand_as(restored[:, :keep])), tokens.gather(1, keep_idx[..., None].expand_as(restored[:, :keep]))))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atedm", description="AT-EDM token pruning kernels for diffusion U-Nets")
    sub = parser.add_subparsers(dest="command")
    ops = sub.add_parser("ops", help="run the op chain once on random inputs and print what each op returned")
    ops.add_argument("--batch", type=int, default=2)
    ops.add_argument("--heads", type=int, default=4)
    ops.add_argument("--tokens", type=int, default=256)
    ops.add_argument("--keep-ratio", type=float, default=0.37)
    ops.add_argument("--seed", type=int, default=0)
    ops.set_defaults(func=_run_ops)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["ops", *(argv or [])])
    return args.func(args)
