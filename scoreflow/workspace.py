"""Epoch workspace: one folder per dataset and epoch, one manifest per stage.

Layout of ``<workspace>/<dataset>/epoch_<i>/``::

    workflows.jsonl            generate (task optimize)
    scores.jsonl               evaluate (task optimize): one record per workflow run
    preferences.jsonl          evaluate (task optimize): the sampled pairs
    adapter/                   optimize --epoch i-1 writes epoch i's LoRA adapter here
    inference/workflows.jsonl  generate --task inference
    inference/scores.jsonl     evaluate --task inference
    <stage>.manifest.json      status, config snapshot, code version, times, counts, usage
    cache.sqlite               executor reply cache (written by the executor layer)

A Table-1 baseline (``scoreflow/baselines.py``) has ``<workspace>/<dataset>/baselines/<name>/``
instead, with ``scores.jsonl``, ``cache.sqlite`` and ``baseline_inference.manifest.json``.

A manifest says ``running`` while a stage works and ``complete`` when it is done.
A running stage that was interrupted resumes from its records; a complete one is
only redone with ``force``, which first removes its outputs.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from scoreflow.config import DATASETS, Config, to_dict
from scoreflow.errors import ScoreFlowError
from scoreflow.jsonio import JsonlLog, atomic_write_json, read_json

MANIFEST_VERSION = 1

# Config keys that may change between a run and its resumption without changing what
# the records mean: speed and robustness knobs, and where the executor is reached (its
# URL and key variable; the model, which decides the replies, is not among them).
RESUMABLE_CHANGES = (
    "executor.base_url",
    "executor.api_key_env",
    "executor.concurrency",
    "executor.request_timeout_s",
    "executor.max_retries",
    "executor.backoff_initial_s",
    "executor.backoff_max_s",
    "executor.prices",
    "sandbox.workers",
    "evaluation.runs_in_flight",
    "evaluation.max_infra_failures",
    "generator.batch_size",
    "generator.gpu_memory_utilization",
    "generator.tensor_parallel_size",
    # FTTT (fttt/workspace.py): where the code judge is reached, not what it decides
    "judge.url",
    "judge.attempts",
    "judge.request_timeout_s",
)


@dataclass(frozen=True)
class StageSpec:
    """What a stage writes and how a user runs it."""

    name: str
    outputs: tuple[str, ...]
    command: str  # format fields: dataset, epoch, prev_epoch


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            "generate",
            ("workflows.jsonl",),
            "python generate.py --dataset {dataset} --task optimize --epoch {epoch}",
        ),
        StageSpec(
            "evaluate",
            ("scores.jsonl", "preferences.jsonl"),
            "python evaluate.py --dataset {dataset} --task optimize --epoch {epoch}",
        ),
        StageSpec(
            "optimize",
            ("adapter", "merged"),
            "accelerate launch --num_processes=1 optimize.py --dataset {dataset} --epoch {prev_epoch}",
        ),
        StageSpec(
            "inference_generate",
            ("inference/workflows.jsonl",),
            "python generate.py --dataset {dataset} --task inference --epoch {epoch}",
        ),
        StageSpec(
            "inference_evaluate",
            ("inference/scores.jsonl",),
            "python evaluate.py --dataset {dataset} --task inference --epoch {epoch}",
        ),
        StageSpec(  # a Table-1 baseline (scoreflow/baselines.py), in <dataset>/baselines/<name>/
            "baseline_inference",
            ("scores.jsonl",),
            "python evaluate.py --dataset {dataset} --task inference --baseline NAME",
        ),
    )
}


class Workspace:
    """The folder of one dataset and epoch."""

    config_class: type = Config  # the root config its manifests snapshot (FTTT's run folders: FtttConfig)

    def __init__(self, root: str | Path, dataset: str, epoch: int) -> None:
        if epoch < 0:
            raise ScoreFlowError(f"--epoch: expected an integer >= 0 (got {epoch})")
        self.root = Path(root)
        self.dataset = dataset
        self.epoch = epoch
        self.dir = self.root / dataset / f"epoch_{epoch}"

    @property
    def label(self) -> str:
        """How messages name this folder (a baseline's folder names its baseline instead)."""
        return f"{self.dataset} epoch {self.epoch}"

    @classmethod
    def from_config(cls, config: Config, dataset: str, epoch: int) -> Workspace:
        return cls(config.workspace, dataset, epoch)

    def path(self, relative: str) -> Path:
        return self.dir / relative

    def manifest_path(self, stage: str) -> Path:
        return self.dir / f"{_spec(stage).name}.manifest.json"

    def manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        return read_json(path) if path.exists() else None

    def is_complete(self, stage: str) -> bool:
        manifest = self.manifest(stage)
        return manifest is not None and manifest.get("status") == "complete"

    def finished_with(self, stage: str, config: Config) -> bool:
        """Whether the stage is complete with this config (what a shell loop may skip).

        A stage finished under a different config is an error rather than a skip: a
        re-run loop must not silently mix settings across epochs."""
        manifest = self.manifest(stage)
        if manifest is None or manifest.get("status") != "complete":
            return False
        changed = _meaningful_changes(manifest.get("config", {}), to_dict(config), self.config_class)
        if changed:
            raise ScoreFlowError(
                f"{self.manifest_path(stage)}: the {stage} stage finished with a different config "
                f"({', '.join(changed[:3])} changed); pass --force to redo it"
            )
        return True

    def require(self, stage: str) -> dict[str, Any]:
        """The manifest of a finished stage, or an error saying how to produce it."""
        manifest = self.manifest(stage)
        if manifest is not None and manifest.get("status") == "complete":
            return manifest
        state = "is unfinished" if manifest else "is missing"
        command = _spec(stage).command.format(dataset=self.dataset, epoch=self.epoch, prev_epoch=self.epoch - 1)
        raise ScoreFlowError(
            f"{self.label}: the {stage} stage {state} "
            f"({self.manifest_path(stage)}); run first: {command}"
        )

    def start(self, stage: str, config: Config, *, force: bool = False) -> StageRun:
        """Begin or resume a stage; refuse to clobber a finished one unless forced."""
        spec = _spec(stage)
        snapshot = to_dict(config)
        manifest = self.manifest(stage)
        if manifest is not None and force:
            self._remove_outputs(spec)
            manifest = None
        if manifest is None:
            self._refuse_stray_outputs(spec)
            manifest = _new_manifest(spec, self, snapshot)
        elif manifest.get("status") == "complete":
            raise ScoreFlowError(
                f"{self.label}: the {stage} stage is already finished "
                f"({self.manifest_path(stage)}); pass --force to redo it"
            )
        else:
            if self._has_records(spec):  # nothing recorded yet: any setting may still change
                _check_resumable(manifest.get("config", {}), snapshot, self.manifest_path(stage), self.config_class)
            manifest["resumed_at"] = [*manifest.get("resumed_at", []), _now()]
            manifest["config"] = snapshot
        self.dir.mkdir(parents=True, exist_ok=True)
        return StageRun(self, spec, manifest)  # writes the manifest, with this session in it

    def _remove_outputs(self, spec: StageSpec) -> None:
        for relative in spec.outputs:
            target = self.path(relative)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        self.manifest_path(spec.name).unlink(missing_ok=True)

    def _has_records(self, spec: StageSpec) -> bool:
        """Whether an unfinished stage has written anything (a record, a folder) yet."""
        return any(self.path(r).is_dir() or (self.path(r).exists() and self.path(r).stat().st_size > 0)
                   for r in spec.outputs)

    def _refuse_stray_outputs(self, spec: StageSpec) -> None:
        stray = [str(self.path(r)) for r in spec.outputs if self.path(r).exists()]
        if stray:
            raise ScoreFlowError(
                f"{stray[0]} exists but no {spec.name} manifest does; "
                "move it away or pass --force to replace it"
            )


class StageRun:
    """A stage in progress: its record logs and its manifest."""

    def __init__(self, workspace: Workspace, spec: StageSpec, manifest: dict[str, Any]) -> None:
        self.workspace = workspace
        self.spec = spec
        self.manifest = manifest
        self._logs: dict[str, JsonlLog] = {}
        self._clock = time.monotonic()
        self._session: dict[str, Any] = {"started_at": _now()}
        manifest.setdefault("sessions", []).append(self._session)
        self._saved_at = time.monotonic()
        self._write()

    @property
    def resumed(self) -> bool:
        return bool(self.manifest.get("resumed_at"))

    def log(self, output: str) -> JsonlLog:
        """The record log of one of this stage's JSONL outputs."""
        if output not in self.spec.outputs or not output.endswith(".jsonl"):
            raise ValueError(f"{output!r} is not a JSONL output of the {self.spec.name} stage")
        if output not in self._logs:
            self._logs[output] = JsonlLog(self.workspace.path(output))
        return self._logs[output]

    def output_path(self, output: str) -> Path:
        if output not in self.spec.outputs:
            raise ValueError(f"{output!r} is not an output of the {self.spec.name} stage")
        return self.workspace.path(output)

    def save_session(self, executor: dict[str, Any], *, throttle_s: float = 0.0) -> None:
        """Keep this session's executor usage in the manifest (at most every ``throttle_s``),
        so that what a session paid survives it being killed."""
        self._session["executor"] = executor
        now = time.monotonic()
        if now - self._saved_at >= throttle_s:
            self._saved_at = now
            self._write()

    def stop(self, reason: str, executor: dict[str, Any]) -> None:
        """The session ends without finishing the stage (which stays resumable): say why."""
        self._session.update(executor=executor, stopped=reason, ended_at=_now())
        self._write()

    def close_session(self, executor: dict[str, Any]) -> list[dict[str, Any]]:
        """End this session with its final usage; every session of the stage so far."""
        self._session.update(executor=executor, ended_at=_now())
        return self.manifest["sessions"]

    def _write(self) -> None:
        self._note_isolation()
        atomic_write_json(self.workspace.manifest_path(self.spec.name), self.manifest)

    def _note_isolation(self) -> None:
        """Name the sandbox isolation this session's code ran under (none: no code ran)."""
        from scoreflow.sandbox import isolations_used

        used = isolations_used()
        if used:
            self._session["sandbox_isolation"] = used[0] if len(used) == 1 else used

    def finish(
        self,
        counts: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Mark the stage complete with its counts, token usage and cost."""
        for log in self._logs.values():
            log.close()
        elapsed = time.monotonic() - self._clock
        self.manifest.update(
            status="complete",
            finished_at=_now(),
            wall_time_s=round(self.manifest.get("wall_time_s", 0.0) + elapsed, 3),
            counts=counts or {},
            usage=usage or {},
            **extra,
        )
        self._note_isolation()
        atomic_write_json(self.workspace.manifest_path(self.spec.name), self.manifest)
        return self.manifest


def datasets_with_finished(root: str | Path, stage: str, epoch: int) -> list[str]:
    """The datasets whose epoch ``epoch`` has a finished ``stage`` under the workspace ``root``."""
    return [d for d in DATASETS if Workspace(root, d, epoch).is_complete(stage)]


def infer_dataset(root: str | Path, stage: str, epoch: int, command: str) -> str:
    """The one dataset with a finished ``stage`` at ``epoch`` (the seed README's
    ``optimize.py --epoch=i`` names no dataset); else a one-line error listing them."""
    found = datasets_with_finished(root, stage, epoch)
    if len(found) == 1:
        return found[0]
    where = f"{root}/<dataset>/epoch_{epoch}"
    if not found:
        raise ScoreFlowError(f"{command}: no dataset has a finished {stage} stage in {where}; pass --dataset")
    raise ScoreFlowError(f"{command}: several datasets have a finished {stage} stage in {where} "
                         f"({', '.join(found)}); pass --dataset")


def _spec(stage: str) -> StageSpec:
    try:
        return STAGES[stage]
    except KeyError:
        raise ValueError(f"unknown stage {stage!r}") from None


def _new_manifest(spec: StageSpec, workspace: Workspace, snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "manifest_version": MANIFEST_VERSION,
        "stage": spec.name,
        "dataset": workspace.dataset,
        "epoch": workspace.epoch,
        "status": "running",
        "code_version": code_version(),
        "started_at": _now(),
        "config": snapshot,
    }


def _check_resumable(old: dict[str, Any], new: dict[str, Any], manifest: Path, root: type = Config) -> None:
    changed = _meaningful_changes(old, new, root)
    if changed:
        raise ScoreFlowError(
            f"{manifest}: the unfinished stage was started with a different config "
            f"({', '.join(changed[:3])} changed); pass --force to start it over"
        )


def _meaningful_changes(old: dict[str, Any], new: dict[str, Any], root: type = Config) -> list[str]:
    """Config keys that differ, except speed knobs. A key a newer code version added is
    read at its default in an older snapshot, so upgrading does not orphan a workspace."""
    return [k for k in _diff(_with_defaults(old, to_dict(root())), new, "") if not k.startswith(RESUMABLE_CHANGES)]


def _with_defaults(snapshot: Any, defaults: Any) -> Any:
    if not (isinstance(snapshot, dict) and isinstance(defaults, dict)):
        return snapshot
    merged = {k: _with_defaults(snapshot[k], defaults[k]) if k in defaults else snapshot[k] for k in snapshot}
    return {**{k: v for k, v in defaults.items() if k not in snapshot}, **merged}


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of this checkout (``+dirty`` with local edits), else ``unknown``."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=10)
    return done.stdout.strip()
