"""README tables from committed JSON: never typed by hand.

``python benchmarks/readme_tables.py --count-macs`` recounts the SD-XL MACs (meta device, seconds) into
``benchmarks/results/macs_sdxl_1024.json``; ``python benchmarks/readme_tables.py`` (re)writes the README section
between ``<!-- tables:start -->`` and ``<!-- tables:end -->`` from every JSON under ``benchmarks/results/``:
the MACs table, and the end-to-end and kernel tables when a GPU run has committed ``unet_e2e.json`` /
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
PAPER_MACS = {"dense": 6.7e12, "atedm-normal": 4.1e12}  # SD-XL, 1024 px, CFG batch 2 (paper and supplementary A.3)


def count_macs() -> dict:
    """MACs per U-Net step of SD-XL base at 1024x1024, batch 2, for every method and phase."""
    from atedm_kernels.flops import count_unet_macs
    from atedm_kernels.sdxl import AtEdmConfig, build_sdxl_unet
    from atedm_kernels.unet_bench import TIMED, count_macs as count_variants

    macs = count_variants("full", 1024, 1024, 2, TIMED)
    unet = build_sdxl_unet("full", device="meta")
    macs["atedm-dsap-avg"] = count_unet_macs(unet, 1024, 1024, 2, AtEdmConfig(), "average").total
    macs["atedm-dagger-dsap-avg"] = count_unet_macs(
        unet, 1024, 1024, 2, AtEdmConfig(skip_second_level=True), "average"
    ).total
    return {"model": "SD-XL base U-Net (meta device)", "height": 1024, "width": 1024, "batch": 2, "macs": macs}


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


def e2e_table(report: dict) -> str:
    lines = [
        f"End-to-end U-Net step on {report.get('device', '?')} (from `benchmarks/results/unet_e2e.json`):",
        "",
        "| variant | mode | T MACs | median ms | speed-up vs dense | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        macs = f"{row['macs'] / 1e12:.3f}" if row.get("macs") else "n/a"
        peak = f"{row['peak_memory_bytes'] / 2**30:.1f}" if row.get("peak_memory_bytes") else "n/a"
        mode = "compiled" if row["compiled"] else "eager"
        lines.append(
            f"| {row['variant']} | {mode} | {macs} | {row['median_ms']:.2f} | {row['speedup_vs_dense']:.2f}x | {peak} |"
        )
    return "\n".join(lines)


def render() -> str:
    parts = []
    macs = RESULTS / "macs_sdxl_1024.json"
    parts.append(macs_table(json.loads(macs.read_text())) if macs.is_file() else "No MACs results committed.")
    e2e, kernels = RESULTS / "unet_e2e.json", RESULTS / "kernels.json"
    if e2e.is_file():
        parts.append(e2e_table(json.loads(e2e.read_text())))
    if kernels.is_file():
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from kernels import format_table

        table = format_table(json.loads(kernels.read_text()))
        parts.append(f"Kernels (from `benchmarks/results/kernels.json`):\n\n```\n{table}\n```")
    if not (e2e.is_file() or kernels.is_file()):
        parts.append(
            "No GPU timings are committed yet: the end-to-end and kernel tables appear here once `.ci/gpu` has run "
            "on an H100-class GPU and its JSON is committed under `benchmarks/results/`."
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
