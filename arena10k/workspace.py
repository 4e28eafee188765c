"""Where a run keeps its files. One data directory = one run."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from arena10k.checkpoint import Checkpoint, describe_changes, drop_policies, dumps, write_atomic
from arena10k.errors import CheckpointMismatchError
from arena10k.records import SCHEMA_VERSION, Prompt, from_dict

if TYPE_CHECKING:
    from arena10k.config import ExperimentConfig
    from arena10k.stages.base import CheckpointSpec


def derive_seed(run_seed: int, *parts: str) -> int:
    """A per-item seed: the same item gets the same seed in every run, whatever ran before it."""
    digest = hashlib.sha256(":".join([str(run_seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def item_key(prompt_id: str, policy: str) -> str:
    return f"{prompt_id}|{policy}"


def policy_of(key: str) -> str:
    return key.rpartition("|")[2]


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def prompts_path(self) -> Path:
        return self.root / "prompts.jsonl"

    @property
    def filter_report_path(self) -> Path:
        return self.root / "filter_report.json"

    @property
    def phase2_dir(self) -> Path:
        return self.root / "phase2"

    @property
    def pid_path(self) -> Path:
        """Names the pipeline process working on this directory, while it runs (see arena10k.liveness)."""
        return self.root / "pipeline.pid"

    def checkpoint_path(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.jsonl"

    def checkpoint_meta_path(self, name: str) -> Path:
        """The configuration fingerprint a checkpoint was written under (see arena10k.checkpoint)."""
        path = self.checkpoint_path(name)
        return path.with_name(path.stem + ".meta.json")

    @staticmethod
    def of_checkpoint(path: Path) -> Workspace:
        return Workspace(path.parent.parent)

    def progress_path(self, name: str) -> Path:
        """When each item of a checkpoint finished, for status's rate and ETA; resuming never needs it."""
        return self.root / "progress" / f"{name}.tsv"

    @property
    def config_path(self) -> Path:
        """The configuration of the latest run, so that readers (status) follow its policies."""
        return self.root / "config.json"

    def saved_config(self) -> ExperimentConfig | None:
        from arena10k.config import ExperimentConfig

        if not self.config_path.exists():
            return None
        return ExperimentConfig.model_validate(json.loads(self.config_path.read_text()))

    def open_checkpoint(self, spec: CheckpointSpec, config: ExperimentConfig) -> Checkpoint:
        return Checkpoint(self.checkpoint_path(spec.name), spec.name, spec.fingerprints(config))

    def drop(self, checkpoint: str, policies: set[str]) -> int:
        """Deletes these policies' items of a checkpoint, and their progress lines, so they are recomputed."""
        drop_policies(self.progress_path(checkpoint), policies)
        return drop_policies(self.checkpoint_path(checkpoint), policies)

    def check_prepare_fingerprint(self, fingerprint: dict) -> bool:
        """True when prompts were already prepared under this fingerprint."""
        meta_path = self.root / "prepare.meta.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())["fingerprint"]
            changes = describe_changes(stored, fingerprint)
            if changes and self.prompts_path.exists():
                raise CheckpointMismatchError(
                    "Prompts in this data directory were prepared differently:\n  " + "\n  ".join(changes)
                    + "\nRecompute everything with --force prepare, or restore the previous configuration."
                )
        return self.prompts_path.exists() and meta_path.exists()

    def save_prompts(self, prompts: list[Prompt], report: dict, fingerprint: dict) -> None:
        write_atomic(self.prompts_path, "".join(dumps(p.__dict__) + "\n" for p in prompts))
        write_atomic(self.filter_report_path, json.dumps(report, indent=2) + "\n")
        write_atomic(self.root / "prepare.meta.json", dumps({"schema": SCHEMA_VERSION, "fingerprint": fingerprint}) + "\n")

    def load_prompts(self) -> list[Prompt]:
        if not self.prompts_path.exists():
            raise CheckpointMismatchError(f"No prompts in {self.root}: run stage 01 (prepare) first.")
        return [from_dict(Prompt, json.loads(line)) for line in self.prompts_path.read_text().splitlines()]

    def forget_prompts(self) -> None:
        """--force prepare: the prompts and everything computed from them."""
        for path in [self.prompts_path, self.filter_report_path, self.root / "prepare.meta.json",
                     *(self.root / "checkpoints").glob("*"), *(self.root / "progress").glob("*")]:
            path.unlink(missing_ok=True)

    def start_log(self) -> Path:
        """One log file per run, beside the data it describes."""
        path = self.root / "logs" / time.strftime("run-%Y%m%d-%H%M%S.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("arena10k")
        root.setLevel(logging.INFO)
        root.handlers = [handler]
        return path
