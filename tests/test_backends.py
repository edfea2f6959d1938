"""Backend resolution: names, the ATEDM_BACKEND default, and clear errors for backends that cannot run."""

import pytest
import torch

import atedm_kernels as ak
from atedm_kernels import backends

AMAP = torch.softmax(torch.randn(1, 6, 6), -1)


def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setenv("ATEDM_BACKEND", "reference")
    assert backends.resolve("gwpr", "auto", torch.device("cuda")) == "reference"
    monkeypatch.setenv("ATEDM_BACKEND", "cuda")  # a kernel family an op lacks: that op chooses as "auto"
    assert backends.resolve("gwpr_cross", "auto", torch.device("cpu")) == "reference"


def test_explicit_argument_beats_env(monkeypatch):
    monkeypatch.setenv("ATEDM_BACKEND", "cuda")
    assert backends.resolve("gwpr", "reference", torch.device("cpu")) == "reference"


def test_forced_cuda_on_cpu_tensor_says_why():
    with pytest.raises(ak.BackendUnavailableError, match="cuda"):
        ak.gwpr(AMAP, 2, backend="cuda")


def test_forced_triton_on_cpu_tensor_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ak.BackendUnavailableError, match="TRITON_INTERPRET"):
        ak.attention_with_map(q, q, q, backend="triton")


def test_missing_extension_is_named(monkeypatch):
    backends._import_error.cache_clear()
    monkeypatch.setattr(backends, "_import_error", lambda module: "ImportError: no module named _C")
    reason = backends.cuda_unavailable_reason(torch.device("cuda"))
    assert "not built" in reason and "_C" in reason


def test_auto_on_cuda_without_kernels_falls_back_with_a_warning(monkeypatch):
    backends._warn_fallback_once.cache_clear()
    monkeypatch.setattr(backends, "_import_error", lambda module: f"ImportError: {module} missing")
    with pytest.warns(RuntimeWarning, match="reference"):
        assert backends.resolve("select_tokens", "auto", torch.device("cuda")) == "reference"
    backends._warn_fallback_once.cache_clear()


@pytest.mark.parametrize(
    "archs, capability, runs",
    [
        ("80-real,90-real,120-real,80-virtual", 75, False),  # the default build on a T4
        ("80-real,90-real,120-real,80-virtual", 86, True),  # sm_80 SASS on RTX 30
        ("80-real,90-real,120-real,80-virtual", 100, True),  # B200: compute_80 PTX
        ("80-real,90-real", 100, False),  # no PTX: sm_90 SASS does not run on 10.0
        ("80-real,90-real", 89, True),
        ("80;90", 120, True),  # plain entries carry PTX
        ("90a-real", 90, True),
        ("90a-real", 100, False),
        ("86-real", 80, False),  # SASS for a newer minor does not run on an older one
        ("75", 75, True),
    ],
)
def test_archs_run_on(archs, capability, runs):
    assert backends.archs_run_on(archs, capability) is runs
