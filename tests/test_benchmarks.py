"""Benchmarks cannot rot: each one runs here in --quick mode (every row and every peer of the
full run), the committed results are full runs of this history, and the README's tables are
exactly what benchmarks/tables.py writes from them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import tables

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
BENCHMARKS.remove("tables")
IN_CHECKOUT = tables.git("rev-parse", "HEAD").returncode == 0
needs_history = pytest.mark.skipif(
    not IN_CHECKOUT or tables.git("rev-parse", "--is-shallow-repository").stdout.strip() == "true",
    reason="needs a git checkout with its full history",
)


def identity(result: dict) -> list[tuple]:
    return sorted((r["name"], r.get("model"), r.get("tool")) for r in result["rows"])


def test_every_benchmark_has_committed_results_and_a_table():
    assert BENCHMARKS, "no benchmark scripts found"
    tabled = {stem for stem, _ in tables.TABLES.values()}
    for name in BENCHMARKS:
        assert (ROOT / "benchmarks" / "results" / f"{name}.json").exists(), name
        assert name in tabled, f"benchmarks/tables.py writes no table for {name}"


@needs_history
@pytest.mark.parametrize("name", BENCHMARKS)
def test_committed_result_is_a_clean_full_run_of_this_history(name):
    result = tables.load(name)
    prov = result["provenance"]
    assert result["quick"] is False, f"{name}.json is a --quick run; commit only full runs"
    assert prov["dirty"] is False, f"{name}.json was run on a tree with uncommitted changes"
    assert prov["sources"] and f"benchmarks/{name}.py" in prov["sources"]
    ancestor = tables.git("merge-base", "--is-ancestor", prov["commit"], "HEAD")
    assert ancestor.returncode == 0, f"{name}.json: commit {prov['commit']} is not an ancestor of HEAD"
    for key in ("command", "started", "seconds"):
        assert prov[key], key
    assert {"cpu", "threads", "torch", "onnxruntime", "python"} <= set(result["machine"])


@needs_history
def test_readme_tables_are_what_the_script_writes():
    for doc in tables.DOCS:
        text = doc.read_text(encoding="utf-8")
        assert tables.render(text) == text, f"{doc.name}: tables differ; run `python benchmarks/tables.py`"
    rendered = {m["name"] for doc in tables.DOCS for m in tables.MARKER.finditer(doc.read_text("utf-8"))}
    assert rendered == set(tables.TABLES), "every table is placed once in the docs"


@needs_history
def test_stale_marking_follows_the_recorded_sources():
    result = tables.load("quantization")
    first = tables.git("rev-list", "--max-parents=0", "HEAD").stdout.split()[0]

    def footer(commit, sources):
        return tables.footer(
            "quantization",
            dict(result, provenance={**result["provenance"], "commit": commit, "sources": sources}),
        )

    old = footer(first, ["pare/__init__.py", "no/such/file.py"])  # pare/__init__.py changed since
    assert "**STALE**" in old and "`pare/__init__.py`" in old and "no/such" not in old
    assert "STALE" not in footer(first, [])
    assert "not in this repository" in footer("0" * 40, ["pare/__init__.py"])
    assert "records no commit" in footer(None, ["pare/__init__.py"])  # run outside a checkout
    assert "records no commit" in tables.footer("quantization", {"rows": []})  # before provenance


@pytest.mark.slow
@pytest.mark.bench
@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_quick_run(name, tmp_path):
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    quick = json.loads(out.read_text())
    assert quick["quick"] is True and quick["benchmark"] == name
    assert quick["provenance"]["seconds"] > 0 and quick["provenance"]["command"].endswith(str(out))
    full = tables.load(name)
    # the smoke run covers the full run: the same rows (every variant, every peer) and targets
    assert identity(quick) == identity(full)
    assert [t["name"] for t in quick["targets"]] == [t["name"] for t in full["targets"]]
    text = "\n".join(render(quick) for stem, render in tables.TABLES.values() if stem == name)
    assert all(r["name"] in text for r in quick["rows"])  # and its tables render from it
