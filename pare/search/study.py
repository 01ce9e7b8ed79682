"""Optuna studies: where trials are stored, how they are sampled and pruned.

Storage is a SQLite file in the output folder by default, or any Optuna RDB URL (PostgreSQL,
MySQL) so that workers on many machines share one study: each runs ``pare search``/``pare auto``
with the same ``--storage`` and ``--study``. Workers send a heartbeat; a trial whose worker died
is marked failed by the next worker to start a trial, and the study carries on.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

from pare.errors import ConfigError, PareError

# a running trial's worker checks in this often, and is presumed dead after the grace period
HEARTBEAT_S = int(os.environ.get("PARE_HEARTBEAT_S", 5))
GRACE_S = int(os.environ.get("PARE_GRACE_S", 20))


def storage_url(storage: str | None, out: Path) -> str:
    if storage:
        return storage
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out / 'study.db').resolve()}"


def open_study(
    name: str, storage: str | None, out: Path, directions: list[str], sampler: str, seed: int, **kw
):
    """Create the study or join the one of that name; a storage that does not connect is a
    clear error before anything is written."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    url = storage_url(storage, out)
    rdb = None
    for attempt in range(3):  # workers starting together race to create the tables: retry
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat
                rdb = optuna.storages.RDBStorage(
                    url,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None,
                )
            break
        except Exception as e:  # sqlalchemy's errors name the driver and the server's answer
            error = e
            time.sleep(1 + attempt)
    if rdb is None:
        raise PareError(
            f"--storage {url!r}: cannot open the study storage ({type(error).__name__}: "
            f"{str(error).splitlines()[0]}); check the URL, that the server is running and reachable, and "
            f"that its driver is installed (psycopg2 for postgresql://)"
        )
    try:
        return optuna.create_study(
            study_name=name,
            storage=rdb,
            directions=directions,
            sampler=make_sampler(sampler, seed, len(directions), kw.get("constraints")),
            pruner=kw.get("pruner"),
            load_if_exists=True,
        )
    except ValueError as e:  # joined a study of that name with other directions
        raise ConfigError(f"--study {name!r}: {e}; choose another study name") from None


def make_sampler(name: str, seed: int, n_objectives: int, constraints=None):
    import optuna

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2" or (name == "auto" and n_objectives > 1):
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    if name in ("tpe", "auto"):
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, multivariate=True)
    raise ConfigError(f"--sampler: {name!r} is not one of auto, tpe, random, nsga2")


def constraint_values(trial) -> list[float]:
    """Optuna's convention: each value <= 0 means that constraint is met."""
    return list(trial.user_attrs.get("constraints", []))
