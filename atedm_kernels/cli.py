"""``atedm`` (also ``python -m atedm_kernels``): demo, generate, flops, bench and eval."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AT-EDM")
    group.add_argument("--keep-ratio", type=float, default=0.37, help="fraction of tokens kept (default 0.37)")
    group.add_argument("--num-iters", type=int, default=10, help="G-WPR power iterations (default 10)")
    group.add_argument("--prune-less-steps", type=int, default=None,
                       help="DSAP: early steps with the prune-less blocks dense (default 30%% of the steps: the "
                       "paper's 15 of 50)")
    group.add_argument("--prune-less-blocks", default="F-L", help="DSAP blocks left dense early (default F-L)")
    group.add_argument("--dagger", action="store_true", help="AT-EDM-dagger: no pruning at the second level")
    group.add_argument("--backend", default="auto", choices=["auto", "reference", "triton", "cuda"])


def _config(args: argparse.Namespace, steps: int | None = None):
    from .sdxl import AtEdmConfig

    return AtEdmConfig(  # no --prune-less-steps: the config's prune_less_fraction (the paper's 15 of 50 steps)
        keep_ratio=args.keep_ratio,
        num_iters=args.num_iters,
        prune_less_steps=args.prune_less_steps,
        prune_less_blocks=args.prune_less_blocks,
        skip_second_level=args.dagger,
        backend=args.backend,
    )


def _sito_config(args: argparse.Namespace):
    from .sdxl.sito_layer import SiToConfig

    return SiToConfig(prune_ratio=args.sito_prune_ratio)


def _method_list(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - {"atedm", "sito"})
    if not methods or unknown:
        raise argparse.ArgumentTypeError(f"methods are 'atedm' and 'sito' (comma-separated), got {text!r}")
    return methods


def _methods(args: argparse.Namespace, steps: int) -> dict:
    """``{method: config}`` to compare against dense, from ``--method`` / ``--no-atedm``."""
    if args.no_atedm:
        if args.method is not None:
            raise ValueError("--no-atedm (dense only) cannot be combined with --method")
        return {}
    return {m: (_config(args, steps) if m == "atedm" else _sito_config(args)) for m in args.method or ["atedm"]}


def _meta_macs(unet_config: dict, height: int, width: int, methods: dict, steps: int,
               batch: int) -> dict[str, int | None]:
    """MACs per U-Net step (averaged over the schedule) for dense and each method; ``batch`` 2 with
    classifier-free guidance, 1 without."""
    from diffusers import UNet2DConditionModel

    from .flops import count_unet_macs

    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(unet_config)
    macs: dict[str, int | None] = {"dense": count_unet_macs(meta, height, width, batch=batch).total}
    for method, config in methods.items():
        macs[method] = count_unet_macs(meta, height, width, batch=batch, config=config, phase="average",
                                       num_steps=steps).total
    return macs


# ---------------------------------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import draw_selections, run_demo

    device = _device(args.device)
    scale = args.scale or ("full" if device.type == "cuda" else "tiny")
    size = args.size or (1024 if scale == "full" else 256)
    config = _config(args, args.steps)
    print(f"atedm demo: random-weight SD-XL-architecture U-Net ({scale}) on {device}, {size}x{size} px, batch 2 "
          f"(CFG), {args.steps} Euler steps, keep_ratio {config.keep_ratio}, prune-less steps "
          f"{config.prune_less_count(args.steps)}", flush=True)
    result = run_demo(scale, args.steps, size, size, config, device, seed=args.seed)
    print(f"{'':12}{'MACs/step':>14}{'time':>12}{'speed-up':>10}")
    print(f"{'dense':12}{result.dense_macs / 1e9:>12.2f} G{result.dense_ms:>10.1f} ms{1.0:>9.2f}x")
    print(f"{'AT-EDM':12}{result.atedm_macs / 1e9:>12.2f} G{result.atedm_ms:>10.1f} ms{result.speedup:>9.2f}x")
    print(f"MACs saved: {1 - result.atedm_macs / result.dense_macs:.1%} (averaged over the DSAP schedule)")
    picture = draw_selections(result.selections, Path(args.out) / "atedm_masks.png")
    print(f"pruning masks and G-WPR scores: {picture}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import ModelNotAvailableError, generate_images, load_pipeline, save_results

    device = _device(args.device)
    methods = {"dense": None, **_methods(args, args.steps)}  # bad flags fail here, before a pipeline loads
    try:
        pipe = load_pipeline(args.model, device)
    except ModelNotAvailableError as exc:
        print(f"atedm generate: {exc}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=not sys.stderr.isatty())
    batch = 2 if args.guidance > 1 else 1  # the pipeline batches the unconditional half only with guidance
    macs = _meta_macs(pipe.unet.config, args.height, args.width, {k: v for k, v in methods.items() if v},
                      args.steps, batch)
    results = generate_images(pipe, args.prompt, methods, seed=args.seed, steps=args.steps, guidance=args.guidance,
                              height=args.height, width=args.width, macs=macs)
    for r in results:
        print(f"{r.method:6} {r.seconds:7.2f} s  {r.prompt}")
    paths = save_results(results, Path(args.out))
    print(f"wrote {len(paths)} images to {args.out} (side by side: {paths[-1]})")
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from .flops import count_unet_macs
    from .sdxl import build_sdxl_unet

    meta = build_sdxl_unet(args.scale, device="meta")
    config = _config(args, args.num_steps)
    dense = count_unet_macs(meta, args.height, args.width, batch=args.batch)
    print(dense.table())
    print()
    for phase in ("normal", "prune_less", "average"):
        report = count_unet_macs(meta, args.height, args.width, batch=args.batch, config=config, phase=phase,
                                 num_steps=args.num_steps)
        print(f"AT-EDM {phase:10}: {report.total / 1e12:6.3f} T MACs per step "
              f"({1 - report.total / dense.total:.1%} less than dense {dense.total / 1e12:.3f} T)")
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from .unet_bench import main as bench_main

    return bench_main(extra)


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import EvalSettings, evaluate, load_clip, read_captions
    from .generate import ModelNotAvailableError, load_pipeline

    try:
        captions = read_captions(args.captions, args.num)
    except FileNotFoundError as exc:
        print(f"atedm eval: {exc}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    methods = _methods(args, args.steps)  # bad flags fail here, before a pipeline loads
    device = _device(args.device) if args.device else PartialState().device
    try:
        pipe = load_pipeline(args.model, device)
    except ModelNotAvailableError as exc:
        print(f"atedm eval: {exc}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=True)
    settings = EvalSettings(steps=args.steps, guidance=args.guidance, height=args.height, width=args.width,
                            seed=args.seed)
    results = evaluate(pipe, captions, Path(args.out), methods, settings,
                       clip_loader=lambda: load_clip(args.clip_model, device), feature=args.fid_feature,
                       reference_images=Path(args.reference_images) if args.reference_images else None)
    for method, scores in results.get("methods", {}).items():
        print(f"{method:6} " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return 0


# ---------------------------------------------------------------------------------------------------------------


def _add_generation_flags(parser: argparse.ArgumentParser, size: int) -> None:
    parser.add_argument("--model", required=True, help="local pipeline folder or an already-cached hub id")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--height", type=int, default=size)
    parser.add_argument("--width", type=int, default=size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--method", type=_method_list, default=None,
                        help="accelerations to compare with dense, comma-separated: atedm, sito (default atedm)")
    parser.add_argument("--no-atedm", action="store_true", help="dense only")
    parser.add_argument("--sito-prune-ratio", type=float, default=0.5, help="SiTo prune ratio (default 0.5)")
    _add_config_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atedm", description="AT-EDM token pruning for diffusion U-Nets")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="dense vs AT-EDM on a random-weight SD-XL U-Net, no download",
                          description="Runs a short denoising loop dense and with AT-EDM on a random-weight "
                          "SD-XL-architecture U-Net (tiny on CPU, full on GPU); prints MACs, time and speed-up; "
                          "writes a picture of the pruning masks and G-WPR scores.")
    demo.add_argument("--scale", choices=["tiny", "full"], default=None, help="default: full on GPU, tiny on CPU")
    demo.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024 full, 256 tiny)")
    demo.add_argument("--steps", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None)
    demo.add_argument("--out", default="atedm_demo", help="output folder for the picture (default atedm_demo)")
    _add_config_flags(demo)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="generate images dense and accelerated, side by side",
                         description="Generates each prompt dense and with AT-EDM (and/or SiTo) with the same "
                         "seed from a local StableDiffusionXLPipeline; writes PNGs and a side-by-side grid.")
    gen.add_argument("prompt", nargs="+", help="one or more prompts")
    gen.add_argument("--out", default="atedm_images")
    _add_generation_flags(gen, 1024)
    gen.set_defaults(func=cmd_generate)

    flops = sub.add_parser("flops", help="MACs per U-Net step, dense and under AT-EDM",
                           description="Counts multiply-accumulates of one U-Net step on a meta-device model.")
    flops.add_argument("--scale", choices=["tiny", "full"], default="full")
    flops.add_argument("--height", type=int, default=1024)
    flops.add_argument("--width", type=int, default=1024)
    flops.add_argument("--batch", type=int, default=2, help="2 = one image with classifier-free guidance")
    flops.add_argument("--num-steps", type=int, default=50)
    _add_config_flags(flops)
    flops.set_defaults(func=cmd_flops)

    sub.add_parser("bench", help="end-to-end U-Net benchmark (arguments after 'bench' go to it)", add_help=False,
                   description="Runs atedm_kernels.unet_bench; 'atedm bench --help' shows its options.")

    ev = sub.add_parser("eval", help="FID and CLIP score of accelerated vs dense generation",
                        description="Generates a caption list dense and accelerated (resumable, data-parallel "
                        "under accelerate/torchrun) and reports FID and CLIP score.")
    ev.add_argument("--captions", required=True, help="COCO captions_val2017.json or a text file, one per line")
    ev.add_argument("--num", type=int, default=None, help="use the first N deduplicated captions")
    ev.add_argument("--out", default="atedm_eval")
    ev.add_argument("--clip-model", default="laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
                    help="CLIP in Hugging Face format, local folder or cached id (default: OpenCLIP ViT-bigG/14)")
    ev.add_argument("--fid-feature", choices=["inception", "clip"], default="inception")
    ev.add_argument("--reference-images", default=None, help="real images for FID (default: the dense images)")
    _add_generation_flags(ev, 1024)
    ev.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the command's own output readable
    if argv[:1] == ["bench"]:
        return cmd_bench(argparse.Namespace(), argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as exc:  # bad flag values (AtEdmConfig, sizes, ...): one line, no traceback
        print(f"atedm {args.command}: error: {exc}", file=sys.stderr)
        return 2
