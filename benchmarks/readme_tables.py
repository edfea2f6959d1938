"""The generated tables of the README and ``docs/``, from committed JSON: never typed by hand.

``python benchmarks/readme_tables.py --count-macs`` recounts the SD-XL MACs (meta device, seconds) into
``benchmarks/results/macs_sdxl_1024.json``; ``python benchmarks/readme_tables.py`` (re)writes, in
``docs/performance.md``, the section between ``<!-- tables:start -->`` and ``<!-- tables:end -->`` from every JSON
under ``benchmarks/results/``: the MACs table; the peers' table (DeepCache, T-GATE, AT-EDM on DeepCache: MACs and,
where a committed CPU run has their rows, CPU time); the CPU end-to-end tables (``unet_e2e_cpu_*.json``, from
``atedm bench --device cpu``, with the pruning path's split); and the GPU tables (the run's steps, end-to-end rows,
split and kernels) from the ``.ci/gpu`` run committed under ``benchmarks/results/gpu/``; and, between
``<!-- quality:start -->`` and ``<!-- quality:end -->``, ``docs/quality.md``'s tables from
``benchmarks/results/quality_fashion.json`` (``atedm quality``) and ``quality_fashion_diagnosis.json``
(``python -m atedm_kernels.tools.fashion.diagnose``); and the README's op table (between ``<!-- ops:start -->`` and
``<!-- ops:end -->``) from ``backends.KERNELS``. ``tests/test_readme_tables.py`` fails when a page and the JSON
disagree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
GPU = RESULTS / "gpu"  # one .ci/gpu run: summary.json, logs.tar.gz and the detailed JSONs
README = ROOT / "README.md"
START, END = "<!-- tables:start -->", "<!-- tables:end -->"
PEERS = ("deepcache", "tgate", "atedm+deepcache")  # atedm_kernels.tools.peers.PACKAGES, without importing torch
FEW_STEP_RUNS = (1, 2, 4)  # step counts of distilled SD-XL models (SDXL-Turbo, SDXL-Lightning, LCM)
PAPER_MACS = {"dense": 6.7e12, "atedm-normal": 4.1e12}  # SD-XL, 1024 px, CFG batch 2 (paper and supplementary A.3)


def count_macs() -> dict:
    """MACs per U-Net step of SD-XL base at 1024x1024, batch 2, for every method and phase, the mean step of
    ``AtEdmConfig.few_step()`` runs of 1, 2 and 4 steps, and the peers' mean step over their authors' runs (needs the
    ``peers`` extra)."""
    from atedm_kernels.tools.flops import count_run_macs, count_unet_macs
    from atedm_kernels.tools.peers import PACKAGES, SETTINGS
    from atedm_kernels.sdxl import AtEdmConfig
    from atedm_kernels.tools.models import build_sdxl_unet
    from atedm_kernels.tools.unet_bench import TIMED, count_macs as count_variants

    macs = count_variants("full", 1024, 1024, 2, [name for name in TIMED if name not in PACKAGES])
    unet = build_sdxl_unet("full", device="meta")
    macs["atedm-dsap-avg"] = count_unet_macs(unet, 1024, 1024, 2, AtEdmConfig(), "average").total
    macs["atedm-dagger-dsap-avg"] = count_unet_macs(
        unet, 1024, 1024, 2, AtEdmConfig(skip_second_level=True), "average"
    ).total
    for steps in FEW_STEP_RUNS:  # AtEdmConfig.few_step(): the first step prune-less, the rest normal
        macs[f"atedm-few-step-{steps}"] = count_unet_macs(
            unet, 1024, 1024, 2, AtEdmConfig.few_step(), "average", num_steps=steps
        ).total
    peer_calls = {}
    for name in PACKAGES:
        macs[name], peer_calls[name] = count_run_macs(unet, name, 1024, 1024, 2)
    return {"model": "SD-XL base U-Net (meta device)", "height": 1024, "width": 1024, "batch": 2, "macs": macs,
            "settings": {name: SETTINGS[name] for name in PACKAGES}, "peer_calls": peer_calls}


def macs_table(report: dict) -> str:
    dense = report["macs"]["dense"]
    lines = [
        f"MACs per U-Net step, {report['model']}, {report['height']}x{report['width']}, batch {report['batch']} "
        "(from `benchmarks/results/macs_sdxl_1024.json`):",
        "",
        "| variant | T MACs / step | vs dense | paper |",
        "|---|---|---|---|",
    ]
    for name, value in report["macs"].items():
        paper = f"{PAPER_MACS[name] / 1e12:.1f} T" if name in PAPER_MACS else ""
        lines.append(f"| {name} | {value / 1e12:.3f} | {value / dense:.1%} | {paper} |")
    return "\n".join(lines)


def peers_table(macs: dict, cpu_reports: list[tuple[str, dict]]) -> str:
    """The peers against AT-EDM's 50-step mean: MACs per step (from the MACs JSON) and, per committed CPU run, the
    speed-up over dense per step (or why there is none)."""
    names = [name for name in PEERS if name in macs["macs"]]
    if not names:
        return ("No peer MACs in `benchmarks/results/macs_sdxl_1024.json`: `python benchmarks/readme_tables.py "
                "--count-macs` with the `peers` extra adds them.")
    dense, atedm = macs["macs"]["dense"], macs["macs"]["atedm-dsap-avg"]
    sizes = [f"{report['settings']['height']} px" for _, report in cpu_reports]
    lines = [
        "Peers at their authors' SD-XL settings, mean U-Net step of their runs, 1024x1024, batch 2 (MACs from "
        "`benchmarks/results/macs_sdxl_1024.json`; CPU speed-ups from the CPU runs above, per step against dense):",
        "",
        "| method | setting | T MACs / step | vs dense | vs AT-EDM's 50-step mean | "
        + " | ".join(f"CPU speed-up, {size}" for size in sizes) + " |",
        "|---" * (5 + len(sizes)) + "|",
    ]
    for name in ["atedm-dsap-avg", *names]:
        setting = macs.get("settings", {}).get(name, "AtEdmConfig(); mean of 50 steps (15 prune-less)")
        cells = []
        for _, report in cpu_reports:
            row = next((r for r in report["rows"] if r["variant"] == name and not r["compiled"]), None)
            cells.append(f"{row['speedup_vs_dense']:.2f}x" if row else "not in this run")
        value = macs["macs"][name]
        lines.append(f"| {name} | {setting} | {value / 1e12:.3f} | {value / dense:.1%} | {value / atedm:.1%} | "
                     + " | ".join(cells) + " |")
    if "atedm+deepcache" in names and "deepcache" in names:
        stack = macs["macs"]["atedm+deepcache"]
        lines += ["", f"AT-EDM on DeepCache: {stack / macs['macs']['deepcache']:.1%} of DeepCache's MACs alone and "
                      f"{stack / atedm:.1%} of AT-EDM's alone (AT-EDM prunes DeepCache's full steps only)."]
    return "\n".join(lines)


def e2e_table(report: dict, source: str, unit: str = "s") -> str:
    """The end-to-end rows; times in ``unit`` (s on a CPU, ms on a GPU)."""
    scale = 1e3 if unit == "s" else 1.0
    settings = report["settings"]
    lines = [
        f"End-to-end U-Net step, SD-XL base architecture ({settings['scale']}, random weights), "
        f"{settings['height']}x{settings['width']}, batch {settings['batch']}, {settings['dtype']}, on "
        f"{report.get('device', '?')}; median of {settings['reps']} interleaved calls (from `{source}`):",
        "",
        f"| variant | mode | G MACs | median {unit} | speed-up vs dense | MACs ratio | peak GiB | pruning path extra |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dense_macs = {row["compiled"]: row["macs"] for row in report["rows"] if row["variant"] == "dense"}
    for row in report["rows"]:
        peak = f"{row['peak_memory_bytes'] / 2**30:.2f}" if row.get("peak_memory_bytes") else "n/a"
        mode = {False: "eager", True: "compiled", "cuda-graph": "CUDA graph"}[row["compiled"]]
        overhead = row.get("pruning_overhead")
        extra = f"{overhead['extra_ms'] / scale:.2f} {unit} ({overhead['fraction_of_call']:.1%})" if overhead else ""
        ratio = dense_macs[row["compiled"]] / row["macs"]
        lines.append(
            f"| {row['variant']} | {mode} | {row['macs'] / 1e9:.1f} | {row['median_ms'] / scale:.2f} | "
            f"{row['speedup_vs_dense']:.2f}x | {ratio:.2f}x | {peak} | {extra} |"
        )
    return "\n".join(lines)


def split_table(report: dict, unit: str = "s") -> str:
    """Where the time of one profiled call goes, per variant (in ``unit``: s on a CPU, ms on a GPU, where the ops'
    times are device times and the host's issue time of an unprofiled call is added when the JSON has it)."""
    scale = 1e3 if unit == "s" else 1.0
    digits = 3 if unit == "s" else 2
    ops = ("attention_with_map", "gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens")
    host = all("host_issue_ms" in row for row in report["rows"] if "split_ms" in row) and unit == "ms"
    lines = [
        "| variant | profiled call | SDPA | " + " | ".join(ops) + " | rest | SDPA replaced by the map |"
        + (" host issue / call |" if host else ""),
        "|---" * (len(ops) + 5 + host) + "|",
    ]
    for row in report["rows"]:
        if "split_ms" not in row:
            continue
        split, overhead = row["split_ms"], row.get("pruning_overhead")
        cells = [row["profiled_call_ms"], split["sdpa"], *(split[op] for op in ops), split["rest"]]
        replaced = f"{overhead['replaced_sdpa_ms'] / scale:.{digits}f}" if overhead else ""
        issue = f" {row['host_issue_ms']:.1f} / {row['host_issue_wall_ms']:.1f} |" if host else ""
        lines.append(f"| {row['variant']} | " + " | ".join(f"{ms / scale:.{digits}f}" for ms in cells)
                     + f" | {replaced} |{issue}")
    return "\n".join(lines)


def _benchmark_kernels():
    """``benchmarks/benchmark_kernels.py`` as a module under a private name (no ``sys.path`` entry, so nothing else
    that imports a module called ``kernels`` or ``benchmark_kernels`` can get it by accident)."""
    path = ROOT / "benchmarks" / "benchmark_kernels.py"
    spec = importlib.util.spec_from_file_location("_atedm_benchmark_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_parts() -> list[str]:
    """The latest GPU run's tables: its steps, the end-to-end rows (eager, and compiled where committed: the first
    run's, in ``run1/``, where the latest has none), the split and the kernels, from ``benchmarks/results/gpu/``."""
    parts = []
    summary_path = GPU / "summary.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        lines = [f"The GPU run (`.ci/gpu --budget {summary['budget_s']:g}`, {summary['wall_s']:.0f} s; from "
                 "`benchmarks/results/gpu/summary.json`, logs in `logs.tar.gz` beside it):", "",
                 "| step | status | wall s | cap s | note |", "|---|---|---|---|---|"]
        for step in summary["steps"]:
            lines.append(f"| {step['name']} | {step['status']} | {step['wall_s']:.0f} | {step['cap_s']:.0f} | "
                         f"{(step['reason'] or '').split(' in: ')[0]} |")
        parts.append("\n".join(lines))
    for path, label in ((GPU / "unet_e2e_1024.json", "GPU figures, measured. "),
                        (GPU / "unet_e2e_compile_1024.json", "GPU figures, measured. "),
                        (GPU / "run1" / "unet_e2e_compile_1024.json",
                         "GPU figures, measured in the first run (the latest run's compiled step ran past its cap). "),
                        (GPU / "graph" / "unet_e2e_graph_1024.json",
                         "GPU figures, measured in a third call (`.ci/gpu --only environment wheels build e2e-graph`: "
                         "eager rows, then the same variants captured as CUDA graphs and replayed). ")):
        if path.is_file() and not (path.parent.name == "run1" and (GPU / path.name).is_file()):
            report, source = json.loads(path.read_text()), path.relative_to(ROOT).as_posix()
            parts.append(label + e2e_table(report, source, unit="ms"))
            if any("split_ms" in row for row in report["rows"]):
                parts.append(f"Where one profiled call's time goes on the GPU (ms of device time per op, from "
                             f"`{source}`):\n\n{split_table(report, unit='ms')}")
    kernels = GPU / "kernels.json"
    if kernels.is_file():
        table = _benchmark_kernels().format_table(json.loads(kernels.read_text()))
        parts.append(f"GPU kernels, measured (from `{kernels.relative_to(ROOT).as_posix()}`; "
                     f"`benchmarks/benchmark_kernels.py`):\n\n```\n{table}\n```")
    return parts


def cpu_e2e_reports() -> list[tuple[Path, dict]]:
    """The committed CPU end-to-end runs, smallest image first."""
    paths = sorted(RESULTS.glob("unet_e2e_cpu_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [(path, json.loads(path.read_text())) for path in paths]


def render() -> str:
    parts = []
    macs_path = RESULTS / "macs_sdxl_1024.json"
    macs = json.loads(macs_path.read_text()) if macs_path.is_file() else None
    parts.append(macs_table(macs) if macs else "No MACs results committed.")
    cpu_reports = cpu_e2e_reports()
    for path, report in cpu_reports:
        source = path.relative_to(ROOT).as_posix()
        parts.append("CPU figures, measured (not a GPU claim). " + e2e_table(report, source))
        parts.append(f"Where one profiled call's time goes (seconds, from `{source}`):\n\n{split_table(report)}")
        absent = [name for name in PEERS if not any(row["variant"] == name for row in report["rows"])]
        if absent:
            parts.append(f"`{source}` has no {', '.join(absent)} rows: this run did not time them (they cost "
                         "about 6.5 dense calls more per round); `atedm bench` with the `peers` extra installed does.")
    if macs:
        parts.append(peers_table(macs, cpu_reports))
    gpu = gpu_parts()
    parts += gpu or ["No GPU timings are committed yet: the GPU tables appear here once `.ci/gpu` has run and its "
                     "results are committed under `benchmarks/results/gpu/`."]
    return "\n\n".join(parts)


QUALITY = RESULTS / "quality_fashion.json"
WEIGHTS = ROOT / "atedm_kernels" / "tools" / "fashion" / "weights"
QUALITY_START, QUALITY_END = "<!-- quality:start -->", "<!-- quality:end -->"
DIAGNOSIS = RESULTS / "quality_fashion_diagnosis.json"  # python -m atedm_kernels.tools.fashion.diagnose
CLAIM_SIGMAS = 2.0  # a paired difference counts as real when it exceeds this many standard errors


def paired(rows: dict, better: str, worse: str) -> tuple[float, float]:
    """Mean and standard error of ``worse``'s fidelity distance minus ``better``'s, sample by sample (same seeds)."""
    a, b = rows[better]["fidelity_per_sample"], rows[worse]["fidelity_per_sample"]
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1)
    return mean, (var / len(diffs)) ** 0.5


def claim_line(rows: dict, spread: float, claim: str, better: str, worse: str) -> str:
    """One paper claim, "``better`` beats ``worse``", judged on paired fidelity and on FID against its spread."""
    mean, stderr = paired(rows, better, worse)
    fid_gap = rows[worse]["fid"] - rows[better]["fid"]
    fidelity = ("holds" if mean > CLAIM_SIGMAS * stderr else "reversed" if mean < -CLAIM_SIGMAS * stderr
                else "no difference beyond the noise")
    fid = ("holds" if fid_gap > CLAIM_SIGMAS * spread else "reversed" if fid_gap < -CLAIM_SIGMAS * spread
           else "within the spread")
    return (f"| {claim} | `{better}` vs `{worse}` | {rows[better]['fidelity_rmse']:.4f} vs "
            f"{rows[worse]['fidelity_rmse']:.4f} (paired difference {mean:+.4f} ± {stderr:.4f}): {fidelity} | "
            f"{rows[better]['fid']:.2f} vs {rows[worse]['fid']:.2f} ({fid_gap:+.2f}): {fid} |")


def quality_section() -> str:
    """The Quality section's numbers, from the committed quality JSON and the weights' logs."""
    if not QUALITY.is_file():
        return "No quality run is committed yet (`atedm quality --out benchmarks/results` makes one)."
    report = json.loads(QUALITY.read_text())
    train = json.loads((WEIGHTS / "train_log.json").read_text())
    judge = json.loads((WEIGHTS / "yardstick_log.json").read_text())
    settings, spread = report["settings"], report["spread"]
    rows = {row["method"]: row for row in report["rows"]}
    dense = rows["dense"]
    std = spread["dense_fid_std"]
    lines = [
        f"The model: {train['parameters'] / 1e6:.2f} M parameters, trained for {train['steps_done']} steps of batch "
        f"{train['settings']['batch']} in {train['seconds'] / 60:.0f} min of wall time on this 2-core CPU, "
        f"{train.get('paused_seconds', 0) / 60:.0f} of them paused while the yardstick trained (final loss "
        f"{train['loss'][-1][1]:.4f}; `{train['command']}`). The yardstick classifies the 10,000 held-out images "
        f"at {judge['held_out_accuracy']:.1%}; on dense samples it finds the class asked for "
        f"{dense['class_accuracy']:.1%} of the time (chance: 10%).",
        "",
        f"{settings['samples']} samples per method (seeds 0-{settings['samples'] - 1}, class = seed mod 10), "
        f"{settings['steps']} DDIM steps, guidance {settings['guidance']}; dense's FID over {settings['spread_sets']} "
        f"disjoint seed sets: {', '.join(f'{f:.2f}' for f in spread['dense_fid_per_seed_set'])} (std {std:.2f}): a "
        "FID difference smaller than about twice that is noise. Fidelity: RMS pixel distance (images in [-1, 1]) to "
        "the dense sample of the same seed and class, mean ± standard error over samples (from "
        "`benchmarks/results/quality_fashion.json`):",
        "",
        "| method | group | M MACs / step | vs dense | FID | class accuracy | fidelity to dense |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        fidelity = (f"{row['fidelity_rmse']:.4f} ± {row['fidelity_rmse_stderr']:.4f}" if "fidelity_rmse" in row
                    else "(itself)")
        lines.append(f"| {row['method']} | {row['group']} | {row['macs_per_step'] / 1e6:.1f} | "
                     f"{row['macs_vs_dense']:.1%} | {row['fid']:.2f} | {row['class_accuracy']:.1%} | {fidelity} |")
    claims = [
        ("G-WPR selection beats random selection", "atedm", "random-selection"),
        ("similarity copy beats padding zeros", "atedm", "recovery-zeros"),
        ("similarity copy beats interpolation", "atedm", "recovery-interpolate"),
        ("pruning after the feed-forward beats before it", "atedm", "prune-before-ff"),
        ("prune less early (DSAP) beats pruning everywhere", "atedm", "atedm-dsap-off"),
        ("prune less early beats prune less late", "atedm", "atedm-dsap-reversed"),
    ]
    lines += ["", f"The paper's claims, judged here (a claim holds when the paired difference exceeds {CLAIM_SIGMAS:g} "
              "standard errors, or the FID gap twice dense's seed-set std):", "",
              "| claim | rows | fidelity to dense | FID |", "|---|---|---|---|"]
    lines += [claim_line(rows, std, *claim) for claim in claims if claim[1] in rows and claim[2] in rows]
    if DIAGNOSIS.is_file():
        lines += ["", *diagnosis_table(json.loads(DIAGNOSIS.read_text()))]
    return "\n".join(lines)


def diagnosis_table(report: dict) -> list[str]:
    """Where each pruning block's error comes from, G-WPR against random selection
    (``python -m atedm_kernels.tools.fashion.diagnose``)."""
    lines = [
        f"Where a pruning block's error comes from ({report['samples']} samples, {report['steps']} steps, every "
        "pruning block call; errors as a fraction of the norm of the dense block's update, summed over the run; "
        "from `benchmarks/results/quality_fashion_diagnosis.json`):",
        "",
        "| selection | pruned tokens' share of the dense update | error on kept tokens | error on pruned tokens "
        "(copy) | the same with no update (zeros) | grid distance to the copied token / to the nearest kept |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | {row['pruned_update_share']:.1%} | {row['kept_error']:.3f} | "
                     f"{row['pruned_error']:.3f} | {row['zeros_pruned_error']:.3f} | "
                     f"{row['source_distance']:.2f} / {row['nearest_kept_distance']:.2f} |")
    return lines


# The README's op table: signatures and meanings written here; the kernels column from the one kernel table,
# atedm_kernels.backends.KERNELS, which the ops dispatch through.
OP_DOCS = {
    "attention_with_map": ("q [B,H,N,D], k, v [B,H,M,D], scale=None, map_dtype=None -> out [B,H,N,D], amap [B,N,M]",
                           "`out = softmax(q k^T scale) v`; `amap = mean_h softmax(...)` (fp16 map by default)"),
    "attention": ("q, k, v, scale=None -> out", "the same kernel without the map"),
    "gwpr": ("amap [B,N,N], num_iters, damping=0 -> scores [B,N] f32", "`s0 = 1/N`, `s <- (1-d) A^T s + d/N`"),
    "select_tokens": ("scores [B,N], keep -> keep_idx [B,K], prune_idx [B,N-K]",
                      "top-`keep`, ties to the lower index, both ascending"),
    "similarity_sources": ("amap, keep_idx, prune_idx -> src [B,N-K]",
                           "`argmax_j amap[keep_idx[j], p]`, ties to the lowest j"),
    "gather_tokens": ("x [B,N,C], idx [B,K] -> [B,K,C]", "`out[b,j] = x[b, idx[b,j]]`"),
    "recover_tokens": ("x_kept [B,K,C], keep_idx, prune_idx, src -> [B,N,C]",
                       "kept tokens in place, pruned copy `x_kept[src]`"),
    "gwpr_cross": ("ca_map [B,N,L], num_iters, kind -> scores [B,N] f32",
                   "cross-attention G-WPR (`entropy`, `hard_clip`, `soft_clip`, `power`)"),
    "sito_select": ("x [B,N,C], h, w, sx, sy, prune_ratio, noise -> keep_idx, prune_idx, src",
                    "SiTo's base tokens, pruned tokens and copy sources"),
}
OPS_START, OPS_END = "<!-- ops:start -->", "<!-- ops:end -->"


def ops_section() -> str:
    from atedm_kernels.backends import KERNELS

    lines = ["| op | inputs -> outputs | meaning | kernels besides the reference (`atedm_kernels.kernels.*`) |",
             "|---|---|---|---|"]
    for op, families in KERNELS.items():
        signature, meaning = OP_DOCS[op]
        kernels = ", ".join(f"{family} (`{where}`)" for family, where in families.items()) or "none"
        lines.append(f"| `{op}` | {signature} | {meaning} | {kernels} |")
    return "\n".join(lines)


# generated section -> (the page that holds it, its start and end markers)
SECTIONS = {
    "tables": (ROOT / "docs" / "performance.md", START, END),
    "quality": (ROOT / "docs" / "quality.md", QUALITY_START, QUALITY_END),
    "ops": (README, OPS_START, OPS_END),
}


def section(name: str) -> str:
    """The current text of generated section ``name`` (between its markers, in its page)."""
    page, start_marker, end_marker = SECTIONS[name]
    text = page.read_text()
    start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
    return text[start:end].strip()


def rendered(name: str) -> str:
    return {"tables": render, "quality": quality_section, "ops": ops_section}[name]()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count-macs", action="store_true", help="recount the SD-XL MACs JSON first")
    args = parser.parse_args(argv)
    if args.count_macs:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "macs_sdxl_1024.json").write_text(json.dumps(count_macs(), indent=2) + "\n")
    for name, (page, start_marker, end_marker) in SECTIONS.items():
        text = page.read_text()
        start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
        page.write_text(text[:start] + "\n" + rendered(name) + "\n" + text[end:])
    print(f"README and docs/ tables written from {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
