"""Independent float64 brute-force versions of the ops, written as plainly as possible (loops where loops are
clearest). Tests compare the package's references and kernels against these, never against themselves."""

from __future__ import annotations

import math

import torch


def attention_with_map(q, k, v, scale=None):
    """float64 ``out [B,H,N,D]`` and ``amap [B,N,M]`` by an explicit per-head softmax."""
    q, k, v = q.double(), k.double(), v.double()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) * scale
    logits = logits - logits.amax(-1, keepdim=True)
    weights = logits.exp()
    probs = weights / weights.sum(-1, keepdim=True)
    return torch.einsum("bhnm,bhmd->bhnd", probs, v), probs.mean(1)


def gwpr(amap, num_iters, damping=0.0):
    a = amap.double()
    batch, n, _ = a.shape
    out = torch.empty(batch, n, dtype=torch.float64)
    for b in range(batch):
        s = [1.0 / n] * n
        for _ in range(num_iters):
            s = [(1 - damping) * sum(float(a[b, i, j]) * s[i] for i in range(n)) + damping / n for j in range(n)]
        out[b] = torch.tensor(s, dtype=torch.float64)
    return out


def select_tokens(scores, keep):
    """Rank each token by how many tokens beat it (higher score, or equal score and lower index)."""
    batch, n = scores.shape
    keeps, prunes = [], []
    for b in range(batch):
        s = scores[b].tolist()
        rank = [sum(1 for j in range(n) if s[j] > s[i] or (s[j] == s[i] and j < i)) for i in range(n)]
        keeps.append([i for i in range(n) if rank[i] < keep])
        prunes.append([i for i in range(n) if rank[i] >= keep])
    return torch.tensor(keeps, dtype=torch.int64), torch.tensor(prunes, dtype=torch.int64).view(batch, n - keep)


def similarity_sources(amap, keep_idx, prune_idx):
    batch, pruned = prune_idx.shape
    src = torch.empty(batch, pruned, dtype=torch.int64)
    for b in range(batch):
        kept = keep_idx[b].tolist()
        for m, p in enumerate(prune_idx[b].tolist()):
            best, best_j = -math.inf, -1
            for j, row in enumerate(kept):
                value = float(amap[b, row, p])
                value = -math.inf if math.isnan(value) else value  # NaN never wins; an all-NaN column gives 0
                if best_j < 0 or value > best:
                    best, best_j = value, j
            src[b, m] = best_j
    return src


def gather_tokens(x, idx):
    return torch.stack([torch.stack([x[b, i] for i in idx[b].tolist()]) for b in range(x.shape[0])])


def recover_tokens(x_kept, keep_idx, prune_idx, src):
    batch, kept, channels = x_kept.shape
    n = kept + prune_idx.shape[1]
    out = torch.full((batch, n, channels), float("nan"), dtype=x_kept.dtype)
    for b in range(batch):
        for j, i in enumerate(keep_idx[b].tolist()):
            out[b, i] = x_kept[b, j]
        for m, p in enumerate(prune_idx[b].tolist()):
            out[b, p] = x_kept[b, int(src[b, m])]
    return out


def gwpr_cross(ca_map, num_iters, kind, eta=0.2, alpha=5.0, eps=1e-6):
    a = ca_map.double()
    batch, n, length = a.shape
    out = torch.empty(batch, n, dtype=torch.float64)
    for b in range(batch):
        sq = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for _ in range(num_iters):
            sk = a[b].T @ sq
            f = torch.empty(n, dtype=torch.float64)
            for i in range(n):
                row = a[b, i]
                if kind == "hard_clip":
                    f[i] = sum(sk[j] for j in range(length) if row[j] >= eta)
                elif kind == "soft_clip":
                    f[i] = sum(sk[j] / (1 + math.exp(-(row[j] - eta))) for j in range(length))
                elif kind == "power":
                    f[i] = sum((length / 2 * sk[j]) ** (alpha * row[j]) for j in range(length))
                else:
                    entropy = -sum(float(r) * math.log(float(r)) for r in row if r > 0)
                    f[i] = (row @ sk) / (entropy + eps)
            sq = f / f.sum()
        out[b] = sq
    return out
