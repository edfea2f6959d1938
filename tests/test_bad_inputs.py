"""Every bad-input case of the ops and configs: a TypeError/ValueError whose message names the argument, raised
both by the op and by its fake implementation (so torch.compile tracing fails the same way)."""

import pytest
import torch

import atedm_kernels as ak

Q = torch.randn(2, 3, 8, 16)
KV = torch.randn(2, 3, 10, 16)
AMAP = torch.softmax(torch.randn(2, 9, 9), -1)
SCORES = torch.rand(2, 9)
KEEP_IDX = torch.tensor([[0, 2, 4, 6]] * 2)
PRUNE_IDX = torch.tensor([[1, 3, 5, 7, 8]] * 2)
SRC = torch.zeros(2, 5, dtype=torch.int64)
X = torch.randn(2, 9, 5)
X_KEPT = torch.randn(2, 4, 5)

CASES = [
    # (call, exception, words the message must contain)
    (lambda: ak.attention_with_map(Q[0], KV, KV), ValueError, "q"),
    (lambda: ak.attention_with_map([1.0], KV, KV), TypeError, "q"),
    (lambda: ak.attention_with_map(Q, KV[:, :2], KV), ValueError, "k"),
    (lambda: ak.attention_with_map(Q, KV, KV[..., :8]), ValueError, "v"),
    (lambda: ak.attention_with_map(Q, torch.randn(2, 3, 10, 8), KV), ValueError, "k"),
    (lambda: ak.attention_with_map(Q, torch.randn(1, 3, 10, 16), torch.randn(1, 3, 10, 16)), ValueError, "k"),
    (lambda: ak.attention_with_map(Q.double(), KV.double(), KV.double()), TypeError, "q"),
    (lambda: ak.attention_with_map(Q, KV.half(), KV), TypeError, "dtype"),
    (lambda: ak.attention_with_map(Q, KV, KV, map_dtype=torch.int32), TypeError, "map_dtype"),
    (lambda: ak.attention_with_map(Q, KV, KV, scale=-1.0), ValueError, "scale"),
    (lambda: ak.attention_with_map(Q, KV, KV, backend="cudnn"), ValueError, "backend"),
    (lambda: ak.attention_with_map(Q, KV, KV, backend="cuda"), ValueError, "backend"),
    (lambda: ak.attention(Q, KV, KV[:, :, :4]), ValueError, "v"),
    (lambda: ak.gwpr(AMAP[0], 3), ValueError, "amap"),
    (lambda: ak.gwpr(torch.rand(2, 9, 8), 3), ValueError, "amap"),
    (lambda: ak.gwpr(AMAP.double(), 3), TypeError, "amap"),
    (lambda: ak.gwpr(AMAP, -1), ValueError, "num_iters"),
    (lambda: ak.gwpr(AMAP, 0), ValueError, "num_iters"),  # like AtEdmConfig(num_iters=0): no ranking at all
    (lambda: ak.gwpr(AMAP, 2.5), TypeError, "num_iters"),
    (lambda: ak.gwpr(AMAP, 3, damping=1.5), ValueError, "damping"),
    (lambda: ak.gwpr(AMAP, 3, backend="triton"), ValueError, "backend"),
    (lambda: ak.gwpr_cross(torch.rand(2, 9, 4), 3, kind="median"), ValueError, "kind"),
    (lambda: ak.gwpr_cross(torch.rand(9, 4), 3), ValueError, "ca_map"),
    (lambda: ak.gwpr_cross(torch.rand(2, 9, 4), 0), ValueError, "num_iters"),
    (lambda: ak.select_tokens(SCORES, 0), ValueError, "keep"),
    (lambda: ak.select_tokens(SCORES, 10), ValueError, "keep"),
    (lambda: ak.select_tokens(SCORES, True), TypeError, "keep"),
    (lambda: ak.select_tokens(SCORES[0], 3), ValueError, "scores"),
    (lambda: ak.select_tokens(SCORES.long(), 3), TypeError, "scores"),
    (lambda: ak.similarity_sources(AMAP, KEEP_IDX.int(), PRUNE_IDX), TypeError, "keep_idx"),
    (lambda: ak.similarity_sources(AMAP, KEEP_IDX, PRUNE_IDX.float()), TypeError, "prune_idx"),
    (lambda: ak.similarity_sources(AMAP, KEEP_IDX[:1], PRUNE_IDX), ValueError, "keep_idx"),
    (lambda: ak.similarity_sources(AMAP, KEEP_IDX, PRUNE_IDX[:, :3]), ValueError, "prune_idx"),
    (lambda: ak.similarity_sources(AMAP, KEEP_IDX[:, :0], torch.arange(9).repeat(2, 1)), ValueError, "keep_idx"),
    (lambda: ak.gather_tokens(X[0], KEEP_IDX), ValueError, "x"),
    (lambda: ak.gather_tokens(X, KEEP_IDX[0]), ValueError, "idx"),
    (lambda: ak.gather_tokens(X, KEEP_IDX.int()), TypeError, "idx"),
    (lambda: ak.gather_tokens(X, KEEP_IDX[:1]), ValueError, "idx"),
    (lambda: ak.gather_tokens(X.long(), KEEP_IDX), TypeError, "x"),
    (lambda: ak.recover_tokens(X_KEPT, KEEP_IDX[:, :3], PRUNE_IDX, SRC), ValueError, "keep_idx"),
    (lambda: ak.recover_tokens(X_KEPT, KEEP_IDX, PRUNE_IDX, SRC[:, :2]), ValueError, "src"),
    (lambda: ak.recover_tokens(X_KEPT, KEEP_IDX, PRUNE_IDX, SRC.int()), TypeError, "src"),
    (lambda: ak.recover_tokens(X_KEPT[0], KEEP_IDX, PRUNE_IDX, SRC), ValueError, "x_kept"),
]


@pytest.mark.parametrize("call,exc,words", CASES, ids=[f"case{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_bad_input_raises_naming_the_argument(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


@pytest.mark.parametrize("call,exc,words", CASES[:12:3] + CASES[13:20:3], ids=lambda c: "")
def test_fake_implementation_checks_too(call, exc, words):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(exc, match=words):
        call()


def test_mixed_devices_rejected():
    meta_idx = KEEP_IDX.to("meta")
    with pytest.raises(ValueError, match="idx"):
        ak.gather_tokens(X, meta_idx)


def test_env_backend_is_validated(monkeypatch):
    monkeypatch.setenv("ATEDM_BACKEND", "fastest")
    with pytest.raises(ValueError, match="ATEDM_BACKEND"):
        ak.gwpr(AMAP, 2)


@pytest.mark.parametrize("op,arg", [(ak.gwpr, AMAP), (ak.gwpr_cross, torch.rand(2, 9, 4))], ids=["gwpr", "cross"])
def test_zero_iterations_refused_by_the_fake_too(op, arg):
    """``num_iters=0`` would return the uniform start (no ranking); AtEdmConfig refuses it, so the ops do too."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(ValueError, match="num_iters must be >= 1, got 0"):
        op(arg, 0)
