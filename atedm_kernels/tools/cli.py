"""``atedm`` (also ``python -m atedm_kernels``): demo, generate, flops, bench, eval and quality."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from ..backends import BACKENDS
from ..reference.gwpr import GWPR_CROSS_KINDS
from .generate import ModelNotAvailableError
from .models import SCALES

# What each command imports beyond the base install (torch, numpy, tqdm, pillow); the ``cli`` extra installs it all.
NEEDS = {
    "demo": ("diffusers", "matplotlib"),
    "generate": ("diffusers", "transformers", "accelerate"),
    "flops": ("diffusers",),
    "bench": ("diffusers",),
    "eval": ("diffusers", "transformers", "accelerate", "torchmetrics", "scipy"),
    "quality": ("diffusers", "safetensors", "matplotlib"),  # a peer whose package is missing is skipped
}
INSTALL_CLI = 'pip install "atedm-kernels[cli]"'


class MissingDependency(Exception):
    """An optional module the command needs is not installed (one line for the user, exit 2)."""


def _require(command: str) -> None:
    missing = [m for m in NEEDS.get(command, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependency(f"needs {', '.join(missing)}, not installed: {INSTALL_CLI} (the 'cli' extra)")


def _device(name: str | None) -> torch.device:
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r} is not a device ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch ({torch.__version__}) sees no CUDA device")
    return device


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AT-EDM")
    group.add_argument("--keep-ratio", type=float, default=0.37, help="fraction of tokens kept (default 0.37)")
    group.add_argument("--num-iters", type=int, default=10, help="G-WPR power iterations (default 10)")
    group.add_argument("--prune-less-steps", type=int, default=None,
                       help="DSAP: early steps with the prune-less blocks dense (default 30%% of the steps: the "
                       "paper's 15 of 50); 1 for 1-4 step distilled models, as AtEdmConfig.few_step()")
    group.add_argument("--prune-less-blocks", default="F-L", help="DSAP blocks left dense early (default F-L)")
    group.add_argument("--dagger", action="store_true", help="AT-EDM-dagger: no pruning at the second level")
    group.add_argument("--backend", default="auto", choices=list(BACKENDS))
    group.add_argument("--wpr", default="self", choices=["self", *GWPR_CROSS_KINDS],
                       help="token scores: self-attention G-WPR (default) or a cross-attention variant")


def _config(args: argparse.Namespace):
    from ..sdxl import AtEdmConfig

    return AtEdmConfig(  # no --prune-less-steps: the config's prune_less_fraction (the paper's 15 of 50 steps)
        keep_ratio=args.keep_ratio,
        num_iters=args.num_iters,
        prune_less_steps=args.prune_less_steps,
        prune_less_blocks=args.prune_less_blocks,
        skip_second_level=args.dagger,
        backend=args.backend,
        wpr=args.wpr,
    )


def _sito_config(args: argparse.Namespace):
    from ..sdxl.sito_layer import SiToConfig

    return SiToConfig(prune_ratio=args.sito_prune_ratio)


def _method_list(text: str) -> list[str]:
    from .methods import PRUNING

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(PRUNING))
    if not methods or unknown:
        raise argparse.ArgumentTypeError(f"methods are {' and '.join(map(repr, PRUNING))} (comma-separated), "
                                         f"got {text!r}")
    return methods


def _methods(args: argparse.Namespace) -> dict:
    """``{method: config}`` to compare against dense, from ``--method`` / ``--no-atedm``."""
    if args.no_atedm:
        if args.method is not None:
            raise ValueError("--no-atedm (dense only) cannot be combined with --method")
        return {}
    configs = {"atedm": _config, "sito": _sito_config}  # each of methods.PRUNING's names from its flags
    return {m: configs[m](args) for m in args.method or ["atedm"]}


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


def _demo_settings(args: argparse.Namespace):
    """The demo's settings from its flags; the defaults depend on the device (see ``atedm demo --help``)."""
    from .demo import DemoSettings

    device = _device(args.device)
    cpu_full = device.type != "cuda" and args.scale == "full"
    size = args.size or (256 if args.scale == "tiny" else 512 if cpu_full else 1024)
    steps = args.steps or (1 if cpu_full else 10)
    for flag, value, low in (("--size", size, 64), ("--steps", steps, 1), ("--picture-steps", args.picture_steps, 1),
                             ("--repeats", args.repeats or 1, 1)):
        if value < low or (flag.endswith("size") and value % 32):
            rule = "a multiple of 32, at least 64" if flag.endswith("size") else f"at least {low}"
            raise ValueError(f"{flag} must be {rule}, got {value}")
    return DemoSettings(
        scale=args.scale, size=size, steps=steps, repeats=args.repeats or (2 if cpu_full else 1),
        config=_config(args), picture_steps=args.picture_steps,
        picture_config=_config(args), device=device,
        out=Path(args.out), warmup_size=128 if cpu_full else size, seed=args.seed,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import check_memory, run, speed_table

    settings = _demo_settings(args)
    check_memory(settings)
    start = time.perf_counter()
    print("atedm demo: AT-EDM's selection on a trained model, and its speed on SD-XL's U-Net architecture with "
          "random weights (nothing is downloaded)",
          flush=True)
    result = run(settings, echo=lambda line: print(line, flush=True))
    print(speed_table(result))
    print(f"picture: {result.picture}")
    print(f"total time of the demo: {time.perf_counter() - start:.0f} s")
    return 0


def _check_prompts(prompts: list[str]) -> None:
    empty = [i + 1 for i, p in enumerate(prompts) if not p.strip()]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty: give each prompt some text")


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate_images, load_pipeline, save_results

    _check_prompts(args.prompt)
    device = _device(args.device)
    methods = {"dense": None, **_methods(args)}  # bad flags fail here, before a pipeline loads
    pipe = load_pipeline(args.model, device)
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


def _flops_table(dense, normal) -> str:
    """Per unit: dense MACs, AT-EDM normal-step MACs, and the tokens N->K of the blocks that prune."""
    header = f"{'module':<34}{'dense GMACs':>13}{'AT-EDM GMACs':>14}  tokens N->K (AT-EDM normal step)"
    lines = [dense.label, header, "-" * len(header)]
    for name, macs in dense.blocks.items():
        tokens = "{}->{}".format(*normal.tokens[name]) if name in normal.tokens else ""
        lines.append(f"{name:<34}{macs / 1e9:>13.2f}{normal.blocks.get(name, 0) / 1e9:>14.2f}  {tokens}".rstrip())
    lines.append("-" * len(header))
    lines.append(f"{'total':<34}{dense.total / 1e9:>13.2f}{normal.total / 1e9:>14.2f}")
    return "\n".join(lines)


def cmd_flops(args: argparse.Namespace) -> int:
    from .flops import count_unet_macs
    from .models import build_sdxl_unet

    meta = build_sdxl_unet(args.scale, device="meta")
    config = _config(args)
    dense = count_unet_macs(meta, args.height, args.width, batch=args.batch)
    reports = {phase: count_unet_macs(meta, args.height, args.width, batch=args.batch, config=config, phase=phase,
                                      num_steps=args.num_steps) for phase in ("normal", "prune_less", "average")}
    print(_flops_table(dense, reports["normal"]))
    print()
    for phase, report in reports.items():
        print(f"AT-EDM {phase:10}: {report.total / 1e12:6.3f} T MACs per step "
              f"({1 - report.total / dense.total:.1%} less than dense {dense.total / 1e12:.3f} T)")
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from .unet_bench import main as bench_main

    return bench_main(extra)


def cmd_eval(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from .eval import EvalSettings, evaluate, load_clip, read_captions
    from .generate import load_pipeline, resolve_model

    if args.fid_feature == "inception" and importlib.util.find_spec("torch_fidelity") is None:
        raise MissingDependency('FID on InceptionV3 features needs torch-fidelity, not installed: '
                                'pip install "atedm-kernels[fid]", or pass --fid-feature clip')
    captions = read_captions(args.captions, args.num)
    _check_prompts(captions)
    methods = _methods(args)  # bad flags fail here, before a pipeline loads
    resolve_model(args.clip_model, "config.json", "CLIP model")  # and a CLIP that is not here
    device = _device(args.device) if args.device else PartialState().device
    pipe = load_pipeline(args.model, device)
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

    demo = sub.add_parser(
        "demo", help="AT-EDM's selection on a trained model, and dense vs AT-EDM speed on SD-XL, no download",
        description="Part 1 (picture): a short AT-EDM DDIM loop on the trained Fashion-MNIST denoiser of SD-XL's "
        "layout (ships with the package; on the CPU, seconds) whose G-WPR scores and kept tokens, for every pruning "
        "block at every step, are drawn to OUT/atedm_masks.png beside the dense and AT-EDM samples of the same "
        "seed (class = seed mod 10). Part 2 (speed): denoising step(s) dense and with AT-EDM on SD-XL base's full "
        "U-Net architecture with random weights: on a CPU 1 step at 512 px in float32 (about 2 minutes on 2 cores, "
        "11 GB of memory), on a GPU 10 steps at 1024 px in float16. --scale tiny times the tiny U-Net instead "
        "(seconds).")
    demo.add_argument("--scale", choices=list(SCALES), default="full",
                      help="the timed U-Net: SD-XL's full architecture (default) or the tiny one")
    demo.add_argument("--size", type=int, default=None,
                      help="image side in pixels of the timed runs (default: 512 full on CPU, 1024 full on GPU, "
                      "256 tiny)")
    demo.add_argument("--steps", type=int, default=None,
                      help="denoising steps per timed run (default: 1 full on CPU, else 10)")
    demo.add_argument("--repeats", type=int, default=None,
                      help="timed runs of each variant, alternating (default: 2 full on CPU, else 1)")
    demo.add_argument("--picture-steps", type=int, default=10, help="denoising steps drawn (default 10)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--device", default=None, help="default: cuda if available, else cpu")
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
                   description="Runs atedm_kernels.tools.unet_bench; 'atedm bench --help' shows its options.")

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

    qual = sub.add_parser("quality", help="quality of every method on the trained Fashion-MNIST denoiser",
                          description="Samples the trained class-conditional denoiser of SD-XL's layout (shipped "
                          "with the package) with dense, AT-EDM's variants, the paper's ablations and the peers, "
                          "the same seeds and classes for each, and reports MACs per step, FID, class accuracy and "
                          "fidelity to dense (JSON and PNGs in --out). No data set needed.")
    qual.add_argument("--samples", type=int, default=120, help="samples per method (default 120)")
    qual.add_argument("--batch", type=int, default=120, help="samples per sampling run (default 120)")
    qual.add_argument("--methods", nargs="+", default=None, help="only these methods (dense always runs)")
    qual.add_argument("--no-sweep", action="store_true", help="skip the keep-ratio sweeps")
    qual.add_argument("--steps", type=int, default=25, help="DDIM steps per sample (default 25)")
    qual.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    qual.add_argument("--out", default="atedm_quality", help="output folder (default atedm_quality)")
    qual.set_defaults(func=cmd_quality)
    return parser


def cmd_quality(args: argparse.Namespace) -> int:
    from .fashion import quality

    for name in ("samples", "batch", "threads", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    known = [m.name for m in quality.methods()]
    unknown = [name for name in args.methods or () if name not in known]
    if unknown:
        raise ValueError(f"--methods: unknown method {unknown[0]!r}; known: {', '.join(known)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # for this command only: main() may be called in a longer-lived process
    try:
        print(f"atedm quality: {args.samples} samples per method on the trained Fashion-MNIST denoiser", flush=True)
        report = quality.run(args.samples, args.batch, sweep=not args.no_sweep, names=args.methods, steps=args.steps,
                             log=lambda line: print(line, flush=True))
        quality.write(report, Path(args.out), log=print)
    finally:
        torch.set_num_threads(threads)
    return 0


def _fail(command: str, message: str) -> int:
    print(f"atedm {command}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # keep the command's own output readable
    command = argv[0] if argv else ""
    # Failures a user can cause: one line naming the flag, file, model or extra; exit 2, no traceback.
    user_errors = (ValueError, TypeError, FileNotFoundError, ModelNotAvailableError, MissingDependency)
    try:
        if command == "bench":
            _require("bench")
            return cmd_bench(argparse.Namespace(), argv[1:])
        args = build_parser().parse_args(argv)
        _require(args.command)
        return args.func(args)
    except user_errors as exc:
        return _fail(command, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except ModuleNotFoundError as exc:  # an optional module imported deeper than NEEDS knows
        return _fail(command, f"needs {exc.name}, not installed: {INSTALL_CLI} (the 'cli' extra)")
    except BrokenPipeError:  # `atedm flops | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- Python flushes stdout at exit; let it go nowhere
        return 0
