""".ci/gpu, the one-call GPU run: its dry run on the CPU (every step at tiny sizes), its caps and its output."""

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "gpu"
STEPS = ["environment", "wheels", "build", "correctness", "sanitizer", "microbench", "e2e", "e2e-graph", "e2e-compile"]


def _load():
    loader = importlib.machinery.SourceFileLoader("ci_gpu", str(SCRIPT))
    spec = importlib.util.spec_from_loader("ci_gpu", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_gpu"] = module  # dataclasses look their module up while the class is made
    loader.exec_module(module)
    return module


def test_dry_run_runs_every_step_and_returns_two_files(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out),
                             "--wheels", str(tmp_path / "no-wheels")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.tar.gz", "summary.json"]  # the runner returns 8 at most
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["name"]: step for step in summary["steps"]}
    assert list(steps) == STEPS and summary["dry_run"] and summary["passed"]
    skipped = {"wheels", "build", "e2e-graph", "e2e-compile"}  # no wheels folder; CUDA only; minutes of compiling
    assert {name for name, step in steps.items() if step["status"] == "skipped"} == skipped
    assert all(step["status"] == "passed" for name, step in steps.items() if name not in skipped)
    assert all(step["cap_s"] > 0 for step in steps.values() if step["status"] == "passed")
    microbench = steps["microbench"]["figures"]
    names = {(row["benchmark"], row["name"]) for row in microbench["rows"]}
    assert {("attention_with_map", m) for m in ("triton+map", "triton", "sdpa-flash", "eager+map")} <= names
    assert {("pruning_kernels", k) for k in ("gwpr", "select_tokens", "similarity_sources", "gather_tokens",
                                             "recover_tokens")} <= names
    assert not microbench["failed"]
    variants = {row["variant"] for row in steps["e2e"]["figures"]["rows"]}
    assert {"dense", "atedm-normal"} <= variants
    with tarfile.open(out / "logs.tar.gz") as archive:
        archived = set(archive.getnames())
    logs = {"correctness.log", "sanitizer.log", "microbench.log", "e2e.log", "kernels.json", "unet_e2e.json"}
    assert logs <= archived


def test_a_step_past_its_cap_is_cut_and_recorded(tmp_path):
    ci_gpu = _load()
    step = ci_gpu.Step("slow", 0.0, [[sys.executable, "-c", "import time; time.sleep(60)"]], min_s=1.0)
    started = time.monotonic()
    outcome = ci_gpu.execute(step, started + 2.0, 480, tmp_path, {})
    assert time.monotonic() - started < 30  # killed at its cap, not after the minute it asked for
    assert outcome.status == "timed out" and "cut by its cap" in outcome.reason
    assert (tmp_path / "slow.log").read_text().startswith("\n$ ")


def test_a_failing_step_is_recorded_and_too_little_time_skips(tmp_path):
    ci_gpu = _load()
    failing = ci_gpu.Step("fails", 0.5, [[sys.executable, "-c", "raise SystemExit(3)"], ["never-run"]], min_s=1.0)
    outcome = ci_gpu.execute(failing, time.monotonic() + 60, 60, tmp_path, {})
    assert outcome.status == "failed" and outcome.returncode == 3 and "never-run" not in outcome.reason
    late = ci_gpu.Step("late", 0.5, [["true"]], min_s=30.0)
    skipped = ci_gpu.execute(late, time.monotonic() + 5, 60, tmp_path, {})
    assert skipped.status == "skipped" and "needs 30" in skipped.reason


def test_budget_below_a_minute_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--budget", "10", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--budget must be at least 60 seconds" in result.stderr


def test_only_runs_the_named_steps_and_rejects_unknown_ones(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--only", "environment", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    steps = {step["name"]: step for step in json.loads((tmp_path / "summary.json").read_text())["steps"]}
    assert steps["environment"]["status"] == "passed"
    assert all(step["status"] == "skipped" and step["reason"] == "not in --only"
               for name, step in steps.items() if name != "environment")
    bad = subprocess.run([sys.executable, str(SCRIPT), "--only", "e2e-graf", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--only: no step 'e2e-graf'" in bad.stderr
