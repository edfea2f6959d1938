"""README tables from committed JSON: never typed by hand.

``python benchmarks/readme_tables.py --count-macs`` recounts the SD-XL MACs (meta device, seconds) into
``benchmarks/results/macs_sdxl_1024.json``; ``python benchmarks/readme_tables.py`` (re)writes the README section
between ``<!-- tables:start -->`` and ``<!-- tables:end -->`` from every JSON under ``benchmarks/results/``:
the MACs table; the peers' table (DeepCache, T-GATE, AT-EDM on DeepCache: MACs and, where a committed CPU run
has their rows, CPU time); the CPU end-to-end tables (``unet_e2e_cpu_*.json``, from ``atedm bench --device cpu``, with the
pruning path's split); and the GPU end-to-end and kernel tables when a GPU run has committed ``unet_e2e.json`` /
``kernels.json``. ``tests/test_readme_tables.py`` fails when the README and the JSON disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- tables:start -->", "<!-- tables:end -->"
PEERS = ("deepcache", "tgate", "atedm+deepcache")  # atedm_kernels.peers.PACKAGES, without importing torch
FEW_STEP_RUNS = (1, 2, 4)  # step counts of distilled SD-XL models (SDXL-Turbo, SDXL-Lightning, LCM)
PAPER_MACS = {"dense": 6.7e12, "atedm-normal": 4.1e12}  # SD-XL, 1024 px, CFG batch 2 (paper and supplementary A.3)


def count_macs() -> dict:
    """MACs per U-Net step of SD-XL base at 1024x1024, batch 2, for every method and phase, the mean step of
    ``AtEdmConfig.few_step()`` runs of 1, 2 and 4 steps, and the peers' mean step over their authors' runs (needs the
    ``peers`` extra)."""
    from atedm_kernels.flops import count_run_macs, count_unet_macs
    from atedm_kernels.peers import PACKAGES, SETTINGS
    from atedm_kernels.sdxl import AtEdmConfig, build_sdxl_unet
    from atedm_kernels.unet_bench import TIMED, count_macs as count_variants

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


def e2e_table(report: dict, source: str) -> str:
    settings = report["settings"]
    lines = [
        f"End-to-end U-Net step, SD-XL base architecture ({settings['scale']}, random weights), "
        f"{settings['height']}x{settings['width']}, batch {settings['batch']}, {settings['dtype']}, on "
        f"{report.get('device', '?')}; median of {settings['reps']} interleaved calls (from `{source}`):",
        "",
        "| variant | mode | G MACs | median s | speed-up vs dense | MACs ratio | peak GiB | pruning path extra |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dense_macs = {row["compiled"]: row["macs"] for row in report["rows"] if row["variant"] == "dense"}
    for row in report["rows"]:
        peak = f"{row['peak_memory_bytes'] / 2**30:.2f}" if row.get("peak_memory_bytes") else "n/a"
        mode = "compiled" if row["compiled"] else "eager"
        overhead = row.get("pruning_overhead")
        extra = f"{overhead['extra_ms'] / 1e3:.2f} s ({overhead['fraction_of_call']:.1%})" if overhead else ""
        ratio = dense_macs[row["compiled"]] / row["macs"]
        lines.append(
            f"| {row['variant']} | {mode} | {row['macs'] / 1e9:.1f} | {row['median_ms'] / 1e3:.2f} | "
            f"{row['speedup_vs_dense']:.2f}x | {ratio:.2f}x | {peak} | {extra} |"
        )
    return "\n".join(lines)


def split_table(report: dict) -> str:
    """Where the time of one profiled call goes, per variant (seconds)."""
    ops = ("attention_with_map", "gwpr", "select_tokens", "similarity_sources", "gather_tokens", "recover_tokens")
    lines = [
        "| variant | profiled call | SDPA | " + " | ".join(ops) + " | rest | SDPA replaced by the map |",
        "|---" * (len(ops) + 5) + "|",
    ]
    for row in report["rows"]:
        if "split_ms" not in row:
            continue
        split, overhead = row["split_ms"], row.get("pruning_overhead")
        cells = [row["profiled_call_ms"], split["sdpa"], *(split[op] for op in ops), split["rest"]]
        replaced = f"{overhead['replaced_sdpa_ms'] / 1e3:.3f}" if overhead else ""
        lines.append(f"| {row['variant']} | " + " | ".join(f"{ms / 1e3:.3f}" for ms in cells) + f" | {replaced} |")
    return "\n".join(lines)


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
    e2e, kernels = RESULTS / "unet_e2e.json", RESULTS / "kernels.json"
    if e2e.is_file():
        parts.append(e2e_table(json.loads(e2e.read_text()), "benchmarks/results/unet_e2e.json"))
    if kernels.is_file():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from kernels import format_table

        table = format_table(json.loads(kernels.read_text()))
        parts.append(f"Kernels (from `benchmarks/results/kernels.json`):\n\n```\n{table}\n```")
    if not (e2e.is_file() or kernels.is_file()):
        parts.append(
            "No GPU timings are committed yet: the GPU end-to-end and kernel tables appear here once `.ci/gpu` has "
            "run on an H100-class GPU and its JSON is committed under `benchmarks/results/`; until then "
            "`benchmarks/NOTES.md` models the GPU side (labelled as a model)."
        )
    return "\n\n".join(parts)


def section(readme: str) -> str:
    """The README's current generated section (between the markers)."""
    start, end = readme.index(START) + len(START), readme.index(END)
    return readme[start:end].strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count-macs", action="store_true", help="recount the SD-XL MACs JSON first")
    args = parser.parse_args(argv)
    if args.count_macs:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "macs_sdxl_1024.json").write_text(json.dumps(count_macs(), indent=2) + "\n")
    readme = README.read_text()
    new = readme.replace(section(readme), render()) if section(readme) else readme.replace(
        START + "\n" + END, START + "\n" + render() + "\n" + END
    )
    README.write_text(new)
    print(f"README tables written from {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
