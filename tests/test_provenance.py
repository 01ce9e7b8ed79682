"""Provenance: the code, command, time and machine recorded beside every result."""

import subprocess

from pare import provenance


def test_git_state_outside_a_checkout_is_unknown(tmp_path):
    assert provenance.git_state(tmp_path) == {"commit": None, "dirty": None}
    assert provenance.loaded_sources(None) == []


def test_git_state_sees_uncommitted_changes_but_not_benchmark_outputs(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = provenance.git_state(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "x.json").write_text("{}")  # a result being written
    assert provenance.git_state(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance.git_state(tmp_path) == {"commit": clean["commit"], "dirty": True}


def test_clock_records_command_time_and_the_package_sources():
    record = provenance.Clock().provenance()
    assert {"commit", "dirty", "command", "started", "seconds", "sources"} <= set(record)
    assert record["seconds"] >= 0 and record["started"].endswith("+00:00")
    if provenance.repo_root() is not None:  # run from a checkout: the package's own files
        assert "pare/provenance.py" in record["sources"]
        assert not any(".venv" in s for s in record["sources"])


def test_sources_leave_out_techniques_that_never_ran(monkeypatch, tmp_path):
    from pare import registry

    root = provenance.repo_root()
    if root is None:
        return
    script = tmp_path / "bench.py"
    script.write_text("print('no technique named here')\n")
    monkeypatch.setattr(provenance.sys, "argv", [str(script)])
    monkeypatch.setattr(registry, "_RAN", set())
    lowrank = "pare/techniques/lowrank/apply.py"
    assert lowrank not in provenance.loaded_sources(root)  # imported by the registry, never run
    monkeypatch.setattr(registry, "_RAN", {"lowrank"})
    assert lowrank in provenance.loaded_sources(root)
    monkeypatch.setattr(registry, "_RAN", set())
    script.write_text("from pare.techniques.lowrank.factorize import svd\n")  # named by the script
    assert lowrank in provenance.loaded_sources(root)
