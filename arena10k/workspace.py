"""Where a run keeps its files, and the stage names that key them. One data directory = one run."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from arena10k.checkpoint import Checkpoint, describe_changes, dumps, write_atomic
from arena10k.errors import CheckpointMismatchError
from arena10k.records import SCHEMA_VERSION, Prompt, from_dict

STAGES = ("prepare", "generate", "teacher_force", "judge", "oracle", "phase2")


def derive_seed(run_seed: int, *parts: str) -> int:
    """A per-item seed: the same item gets the same seed in every run, whatever ran before it."""
    digest = hashlib.sha256(":".join([str(run_seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def item_key(prompt_id: str, policy: str) -> str:
    return f"{prompt_id}|{policy}"


def policy_of(key: str) -> str:
    return key.rpartition("|")[2]


def force_flag(stage: str) -> str:
    return f"--force {stage}"


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

    def open_checkpoint(self, name: str, stage: str, fingerprint: dict) -> Checkpoint:
        return Checkpoint(self.checkpoint_path(name), name, fingerprint, force_flag(stage))

    def check_prepare_fingerprint(self, fingerprint: dict) -> bool:
        """True when prompts were already prepared under this fingerprint."""
        meta_path = self.root / "prepare.meta.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())["fingerprint"]
            changes = describe_changes(stored, fingerprint)
            if changes and self.prompts_path.exists():
                raise CheckpointMismatchError(
                    "Prompts in this data directory were prepared differently:\n  " + "\n  ".join(changes)
                    + f"\nRecompute everything with {force_flag('prepare')}, or restore the previous configuration."
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

    def forget(self, stages: list[str]) -> None:
        """Delete what the given stages wrote, so they are recomputed."""
        for path in self._outputs(stages):
            if path.is_dir():
                for child in sorted(path.rglob("*"), reverse=True):
                    child.unlink() if child.is_file() else child.rmdir()
                path.rmdir()
            elif path.exists():
                path.unlink()

    def _outputs(self, stages: list[str]) -> list[Path]:
        by_stage = {
            "prepare": [self.prompts_path, self.filter_report_path, self.root / "prepare.meta.json"],
            "generate": self._checkpoint_files("generate"),
            "teacher_force": self._checkpoint_files("teacher_force"),
            "judge": self._checkpoint_files("judge"),
            "oracle": self._checkpoint_files("oracle_calibration") + self._checkpoint_files("oracle_validation"),
            "phase2": [self.phase2_dir],
        }
        return [path for stage in stages for path in by_stage[stage]]

    def _checkpoint_files(self, name: str) -> list[Path]:
        return [self.checkpoint_path(name), self.checkpoint_meta_path(name), self.progress_path(name)]

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
