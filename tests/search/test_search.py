"""Architecture search and auto-compression on Optuna: recipes that reproduce, shared studies,
constraints, storage errors, dead workers."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from pare.config import parse_size
from pare.errors import ConfigError, PareError
from pare.recipes import load_recipe
from pare.registry import techniques
from pare.search.driver import Limits, auto, nas
from pare.search.space import derived_space, technique_space

RECIPE = {
    "name": "bc",
    "data": {"source": "breast_cancer"},
    "model": {"name": "mlp", "args": {"width": 64, "depth": 2}},
    "train": {"epochs": 8, "batch_size": 32, "lr": 0.003, "patience": None},
    "evaluate": {"bootstrap": 50, "latency_repeats": 5, "onnx": False},
}


def storage_trials(url, name):
    return optuna.load_study(study_name=name, storage=url).trials


def test_a_technique_registered_later_is_searched_from_its_config():
    # the test technique of conftest registers no search hint: its typed fields are the space
    space = technique_space(techniques()["zero_smallest"])
    assert space == {"fraction": (0.0, 1.0), "finetune_epochs": (0, 1)}
    assert technique_space(techniques()["lora"]) is None  # opted out
    assert derived_space(techniques()["prune"].config_cls)["criterion"][0] == "l1"


def test_auto_returns_a_recipe_that_reproduces_its_numbers(tmp_path):
    out = tmp_path / "auto"
    summary = auto(
        load_recipe(RECIPE),
        out,
        limits=Limits(max_drop=3.0, max_size=parse_size("20KB")),
        trials=4,
        allowed=["prune", "share", "zero_smallest"],
    )
    best = next(t for t in summary["trials"] if t["number"] == summary["best"])
    assert best["feasible"] and best["size_bytes"] <= 20 * 1024 and best["drop"] <= 3.0
    assert summary["final"]["reproduced"], summary["final"]  # pare run gives the same val metric and size
    recipe = load_recipe(str(out / "best.yaml"))  # a valid recipe
    assert [s.technique for s in recipe.stages] == best["stages"]
    assert set(best["stages"]) <= {"prune", "share", "zero_smallest"}
    assert (out / "pareto.png").stat().st_size > 0 and (out / "search.json").exists()
    assert summary["front"] and summary["best"] in [t["number"] for t in summary["trials"]]


def test_unreachable_limits_name_the_closest(tmp_path):
    with pytest.raises(PareError, match=r"no candidate met the limits size <= 10 bytes.*closest, trial \d+"):
        auto(load_recipe(RECIPE), tmp_path, limits=Limits(max_size=10), trials=2, allowed=["prune"])
    assert yaml.safe_load((tmp_path / "closest.yaml").read_text())["stages"] is not None
    assert not (tmp_path / "best.yaml").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(PareError, match="cannot open the study storage.*postgresql"):
        auto(
            load_recipe(RECIPE),
            tmp_path / "x",
            limits=Limits(),
            trials=1,
            storage="postgresql+psycopg2://nobody@127.0.0.1:9/none",
        )
    assert not (tmp_path / "x").exists()  # nothing half-written
    with pytest.raises(ConfigError, match="--max-size: '12 apples'"):
        parse_size("12 apples", "--max-size")
    with pytest.raises(ConfigError, match="not registered"):
        auto(load_recipe(RECIPE), tmp_path, limits=Limits(), trials=1, allowed=["prnue"])
    with pytest.raises(ConfigError, match="explores zoo architectures"):
        nas(load_recipe("minilm_topics"), tmp_path, limits=Limits(), trials=1)


def test_architecture_search_with_pruning(tmp_path):
    summary = nas(
        load_recipe(RECIPE), tmp_path, limits=Limits(), trials=5, objectives=("quality",), final=False
    )
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert (
        best["model"]["args"]["width"] in (16, 32, 64, 128, 256) and 1 <= best["model"]["args"]["depth"] <= 4
    )
    states = {t["state"] for t in summary["trials"]}
    assert states <= {"COMPLETE", "PRUNED"}
    assert load_recipe(str(tmp_path / "best.yaml")).stages == []


def _worker(tmp_path, storage, name, trials, extra_env=None):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    cmd = [sys.executable, "-m", "pare.cli", "auto", str(recipe), "--trials", str(trials), "--no-final"]
    cmd += [
        "--storage",
        storage,
        "--study",
        name,
        "--techniques",
        "prune,share",
        "--out",
        str(tmp_path / name),
    ]
    env = dict(os.environ, **(extra_env or {}))
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _two_workers_share(tmp_path, url):
    procs = [_worker(tmp_path, url, "shared", 2) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trials = storage_trials(url, "shared")
    assert len(trials) == 4  # both workers' trials in one study
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= 2


@pytest.mark.slow
def test_two_workers_share_a_sqlite_study(tmp_path):
    _two_workers_share(tmp_path, f"sqlite:///{tmp_path / 'study.db'}")


@pytest.mark.slow
def test_two_workers_share_a_postgresql_study(tmp_path):
    pgserver = pytest.importorskip(
        "pgserver", reason="pgserver (a PostgreSQL build from PyPI) is not installed"
    )
    try:
        server = pgserver.get_server(tmp_path / "pg", cleanup_mode="stop")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"PostgreSQL could not start here: {e}")
    try:
        url = server.get_uri().replace("postgresql://", "postgresql+psycopg2://")
        _two_workers_share(tmp_path, url)
    finally:
        server.cleanup()


def _running_with_heartbeat(db) -> list[int]:
    """RUNNING trials that have sent a heartbeat: Optuna never fails a RUNNING trial without one
    (a worker killed between asking for a trial and its first heartbeat leaves it RUNNING)."""
    query = (
        "SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING'"
    )
    with contextlib.closing(sqlite3.connect(db)) as con:
        try:
            return [n for (n,) in con.execute(query)]
        except sqlite3.OperationalError:  # the study's tables are not created yet
            return []


def _kill_inside_a_trial(tmp_path, url, env) -> list[int]:
    """Start a worker and SIGKILL it inside a trial that has a heartbeat; the numbers of such
    trials it left RUNNING. Trials are short, so a kill can land just after one ended: try again."""
    for _ in range(5):
        victim = _worker(tmp_path, url, "killed", 50, env)
        deadline = time.time() + 120
        while time.time() < deadline and not _running_with_heartbeat(tmp_path / "study.db"):
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        running = _running_with_heartbeat(tmp_path / "study.db")
        if running:
            return running
    raise AssertionError("no kill landed inside a trial in 5 tries")


@pytest.mark.slow
def test_a_killed_worker_fails_its_trial_and_the_study_goes_on(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    fast = {"PARE_HEARTBEAT_S": "1", "PARE_GRACE_S": "3"}
    running = _kill_inside_a_trial(tmp_path, url, fast)
    time.sleep(4)  # past the grace period
    survivor = _worker(tmp_path, url, "killed", 1, fast)
    survivor.communicate(timeout=300)
    assert survivor.returncode == 0
    trials = {t.number: t.state for t in storage_trials(url, "killed")}
    assert all(trials[n] == optuna.trial.TrialState.FAIL for n in running)
    assert optuna.trial.TrialState.COMPLETE in trials.values()
