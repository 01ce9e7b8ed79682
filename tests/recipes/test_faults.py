"""Faults injected into real runs: SIGKILL in every stage and in the report, a damaged or
replaced file before ``--resume``, two runs into one folder, a full disk, hostile paths. After
each, nothing outside the run folder has changed, no file is half-written, and ``--resume``
ends with the results of an uninterrupted run on the same seed."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from pare.cli import main
from pare.errors import PareError
from pare.io import inside, name_problem, remove_tree
from pare.lock import LOCK, run_lock
from tests.helpers import TINY_RECIPE

RECIPE = {
    **TINY_RECIPE,
    "train": {"epochs": 2, "batch_size": 16},
    "stages": [
        {"technique": "prune", "amount": 0.5, "finetune_epochs": 1},
        {"technique": "quantize", "mode": "weight_only", "bits": 4},
    ],
}
STAGES = ["00-baseline", "01-prune-1", "02-quantize-2"]


def outcome(out) -> list:
    """What an identical run must reproduce: every stage's metrics and sizes, and the tensors of
    its weight files (their bytes differ: safetensors writes metadata in no fixed order)."""
    results = json.loads((out / "results.json").read_text())
    return [
        (s["name"], s["metrics"], s["val_metrics"], s["cost"]["params"], s["cost"]["size_bytes"])
        for s in results["stages"]
    ] + [
        (str(p.relative_to(out)), {k: v.tolist() for k, v in load_file(p).items()})
        for p in sorted(out.glob("stages/*/*.safetensors"))
    ]


def no_partial_files(out) -> None:
    leftovers = [p for p in out.rglob("*.tmp")]
    assert not leftovers, leftovers
    if (out / "results.json").exists():
        json.loads((out / "results.json").read_text())  # complete, never half-written


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the recipe; tests copy it instead of running it again."""
    root = tmp_path_factory.mktemp("reference")
    (root / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(root / "r.yaml"), "--out", str(root / "out")]) == 0
    return root


def copy_run(reference, tmp_path):
    shutil.copy(reference / "r.yaml", tmp_path / "r.yaml")
    shutil.copytree(reference / "out", tmp_path / "out")
    return str(tmp_path / "r.yaml"), tmp_path / "out"


def tree(root, skip) -> dict:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents
    }


KILL = """
import os, signal, sys
import pare.recipes.runner as runner
where = sys.argv[1]
calls = []

def kill_in(original, index):
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == index:  # after the stage's weights are on disk, before its record
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapper

if where == "report":
    runner.write_report = kill_in(runner.write_report, 1)
else:
    runner.save_predictions = kill_in(runner.save_predictions, int(where) + 1)
from pare.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("where", ["0", "1", "2", "report"])
def test_sigkill_then_resume_gives_the_uninterrupted_result(reference, tmp_path, where, capsys):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    (tmp_path / "mine.txt").write_text("keep")
    out = tmp_path / "out"
    before = tree(tmp_path, out)
    proc = subprocess.run(
        [sys.executable, "-c", KILL, where, "run", str(tmp_path / "r.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    no_partial_files(out)
    finished = (
        json.loads((out / "results.json").read_text())["stages"] if (out / "results.json").exists() else []
    )
    assert len(finished) == (3 if where == "report" else int(where))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--resume"]) == 0
    # the killed run's lock file is left; its flock died with it: taken over, with a message
    assert "taking over the lock of an earlier run" in capsys.readouterr().err
    assert outcome(out) == outcome(reference / "out")
    assert (out / "report.html").exists() and not (out / LOCK).exists()
    assert tree(tmp_path, out) == before  # nothing outside --out was touched


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "changed since it was recorded"),
        (lambda p: shutil.copy(p.parent.parent / STAGES[0] / p.name, p), "changed since it was recorded"),
        (lambda p: p.unlink(), "is missing"),
    ],
)
def test_resume_rebuilds_a_damaged_stage(reference, tmp_path, capsys, damage, message):
    recipe, out = copy_run(reference, tmp_path)
    damage(out / "stages" / STAGES[1] / "model.safetensors")
    assert main(["run", recipe, "--out", str(out), "--resume"]) == 0
    printed = " ".join(capsys.readouterr().err.split())  # progress goes to stderr, wrapped
    assert (
        "stage prune-1: " in printed
        and message in printed
        and "running it (and what follows) again" in printed
    )
    assert outcome(out) == outcome(reference / "out")


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"recipe": {"name": "ti', "is damaged (JSONDecodeError"),
        ("[]", "not a pare results file: recipe, task, stages missing"),
        ("{}", "not a pare results file"),
        ('{"recipe": {}, "task": {}, "stages": [1]}', "stages[0] missing"),
    ],
)
def test_damaged_results_are_named(reference, tmp_path, capsys, text, message):
    recipe, out = copy_run(reference, tmp_path)
    (out / "results.json").write_text(text)
    assert main(["report", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert main(["run", recipe, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and message in err and "Traceback" not in err


def test_damaged_predictions_are_named(reference, tmp_path, capsys):
    _, out = copy_run(reference, tmp_path)
    path = out / "stages" / STAGES[2] / "predictions.npz"
    path.write_bytes(path.read_bytes()[:50])
    assert main(["report", str(out)]) == 2
    assert f"{path} is damaged" in capsys.readouterr().err


def test_a_held_folder_is_refused_by_pid(reference, tmp_path, capsys):
    recipe, out = copy_run(reference, tmp_path)
    with run_lock(out):
        assert main(["run", recipe, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"is in use by another pare run (pid {os.getpid()} on" in err
    assert outcome(out) == outcome(reference / "out")  # the refused run changed nothing
    assert main(["run", recipe, "--out", str(out), "--resume"]) == 0  # released: it runs


@pytest.mark.slow
def test_two_runs_into_one_folder(tmp_path):
    # long enough that the second run (a new interpreter importing torch) starts while it holds the lock
    slow = {**RECIPE, "train": {**RECIPE["train"], "epochs": 1000, "patience": None}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(slow))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pare.cli", "run", str(tmp_path / "r.yaml"), "--out", str(out)]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / LOCK).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    first.communicate(timeout=300)
    assert first.returncode == 0
    assert second.returncode == 2 and f"(pid {first.pid} on" in second.stderr, second.stderr
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--resume"]) == 0  # consistent


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


@pytest.mark.slow
def test_full_disk_leaves_whole_files_and_resumes(reference, tmp_path):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "pare.cli", "run", str(tmp_path / "r.yaml"), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no space left or file too large" in proc.stderr and "Traceback" not in proc.stderr
    no_partial_files(out)
    assert 0 < len(json.loads((out / "results.json").read_text())["stages"]) < 3
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--resume"]) == 0
    assert outcome(out) == outcome(reference / "out")


@pytest.mark.parametrize(
    "name", ["x/../../../victim", "../escape", "", "..", ".hidden", "a/b", "n" * 65, None, 3]
)
def test_hostile_names_are_not_plain(name):
    assert name_problem(name, "name") is not None


def test_paths_are_held_inside_the_run_folder(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim"
    run.mkdir()
    victim.mkdir()
    (victim / "data.txt").write_text("keep")
    for hostile in [run / ".." / "victim", run / "stages" / ".." / ".." / "victim", tmp_path]:
        with pytest.raises(PareError, match="outside the run folder"):
            remove_tree(run, hostile)
    (run / "link").symlink_to(victim)  # a link planted in the run folder leads outside
    with pytest.raises(PareError, match="outside the run folder"):
        inside(run, run / "link" / "data.txt")
    with pytest.raises(PareError):
        remove_tree(run, run / "link")
    assert (victim / "data.txt").read_text() == "keep"
    (run / "stages" / "00-x").mkdir(parents=True)
    remove_tree(run, run / "stages" / "00-x")
    assert not (run / "stages" / "00-x").exists()


def test_a_stage_folder_linked_outside_is_never_deleted(reference, tmp_path, capsys):
    recipe, out = copy_run(reference, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("keep")
    shutil.rmtree(out / "stages" / STAGES[1])
    (out / "stages" / STAGES[1]).symlink_to(victim)
    assert main(["run", recipe, "--out", str(out), "--resume"]) == 2
    assert "outside the run folder" in capsys.readouterr().err
    assert (victim / "data.txt").read_text() == "keep"
