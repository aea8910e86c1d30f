"""Run folders of FTTT commands, on ScoreFlow's stage manifests (``scoreflow.workspace``).

Layout under ``<workspace>/<model>/<dataset>/``::

    hard/              python -m fttt.hard: greedy's attempts.jsonl and results.jsonl,
                       hard_ids.json (the filter) and hard.manifest.json
    <method>_s<seed>/  python -m fttt.run: attempts.jsonl (every generation),
                       results.jsonl (one line per finished question), run.manifest.json

``<model>`` is the model name with ``/`` as ``--`` (a local folder: its name). A manifest
says ``running`` until every question is done; a killed run resumes from
``results.jsonl`` (attempts of the question it was in are dropped and redone), and a
finished one is redone only with ``--force``. Changing a result-changing setting of an
unfinished run is refused, as in ScoreFlow.
"""

from __future__ import annotations

from pathlib import Path

from fttt.config import FtttConfig
from scoreflow.workspace import STAGES, StageSpec, Workspace

HARD_STAGE = "hard"
RUN_STAGE = "run"

STAGES.update({
    HARD_STAGE: StageSpec(HARD_STAGE, ("attempts.jsonl", "results.jsonl", "hard_ids.json"),
                          "python -m fttt.hard --dataset {dataset}"),
    RUN_STAGE: StageSpec(RUN_STAGE, ("attempts.jsonl", "results.jsonl"),
                         "python -m fttt.run --method METHOD --dataset {dataset} --seed SEED"),
})


def model_slug(name: str) -> str:
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder.resolve().name
    return name.replace("/", "--")


class RunFolder(Workspace):
    """One command's folder: ``hard`` or ``<method>_s<seed>`` of a model and dataset."""

    config_class = FtttConfig

    def __init__(self, config: FtttConfig, dataset: str, name: str) -> None:
        super().__init__(config.workspace, dataset, 0)
        self.epoch = None  # type: ignore[assignment]  # FTTT runs have no epoch (manifests say null)
        self.name = name
        self.model_dir = self.root / model_slug(config.model.name) / dataset
        self.dir = self.model_dir / name

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.name}"


def hard_folder(config: FtttConfig, dataset: str) -> RunFolder:
    return RunFolder(config, dataset, HARD_STAGE)


def run_folder(config: FtttConfig, dataset: str, method: str, seed: int) -> RunFolder:
    return RunFolder(config, dataset, f"{method}_s{seed}")
