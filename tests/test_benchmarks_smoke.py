"""The end-to-end benchmark's ``--smoke`` mode, in process on the CPU (tiny SD-XL-architecture U-Net)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """A benchmark script as a module (``benchmarks/`` is a folder of scripts, not an installed package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unet_e2e_smoke(tmp_path, capsys):
    from atedm_kernels.tools import unet_bench as e2e

    out = tmp_path / "e2e.json"
    assert e2e.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "SD-XL U-Net (tiny)" in capsys.readouterr().out
    rows = {row["variant"]: row for row in report["rows"]}
    missing = {name: e2e.peers.missing(name) for name in e2e.peers.PACKAGES}
    assert report["left_out"] == {n: f"{n}: left out: {r}" for n, r in missing.items() if r}  # one line each
    timed = [name for name in e2e.TIMED if name not in report["left_out"]]
    assert set(rows) == {*timed, "atedm-dsap-avg"}
    for name in timed:
        assert len(rows[name]["times_ms"]) == 3 and all(t > 0 for t in rows[name]["times_ms"])
        assert rows[name]["median_ms"] > 0 and rows[name]["speedup_vs_dense"] > 0
    assert rows["dense"]["speedup_vs_dense"] == 1.0
    macs = {name: row["macs"] for name, row in rows.items()}
    assert macs["atedm-normal"] < macs["atedm-dsap-avg"] < macs["atedm-prune-less"] < macs["dense"]
    assert macs["atedm-normal"] < macs["atedm-dagger"] < macs["dense"] and macs["tomesd"] < macs["dense"]
    assert rows["atedm-dsap-avg"]["median_ms"] == pytest.approx(
        (15 * rows["atedm-prune-less"]["median_ms"] + 35 * rows["atedm-normal"]["median_ms"]) / 50
    )
    assert {"torch", "diffusers", "triton", "tomesd"} <= set(report["versions"])
    assert report["settings"]["resolved_backends"]["attention_with_map"] == "cpu"
    for name in timed:  # the profiled call(s) account for its time, and memory was read
        split = rows[name]["split_ms"]
        assert rows[name]["peak_memory_bytes"] > 0 and split["sdpa"] > 0
        assert sum(split.values()) == pytest.approx(rows[name]["profiled_call_ms"])
        assert 0 < rows[name]["host_issue_ms"] <= rows[name]["host_issue_wall_ms"]
        top = rows[name]["top_host_ms"]  # the ops with the most host time, for the GPU run's question
        assert 0 < len(top) <= e2e.TOP_HOST_OPS and all(ms >= 0 for ms in top.values())
    for name in ("atedm-normal", "atedm-prune-less", "atedm-dagger"):
        split, overhead = rows[name]["split_ms"], rows[name]["pruning_overhead"]
        assert all(split[op] > 0 for op in e2e.KERNEL_OPS), split
        # the extra cost may be negative on the tiny model (the map kernel can beat SDPA at tiny sizes)
        assert overhead["replaced_sdpa_ms"] > 0 and abs(overhead["fraction_of_call"]) < 1
    assert rows["dense"]["split_ms"]["attention_with_map"] == 0 and "pruning_overhead" not in rows["dense"]
    if "atedm+deepcache" in rows:  # a mean step over the run: cached calls are cheaper, pruning cuts the full ones
        assert macs["atedm+deepcache"] < macs["deepcache"] < macs["dense"] and macs["tgate"] < macs["dense"]
        assert all(rows[n]["setting"] == e2e.peers.SETTINGS[n] for n in e2e.peers.PACKAGES)
        assert sum(call["weight"] for call in rows["tgate"]["calls"]) == pytest.approx(1)
        assert rows["atedm+deepcache"]["pruning_overhead"]["replaced_sdpa_ms"] > 0


def test_unet_e2e_profiles_a_warm_call(monkeypatch):
    """The split comes from a call made after the warm-up calls and the timed rounds, never from a first call."""
    import argparse

    import torch

    from atedm_kernels.tools import unet_bench as e2e

    calls = []  # "timed" or "profiled", in the order they ran
    monkeypatch.setattr(e2e, "timed_call", lambda fn, device: calls.append("timed") or 1.0)

    def profiled_call(fn, device):
        calls.append("profiled")
        return {"profiled_call_ms": 1.0, "split_ms": {"rest": 1.0}, "sdpa_calls": {}, "map_calls": {},
                "host_ms_by_op": {"aten::mm": 0.25}, "output": torch.ones(1)}

    monkeypatch.setattr(e2e, "profiled_call", profiled_call)
    monkeypatch.setattr(e2e, "host_issue_ms", lambda fn, device: calls.append("host issue") or (0.5, 1.0))
    args = argparse.Namespace(warmup=2, reps=3, backend="reference")
    _, _, profiles = e2e.run_eager(None, lambda handle: [(1.0, None)], ["dense"], args, torch.device("cpu"),
                                   e2e.PeakMemory(torch.device("cpu")))
    assert calls == ["timed", "timed", "timed", "timed", "timed", "profiled", "host issue"]
    assert (profiles["dense"]["host_issue_ms"], profiles["dense"]["host_issue_wall_ms"]) == (0.5, 1.0)


def test_unet_e2e_explicit_options_beat_smoke_defaults():
    from atedm_kernels.tools import unet_bench

    args = unet_bench.parse_args(["--smoke", "--reps", "5", "--height", "64"])
    assert (args.reps, args.height, args.width, args.scale, args.device) == (5, 64, 128, "tiny", "cpu")


def test_unet_e2e_refuses_cuda_without_a_gpu_in_one_line(monkeypatch, capsys):
    from atedm_kernels.tools import unet_bench

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        unet_bench.parse_args(["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "atedm bench: error: --device cuda: torch sees no CUDA device" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["benchmark_kernels", "benchmark_attention_with_map", "roofline"])
def test_gpu_benchmarks_refuse_without_cuda(name, monkeypatch, capsys):
    from atedm_kernels.tools import roofline

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert (roofline if name == "roofline" else load(name)).main([]) == 2
    assert "needs a GPU" in capsys.readouterr().err


def test_cpu_kernels_benchmark_smoke(tmp_path, capsys):
    from atedm_kernels.kernels import cpu_attention

    out = tmp_path / "cpu.json"
    assert load("benchmark_cpu_kernels").main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    methods = {(row["op"], row["method"]) for row in report["rows"]}
    want = {("attention_with_map", m) for m in ("sdpa", "blocked", "eager")} | {("gwpr", "torch")}
    if cpu_attention.native_available():
        want |= {("attention_with_map", "native"), ("attention_with_map", "native-f32map"), ("gwpr", "native"),
                 ("similarity_sources", "native")}
    assert want <= methods and report["native"] == cpu_attention.native_available()
    assert all(row["seconds"] > 0 for row in report["rows"]) and "sgemm" in capsys.readouterr().out


def test_pruned_linears_benchmark_smoke(tmp_path, capsys):
    from atedm_kernels.tools.flops import count_unet_macs
    from atedm_kernels.sdxl import AtEdmConfig
    from atedm_kernels.tools.models import build_sdxl_unet

    out = tmp_path / "linears.json"
    assert load("benchmark_pruned_linears").main(["--smoke", "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["sizes"]
    unet = build_sdxl_unet("tiny", device="meta")
    for name, config in (("dense", None), ("atedm-normal", AtEdmConfig(prune_less_steps=0))):
        variant = entry["variants"][name]
        want = count_unet_macs(unet, entry["size"], entry["size"], 2, config, phase="normal").kinds["linear"]
        timed = sum(k["calls"][name] * k["rows"] * k["in"] * k["out"] for k in entry["kinds"])
        assert variant["linear_macs"] == timed == want  # every linear of the call is timed, at its own shape
        assert variant["seconds"] == pytest.approx(sum(k["calls"][name] * k["seconds"] for k in entry["kinds"]))
    dense, atedm = entry["variants"]["dense"], entry["variants"]["atedm-normal"]
    assert entry["macs_ratio"] == pytest.approx(dense["linear_macs"] / atedm["linear_macs"]) and entry["macs_ratio"] > 1
    assert entry["speedup"] == pytest.approx(dense["seconds"] / atedm["seconds"])
    assert entry["shortfall_s"] == pytest.approx(atedm["seconds"] - dense["seconds"] / entry["macs_ratio"])
    for kind in entry["kinds"]:
        assert kind["seconds"] > 0
        assert kind["gmacs_per_s"] == pytest.approx(kind["rows"] * kind["in"] * kind["out"] / kind["seconds"] / 1e9)
    assert {k["bias"] for k in entry["kinds"]} == {True, False}  # q, k, v have none; the outputs have one
    assert "AT-EDM linears" in capsys.readouterr().out


def test_unet_e2e_cuda_graph_needs_cuda_in_one_line(capsys):
    from atedm_kernels.tools import unet_bench

    with pytest.raises(SystemExit) as exit_info:
        unet_bench.parse_args(["--smoke", "--cuda-graph"])
    assert exit_info.value.code == 2
    assert "--cuda-graph needs --device cuda" in capsys.readouterr().err


def test_unet_e2e_graph_capture_path_needs_no_host_read_of_the_timestep(monkeypatch):
    """What ``--cuda-graph`` does around each variant, on a CPU with the CUDA graph API stubbed (a capture is then a
    plain call): every variant runs in its pinned phase, and AT-EDM's clock reads the timestep as a schedule entry,
    never on the host (a device sync, which a capture refuses)."""
    import contextlib
    import types

    import torch

    from atedm_kernels.sdxl import clock
    from atedm_kernels.tools import unet_bench
    from atedm_kernels.tools.models import build_sdxl_unet, unet_inputs

    stream = types.SimpleNamespace(wait_stream=lambda other: None)
    fakes = {"Stream": lambda device: stream, "current_stream": lambda device: stream,
             "stream": lambda s: contextlib.nullcontext(), "graph": lambda g: contextlib.nullcontext(),
             "CUDAGraph": lambda: types.SimpleNamespace(replay=lambda: None)}
    for name, fake in fakes.items():  # the graph API only: the rest of torch.cuda stays real
        monkeypatch.setattr(torch.cuda, name, fake)
    monkeypatch.setattr(unet_bench, "timed_call", lambda fn, device: (fn(), 1.0)[1])

    def no_host_read(self, timestep):
        raise AssertionError("the clock read the timestep on the host")

    monkeypatch.setattr(clock.StepClock, "_from_value", no_host_read)
    unet = build_sdxl_unet("tiny", seed=0)
    inputs = unet_inputs(unet, 2, 128, 128, seed=1)
    sample, timestep = inputs.pop("sample"), inputs.pop("timestep")
    args = types.SimpleNamespace(backend="auto", warmup=1, reps=2)
    memory = types.SimpleNamespace(reset=lambda: None, read=lambda: None)
    names = ["dense", "atedm-normal", "atedm-prune-less", "atedm-dagger"]
    times, peaks, errors = unet_bench.run_graphed(unet, sample, timestep, inputs, names, args, torch.device("cpu"),
                                                  memory)
    assert errors == {} and list(times) == names and all(t == [1.0, 1.0] for t in times.values())
