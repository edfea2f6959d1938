"""The Triton kernels compiled for GPU targets on a machine without a GPU (``benchmarks/triton_compile_matrix.py``).

The compiles run in a subprocess: in this pytest process the kernels were built for the interpreter
(``TRITON_INTERPRET=1``), and a compile needs them built for a GPU target. CI compiles a representative subset;
the committed table (``benchmarks/results/triton_compile_matrix.json``) is the full matrix, checked here against the
kernels' current tiles and the same rules.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from atedm_kernels.kernels import triton_attention as ta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "triton_compile_matrix.py"
TABLE = ROOT / "benchmarks" / "results" / "triton_compile_matrix.json"


def _script(*args, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_subset_compiles_fits_and_does_not_spill(tmp_path):
    out = tmp_path / "subset.json"
    run = _script("--subset", "--out", str(out), timeout=1800)  # 18 compiles: 2-3 min here, 10+ on a loaded machine
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 18 and all(r["error"] is None and r["registers"] > 0 and r["shared"] > 0 for r in rows)
    # fp16 at D = 40 (80-byte rows): the declared row alignment lets Triton stage the operand loads through shared
    # memory, at least double-buffered. Without it (ROW_ALIGN = 1) the same kernels load element by element and
    # stage nothing: 10-24 KiB of shared memory instead of 16-48 KiB, and the former 4-warp tiles spilled.
    for r in rows:
        if r["head_dim"] == 40:
            _, block_n, _, _ = r["tile"]
            # rows pipelined per stage: K and V in the forward, k in the map pass (its q tile is loaded once)
            operands = 2 * block_n if r["kernel"] == "fwd" else block_n
            assert r["shared"] >= 2 * operands * 64 * 2 and r["spill_stores"] == 0, r


def test_committed_table_is_current_and_clean():
    run = _script("--check", str(TABLE), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize(
    "break_row",
    [
        lambda r: r.update(spill_stores=64) if r["dtype"] == "fp16" and r["head_dim"] == 64 else None,
        lambda r: r.update(shared=r["shared"] + 10**6) if r["error"] is None else None,
        lambda r: r.update(error="CompilationError: boom") if r["kernel"] == "map" else None,
    ],
    ids=["spill", "shared-memory", "compile-error"],
)
def test_check_catches_a_broken_table(tmp_path, break_row):
    table = json.loads(TABLE.read_text())
    for row in table["rows"]:
        break_row(row)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(table))
    run = _script("--check", str(bad), timeout=120)
    assert run.returncode == 1 and "PROBLEM:" in run.stdout, run.stdout + run.stderr


def test_check_catches_a_stale_table(tmp_path):
    table = json.loads(TABLE.read_text())
    table["rows"] = table["rows"][1:]
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(table))
    run = _script("--check", str(stale), timeout=120)
    assert run.returncode == 1 and "does not match the kernels' current tiles" in run.stdout


@pytest.mark.parametrize(
    "strides, align",
    [
        ([(2 * 10 * 4096 * 40, 4096 * 40, 40, 1)], 8),  # D = 40: 8-element rows
        ([(10 * 77 * 64, 77 * 64, 64, 1), (10 * 4096 * 64, 4096 * 64, 64, 1)], 16),
        ([(3 * 5 * 7, 5 * 7, 7, 1)], 1),  # odd rows
        ([(0, 0, 48, 1), (96, 0, 24, 1)], 8),  # expanded (stride 0) dims divide anything
        ([(120, 40, 4, 2)], 4),  # a strided head dim: its stride does not count
    ],
)
def test_row_align_is_the_largest_power_of_two_dividing_the_row_strides(strides, align):
    assert ta.row_align_of_strides(*strides) == align
