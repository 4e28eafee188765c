"""Where a run keeps its files. One data directory = one run, and it knows it is one: a marker file written
when the run starts, without which nothing is ever deleted."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from arena10k.checkpoint import describe_changes, drop_policies, dumps, quarantine_damaged_lines, write_atomic
from arena10k.config import ExperimentConfig
from arena10k.errors import CheckpointMismatchError, ConfigError
from arena10k.records import SCHEMA_VERSION, Prompt, from_dict


def derive_seed(run_seed: int, *parts: str) -> int:
    """A per-item seed: the same item gets the same seed in every run, whatever ran before it."""
    digest = hashlib.sha256(":".join([str(run_seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def item_key(prompt_id: str, policy: str) -> str:
    return f"{prompt_id}|{policy}"


def policy_of(key: str) -> str:
    return key.rpartition("|")[2]


def draw_prompt(prompt_id: str, draw: int) -> str:
    """The prompt part of the key of a policy's `draw`-th response to a prompt (its fresh_draws). The first keeps the
    prompt id itself, so a run's keys stay what they were before a policy had more draws; a later one is
    `prompt_id#draw`, and reads its own response (generate's item of the same key)."""
    return prompt_id if draw == 0 else f"{prompt_id}#{draw}"


def prompt_of(key: str) -> str:
    """The prompt id of an item, whichever draw it is of."""
    return key.partition("|")[0].partition("#")[0]


def draw_of(key: str) -> int:
    draw = key.partition("|")[0].partition("#")[2]
    return int(draw) if draw else 0


RUN_MARKER = ".arena10k-run"
# Made and deleted by a pipeline starting here, before it takes the lock: one per process, as two may start at once.
WRITE_CHECK = ".arena10k-write-check"
# Everything a run writes; --fresh deletes these and nothing else (the lock and marker stay, the run goes on).
RUN_FILES = ("prompts.jsonl", "filter_report.json", "prepare.meta.json", "config.json", "config_source.txt", "pipeline.pid",
             "preflight.json", "checkpoints", "progress", "logs", "phase2", "analysis", "quarantine", "batches.jsonl",
             "batches")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def marker_path(self) -> Path:
        return self.root / RUN_MARKER

    def refuse_foreign_directory(self) -> None:
        """Before anything is written: a directory of other files is never made a run (nor emptied by --fresh)."""
        if not self.root.is_dir():
            return
        # One listing, taken while another pipeline may be starting here.
        names = {path.name for path in self.root.iterdir() if not path.name.startswith(WRITE_CHECK)}
        if not names or names & {RUN_MARKER, "pipeline.lock", "prompts.jsonl", "checkpoints"}:
            return  # new, a run, a run starting, or a run from before the marker
        raise ConfigError(f"{self.root} is not empty and holds no arena10k run (no {RUN_MARKER} file); nothing was "
                          "written or deleted there. Pass a new or empty --data-dir.")

    def create(self) -> None:
        """The run directory, made if it is new and checked writable, before anything is written or any model called."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--data-dir {self.root} is a file, not a directory: pass a directory (a new one is made).")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{WRITE_CHECK}-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise ConfigError(f"The run directory {self.root} cannot be written ({error.strerror}): pass a --data-dir "
                              "where you can create files.") from None

    def unmark(self) -> None:
        """Undoes a start that was refused before its prompts were prepared: the directory is no run's. The preflight's
        findings stay: the refusal names their file for the user to read."""
        self.delete_run_files(keep=("preflight.json",))
        self.marker_path.unlink(missing_ok=True)

    def mark_run(self, dry_run: bool) -> None:
        """Makes the directory this run's (under the pipeline's lock), and keeps a dry run's synthetic results
        and a real run's apart."""
        if not self.marker_path.exists():
            write_atomic(self.marker_path, json.dumps({"dry_run": dry_run, "created": time.time()}) + "\n")
            return
        marked_dry = json.loads(self.marker_path.read_text()).get("dry_run", False)
        if marked_dry and not dry_run:
            raise ConfigError(f"{self.root} holds a dry run (synthetic responses from the loopback server); a real "
                              "run needs a directory of its own. Pass another --data-dir.")
        if dry_run and not marked_dry:
            raise ConfigError(f"{self.root} holds a real run; a dry run needs a directory of its own.")

    @property
    def is_dry_run(self) -> bool:
        return self.marker_path.exists() and json.loads(self.marker_path.read_text()).get("dry_run", False)

    def delete_run_files(self, keep: tuple[str, ...] = ()) -> None:
        """--fresh: what this run wrote (but the files named in `keep`), and only that."""
        for name in (name for name in RUN_FILES if name not in keep):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists() and path != self.pid_path:
                path.unlink()

    def quarantine_damaged(self, names: tuple[str, ...]) -> list[str]:
        """Moves damaged lines out of these checkpoints into quarantine/, so that only their items are redone;
        returns one line per damaged line, for the user."""
        return [line for name in names
                for line in quarantine_damaged_lines(self.checkpoint_path(name), self.root / "quarantine" / f"{name}.jsonl")]

    @property
    def batches_path(self) -> Path:
        """The ledger of the batches sent to providers' Batch APIs (arena10k/batches.py)."""
        return self.root / "batches.jsonl"

    def batch_input_path(self, batch_id: str) -> Path:
        """A batch's input file, from when it is written until the provider has it."""
        return self.root / "batches" / f"{batch_id}.jsonl"

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
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

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

    def save_config(self, config: ExperimentConfig, source: Path) -> None:
        """The config in use, in its own order of policies (status lists them so), and the file it was read from."""
        write_atomic(self.config_path, json.dumps(config.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
        write_atomic(self.root / "config_source.txt", str(Path(source).resolve()) + "\n")

    def made_with(self) -> Path | None:
        """The config file the run was last made with, if it recorded one."""
        path = self.root / "config_source.txt"
        return Path(path.read_text().strip()) if path.is_file() else None

    def saved_config(self) -> ExperimentConfig | None:
        if not self.config_path.exists():
            return None
        return ExperimentConfig.model_validate(json.loads(self.config_path.read_text()))

    def drop(self, checkpoint: str, policies: set[str]) -> int:
        """Deletes these policies' items of a checkpoint, and their progress lines, so they are recomputed."""
        drop_policies(self.progress_path(checkpoint), policies)
        return drop_policies(self.checkpoint_path(checkpoint), policies)

    def prepared_samples(self) -> int | str | None:
        """The run's size as it was last prepared: N given once is remembered."""
        meta_path = self.root / "prepare.meta.json"
        if not (meta_path.exists() and self.prompts_path.exists()):
            return None
        return json.loads(meta_path.read_text()).get("samples")

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

    def save_prompts(self, prompts: list[Prompt], report: dict, fingerprint: dict, samples: int | str) -> None:
        write_atomic(self.prompts_path, "".join(dumps(p.__dict__) + "\n" for p in prompts))
        write_atomic(self.filter_report_path, json.dumps(report, indent=2) + "\n")
        write_atomic(self.root / "prepare.meta.json",
                     dumps({"schema": SCHEMA_VERSION, "fingerprint": fingerprint, "samples": samples}) + "\n")

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
        for earlier in root.handlers:  # an earlier run's, in a process that runs the pipeline again (tests do)
            earlier.close()
        root.handlers = [handler]
        return path
