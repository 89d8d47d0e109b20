"""Experiment trackers (`loggers:` in the config) and the record of where a run came from (`run:`).

- `tensorboard` and `csv` write into the run directory (`<trainer.default_root_dir>/version_N`), which also holds
  `config.yaml`, the checkpoints and the metrics; a list without either gets `csv`, so every run has its directory.
- `mlflow` logs to `MLFLOW_TRACKING_URI` when it is set, else to a SQLite store in the run directory
  (`mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db`); the experiment is the config's `experiment`.
- `wandb` (optional: `pip install wandb`) runs offline unless you are logged in (`wandb login`, WANDB_API_KEY);
  the project is WANDB_PROJECT or the experiment.
A run resumed in place (`fit ckpt=last`) continues its MLflow and W&B runs (their ids are kept in the run directory,
`mlflow_run.json`, `wandb_run.json`) and keeps its earlier CSV rows.
Scalars and hyperparameters go to every logger, figures (the routing heatmaps and exemplar grids) to every logger
that takes images: TensorBoard images, MLflow artifacts, W&B images. The hyperparameters include `run`: the config
files and overrides, the git commit of the code (and whether it had uncommitted changes) and the library versions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Optional

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from mope_lightning.errors import ConfigError
from mope_lightning.fileio import atomic_write

FILE_LOGGERS = ("tensorboard", "csv")  # the ones that own the run directory
VERSIONED = ("mope_lightning", "torch", "lightning", "timm", "transformers", "torchmetrics")


def check_trackers(cfg: DictConfig) -> None:
    """Before anything is built: the chosen trackers' packages are installed and a tracking server answers."""
    if "wandb" in cfg.loggers and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "loggers: wandb needs the wandb package, which is not installed here; `pip install wandb`, "
            "or drop wandb from loggers"
        )
    if "mlflow" in cfg.loggers:
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigError(
                "loggers: mlflow needs the mlflow client: `pip install mlflow-skinny sqlalchemy "
                "alembic` (in requirements.txt), or drop mlflow from loggers"
            )
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            _probe_mlflow(uri)


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe_mlflow(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    # One quick try: MLflow's default retries with backoff for minutes before it gives up.
    with _environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # any failure here (network, auth, a bad store) would end the run later
            reason = " ".join(str(exc).split())[:300]
            raise ConfigError(
                f"loggers: mlflow: MLFLOW_TRACKING_URI={uri} does not answer ({reason}); start the "
                "tracking server or fix the URI, or unset MLFLOW_TRACKING_URI to log to a store in "
                "the run directory"
            ) from None


def build_loggers(cfg: DictConfig, root: Path, version: Optional[str | int]) -> list:
    """The Lightning loggers of `cfg.loggers`, a file logger first (its folder is the run directory)."""
    names = [n for n in cfg.loggers if n in FILE_LOGGERS] or ["csv"]
    names += [n for n in cfg.loggers if n not in FILE_LOGGERS]
    loggers = []
    for name in names:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=root, name="", version=version, default_hp_metric=False))
        elif name == "csv":
            logger = CSVLogger(save_dir=root, name="", version=version)
            _keep_csv_history(Path(logger.log_dir))
            loggers.append(logger)
        version = loggers[0].version  # every file logger in the same folder
        run_dir = Path(loggers[0].log_dir)
        if name == "mlflow":
            loggers.append(_mlflow_logger(cfg, run_dir))
        elif name == "wandb":
            loggers.append(_wandb_logger(cfg, run_dir))
    return loggers


def records_nothing(path: Path) -> bool:
    """Whether `path`, a file in a new run directory, records nothing of a run yet: the config SaveConfig writes
    when the run sets up, or a TensorBoard event file holding only its header. A run directory holding only such
    files is removed when its command fails (fileio.NewFolders)."""
    if path.name == "config.yaml":
        return True
    if not path.name.startswith("events.out.tfevents."):
        return False
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        events = [event for _, event in zip(range(2), EventFileLoader(str(path)).Load())]
    except Exception:  # no tensorboard package, or a file it cannot read: kept, as a record we cannot judge
        return False
    return len(events) == 1 and events[0].WhichOneof("what") == "file_version"


def _keep_csv_history(run_dir: Path) -> None:
    """Lightning's CSV logger deletes the metrics.csv it finds in its folder: a run resumed in place keeps the
    earlier part's as metrics.part<k>.csv. (That the folder is not empty is expected: TensorBoard shares it.)"""
    import warnings

    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    metrics = run_dir / "metrics.csv"
    if rank_zero_only.rank == 0 and metrics.is_file():
        parts = len(list(run_dir.glob("metrics.part*.csv")))
        metrics.rename(run_dir / f"metrics.part{parts + 1}.csv")


def _tracker_run(run_dir: Path, tracker: str, where: str) -> Optional[str]:
    """The id of the tracker's run that logged this run directory before (a run resumed in place continues it)."""
    path = run_dir / f"{tracker}_run.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored.get("id") if isinstance(stored, dict) and stored.get("where") == where else None


def _remember_tracker_run(run_dir: Path, tracker: str, where: str, run_id: str) -> None:
    if rank_zero_only.rank == 0 and run_id:
        atomic_write(run_dir / f"{tracker}_run.json", lambda fh: json.dump({"where": where, "id": run_id}, fh))


class ContinuedMLFlowLogger(MLFlowLogger):
    """The MLflow run of a fit resumed in place. MLflow's params cannot change, so they stay those the run started
    with; what the resume changed is in the run directory's resumes.json."""

    def log_hyperparams(self, params) -> None:
        pass


def _mlflow_logger(cfg: DictConfig, run_dir: Path):
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)  # the SQLite store and the run's id live there
    uri = env_uri or f"sqlite:///{run_dir.resolve() / 'mlflow.db'}"
    tags = {"tags": ", ".join(cfg.tags)} if cfg.tags else {}
    if cfg.notes:
        tags["mlflow.note.content"] = cfg.notes  # shown as the run's description
    if cfg.run.git_commit:
        tags["mlflow.source.git.commit"] = cfg.run.git_commit
    run_id = _tracker_run(run_dir, "mlflow", uri)
    kind = ContinuedMLFlowLogger if run_id else MLFlowLogger
    logger = kind(
        experiment_name=cfg.experiment,
        run_name=run_dir.name,
        tags=tags or None,
        tracking_uri=uri,
        run_id=run_id,
        artifact_location=None if env_uri else (run_dir.resolve() / "mlflow-artifacts").as_uri(),
    )
    _remember_tracker_run(run_dir, "mlflow", uri, logger.run_id)  # starts the MLflow run (on rank 0)
    return logger


def _wandb_logged_in() -> bool:
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_logger(cfg: DictConfig, run_dir: Path):
    import uuid

    project = os.environ.get("WANDB_PROJECT", cfg.experiment)
    run_id = _tracker_run(run_dir, "wandb", project) or uuid.uuid4().hex[:12]
    _remember_tracker_run(run_dir, "wandb", project, run_id)
    return WandbLogger(
        project=project,
        name=run_dir.name,
        id=run_id,
        save_dir=str(run_dir),
        offline=not _wandb_logged_in(),
        tags=list(cfg.tags) or None,
        notes=cfg.notes,
    )


IMAGE_LOGGERS = (TensorBoardLogger, MLFlowLogger, WandbLogger)  # the ones log_figures writes to


def takes_images(logger) -> bool:
    return isinstance(logger, IMAGE_LOGGERS)


def log_figures(loggers, figures: dict, step: int) -> None:
    """Matplotlib `figures` (name -> figure) to every logger that takes images, under `routing/<name>`."""
    for logger in loggers:
        for name, fig in figures.items():
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(f"routing/{name}", fig, global_step=step, close=False)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_figure(logger.run_id, fig, f"routing/{name}/step_{step:07d}.png")
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=f"routing/{name}", images=[fig], step=step)


CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding mope_lightning/ (a git checkout, or site-packages)


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _own_checkout() -> bool:
    """Whether this package runs from a git checkout of its own (not from site-packages inside another repo)."""
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and Path(top).resolve() == CHECKOUT


def record_code(cfg: DictConfig) -> None:
    """Fill `cfg.run` with the code that runs: the git commit of this checkout (and whether tracked files differ
    from it) and the versions of the libraries that make the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    commit = _git("rev-parse", "HEAD") if _own_checkout() else None
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {}
    for package in VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    cfg.run.git_commit, cfg.run.git_dirty, cfg.run.versions = commit, bool(status) if commit else None, versions


def where_to_look(loggers) -> list[tuple[str, str]]:
    """(tracker, how to see this run) for the summary a command prints."""
    found = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            found.append(("tensorboard", f"tensorboard --logdir {Path(logger.log_dir).parent}"))
        elif isinstance(logger, CSVLogger):
            found.append(("csv", str(Path(logger.log_dir) / "metrics.csv")))
        elif isinstance(logger, MLFlowLogger):
            import mlflow

            found.append(("mlflow", f"mlflow ui --backend-store-uri {mlflow.get_tracking_uri()} (run {logger.run_id})"))
        elif isinstance(logger, WandbLogger):
            run = logger.experiment
            found.append(("wandb", f"wandb sync {Path(run.dir).parent}" if run.offline else run.url))
    return found
