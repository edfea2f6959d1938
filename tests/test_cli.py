"""Every ``atedm`` subcommand on CPU with the tiny random-weight models."""

import subprocess
import sys

import pytest

from atedm_kernels.tools.cli import build_parser, main

SUBCOMMANDS = ["demo", "generate", "flops", "eval"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert command in capsys.readouterr().out


def test_python_dash_m_entry_point():
    done = subprocess.run([sys.executable, "-m", "atedm_kernels", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "demo" in done.stdout


def test_generate_missing_model_fails_with_one_line(capsys):
    assert main(["generate", "--model", "/nonexistent", "a cat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "/nonexistent" in err[0] and "Traceback" not in err[0]


def test_generate_writes_images_and_grid(tmp_path, tiny_pipeline_dir, capsys):
    out = tmp_path / "images"
    code = main(["generate", "a red cube", "a blue ball", "--model", str(tiny_pipeline_dir), "--steps", "2",
                 "--height", "64", "--width", "64", "--prune-less-steps", "1", "--method", "atedm,sito",
                 "--out", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.glob("*.png"))
    expected = [f"{i:03d}_{m}.png" for i in range(2) for m in ("atedm", "dense", "sito")] + ["grid.png"]
    assert names == expected
    from PIL import Image

    assert Image.open(out / "grid.png").size[0] == 3 * 64  # dense, AT-EDM and SiTo side by side, same seed


def test_demo_tiny_prints_labelled_times_and_writes_a_picture(tmp_path, capsys):
    code = main(["demo", "--scale", "tiny", "--size", "64", "--steps", "2", "--picture-steps", "2",
                 "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    for words in ("[picture]", "[speed]", "estimate", "time per step", "total (1 run x 2 steps)", "speed-up",
                  "AT-EDM, DSAP mean of 2 steps (1 prune-less)", "total time of the demo"):
        assert words in printed, words
    from PIL import Image

    picture = Image.open(tmp_path / "atedm_masks.png")
    assert picture.size[0] > 200 and picture.size[1] > 200


def test_demo_defaults_on_a_cpu_time_the_full_model_at_512_px():
    from atedm_kernels.tools.cli import _demo_settings

    settings = _demo_settings(build_parser().parse_args(["demo", "--device", "cpu"]))
    assert (settings.scale, settings.size, settings.steps, settings.repeats) == ("full", 512, 1, 2)
    assert settings.warmup_size == 128 and settings.picture_steps == 10
    tiny = _demo_settings(build_parser().parse_args(["demo", "--device", "cpu", "--scale", "tiny"]))
    assert (tiny.size, tiny.steps, tiny.repeats, tiny.warmup_size) == (256, 10, 1, 256)


def test_demo_refuses_in_one_line_without_the_memory(monkeypatch, capsys):
    import atedm_kernels.tools.demo as demo

    monkeypatch.setattr(demo, "available_memory", lambda: 2 * 10**9)
    assert main(["demo", "--device", "cpu"]) == 2  # refused before anything is built
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale full" in err[0] and "2.0 GB are available" in err[0]


def test_flops_prints_the_table_with_tokens(capsys):
    assert main(["flops", "--scale", "tiny", "--height", "256", "--width", "256"]) == 0
    printed = capsys.readouterr().out
    assert "normal" in printed and "average" in printed
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith(("down", "mid", "up"))}
    # The tiny U-Net at 256 px: A2 blocks at 16x16 = 256 tokens keep 95, A4 blocks at 8x8 = 64 tokens keep 24.
    assert rows["down_blocks.1.attentions.0"][-1] == "256->95" and rows["mid_block.attentions.0"][-1] == "64->24"
    assert len(rows["down_blocks.0.resnets.0"]) == 3  # no pruning there: no tokens column
    assert float(rows["mid_block.attentions.0"][2]) < float(rows["mid_block.attentions.0"][1])


def test_eval_end_to_end(tmp_path, tiny_pipeline_dir, tiny_clip_dir, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red cube\na blue ball\n")
    code = main(["eval", "--model", str(tiny_pipeline_dir), "--captions", str(captions), "--steps", "2",
                 "--height", "64", "--width", "64", "--prune-less-steps", "1", "--clip-model", str(tiny_clip_dir),
                 "--fid-feature", "clip", "--out", str(tmp_path / "eval")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "clip_score" in printed and "fid" in printed
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_parser_lists_every_subcommand():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert set(SUBCOMMANDS) | {"bench"} <= set(choices)


def test_bench_runs_the_e2e_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    assert main(["bench", "--smoke", "--variants", "dense", "atedm-normal", "--out", str(out)]) == 0
    import json

    rows = {row["variant"]: row for row in json.loads(out.read_text())["rows"]}
    assert {"dense", "atedm-normal"} <= set(rows) and rows["atedm-normal"]["median_ms"] > 0


@pytest.mark.parametrize("wpr", ["self", "entropy", "power"])
def test_wpr_flag_reaches_the_config(wpr):
    from atedm_kernels.tools.cli import _config

    args = build_parser().parse_args(["flops", "--scale", "tiny", "--wpr", wpr, "--prune-less-steps", "1"])
    config = _config(args)
    assert config.wpr == wpr and config.prune_less_steps == 1


@pytest.mark.parametrize(
    "argv,words",
    [
        (["flops", "--scale", "tiny", "--keep-ratio", "0"], "keep_ratio"),
        (["flops", "--scale", "tiny", "--height", "250"], "height"),
        (["generate", "x", "--model", "/nonexistent", "--no-atedm", "--method", "sito"], "--no-atedm"),
        (["generate", "a cat", "  ", "--model", "/nonexistent"], "prompt 2 is empty"),
        (["demo", "--size", "100"], "--size must be a multiple of 32"),
        (["demo", "--device", "gpu0"], "--device 'gpu0' is not a device"),
        (["demo", "--scale", "tiny", "--picture-steps", "0"], "--picture-steps must be at least 1"),
        (["demo", "--scale", "tiny", "--num-iters", "0"], "num_iters"),
        (["eval", "--model", "/nonexistent", "--captions", "/nonexistent.txt", "--fid-feature", "clip"],
         "captions file"),
    ],
)
def test_bad_flags_fail_with_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0]


def test_generate_names_how_to_get_weights_that_are_not_here(capsys):
    """A hub id that is not cached: one line with the download command, no library warning."""
    assert main(["generate", "a cat", "--model", "nobody-here/not-a-cached-model"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "hf download nobody-here/not-a-cached-model --local-dir" in err[0]
    assert "Warning" not in captured.err and "local_files_only" not in captured.err


def test_a_folder_that_is_not_a_pipeline_says_so(tmp_path, capsys):
    assert main(["generate", "a cat", "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_index.json" in err[0]


def test_eval_clip_model_not_here_fails_in_one_line(tmp_path, tiny_pipeline_dir, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("a red cube\n")
    assert main(["eval", "--model", str(tiny_pipeline_dir), "--captions", str(captions), "--fid-feature", "clip",
                 "--clip-model", "nobody-here/no-clip", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CLIP model 'nobody-here/no-clip'" in err[0] and "hf download" in err[0]


def test_eval_inception_fid_without_torch_fidelity_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    assert main(["eval", "--model", "/nonexistent", "--captions", "/nonexistent.txt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '"atedm-kernels[fid]"' in err[0] and "--fid-feature clip" in err[0]


def test_generate_captions_small_models_in_g():
    from atedm_kernels.tools.generate import macs_text

    assert macs_text(6_761_200_000_000) == "6.76 T MACs/step" and macs_text(61_000_000) == "0.06 G MACs/step"


HIDE_AND_RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # what `import name` sees when the module is not installed
from atedm_kernels.tools.cli import main
code = main(sys.argv[2:])
print("exit", code)
"""


@pytest.mark.parametrize(
    "hidden,argv,named",
    [
        ("diffusers,transformers,accelerate,matplotlib,tomesd,torchmetrics,scipy", ["demo"], "diffusers, matplotlib"),
        ("diffusers,transformers,accelerate,matplotlib,tomesd,torchmetrics,scipy", ["flops"], "diffusers"),
        ("diffusers,transformers,accelerate,matplotlib,tomesd,torchmetrics,scipy", ["bench", "--smoke"],
         "diffusers"),
        ("transformers,accelerate", ["generate", "a cat", "--model", "x"], "transformers, accelerate"),
        ("torchmetrics,scipy", ["eval", "--model", "x", "--captions", "c.txt"], "torchmetrics, scipy"),
        ("matplotlib", ["demo", "--scale", "tiny"], "matplotlib"),  # before anything is computed
    ],
    ids=["demo", "flops", "bench", "generate", "eval", "demo-no-matplotlib"],
)
def test_missing_extra_is_one_line_naming_it(hidden, argv, named):
    """`pip install .` without extras: a fresh interpreter where the optional modules cannot be imported."""
    done = subprocess.run([sys.executable, "-c", HIDE_AND_RUN, hidden, *argv], capture_output=True, text=True,
                          timeout=600)
    err = done.stderr.strip().splitlines()
    assert done.stdout.strip() == "exit 2", done.stdout + done.stderr
    assert len(err) == 1 and f"needs {named}, not installed" in err[0] and '"atedm-kernels[cli]"' in err[0], err


def test_readme_install_command_is_what_ci_runs():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    setup = root.joinpath("README.md").read_text().split("## Set up", 1)[1]
    install = next(line for line in setup.splitlines() if line.startswith("pip install"))
    assert '".[cli,test]"' in install
    assert install in root.joinpath(".ci", "run").read_text().splitlines()


def test_quality_smoke_writes_json_and_pictures(tmp_path, capsys):
    """`atedm quality` end to end at a tiny size (the committed run uses 25 steps and hundreds of samples)."""
    import json

    import torch

    threads = torch.get_num_threads()
    code = main(["quality", "--samples", "2", "--batch", "2", "--steps", "3", "--no-sweep", "--threads", "1",
                 "--methods", "atedm", "random-selection", "--out", str(tmp_path)])
    assert code == 0
    assert torch.get_num_threads() == threads  # --threads held for the command only, not for the caller after it
    report = json.loads((tmp_path / "quality_fashion.json").read_text())
    rows = {row["method"]: row for row in report["rows"]}
    assert set(rows) == {"dense", "atedm", "random-selection"} and "fidelity_rmse" not in rows["dense"]
    assert rows["atedm"]["macs_per_step"] < rows["dense"]["macs_per_step"]
    assert len(rows["atedm"]["fidelity_per_sample"]) == 2 and len(report["spread"]["dense_fid_per_seed_set"]) == 3
    for name in ("grid", "tradeoff", "masks"):
        assert (tmp_path / f"quality_fashion_{name}.png").stat().st_size > 1000


def test_quality_bad_method_is_one_line(capsys):
    assert main(["quality", "--methods", "atedm-fast"]) == 2
    err = capsys.readouterr().err
    assert "--methods: unknown method 'atedm-fast'" in err and "Traceback" not in err
