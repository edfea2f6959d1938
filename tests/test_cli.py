"""Every ``atedm`` subcommand on CPU with the tiny random-weight models."""

import subprocess
import sys

import pytest

from atedm_kernels.cli import build_parser, main

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


def test_demo_writes_a_picture(tmp_path, capsys):
    code = main(["demo", "--steps", "4", "--size", "128", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AT-EDM" in printed and "speed-up" in printed
    from PIL import Image

    picture = Image.open(tmp_path / "atedm_masks.png")
    assert picture.size[0] > 200 and picture.size[1] > 200


def test_flops_prints_the_table(capsys):
    assert main(["flops", "--scale", "tiny", "--height", "256", "--width", "256"]) == 0
    printed = capsys.readouterr().out
    assert "normal" in printed and "average" in printed


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


@pytest.mark.parametrize(
    "argv,words",
    [
        (["flops", "--scale", "tiny", "--keep-ratio", "0"], "keep_ratio"),
        (["flops", "--scale", "tiny", "--height", "250"], "height"),
        (["generate", "x", "--model", "/nonexistent", "--no-atedm", "--method", "sito"], "--no-atedm"),
    ],
)
def test_bad_flags_fail_with_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0]
