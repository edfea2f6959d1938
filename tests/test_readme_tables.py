"""The result tables of the README and docs/ are generated from the committed JSON, never typed by hand."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_committed_json():
    tables = _readme_tables()
    for name, (page, _, _) in tables.SECTIONS.items():
        assert tables.section(name) == tables.rendered(name).strip(), (
            f"{page.relative_to(ROOT)}'s section {name!r} is stale: run `python benchmarks/readme_tables.py`"
        )
