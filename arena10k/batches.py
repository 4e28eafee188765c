"""Work items sent through a provider's Batch API, for models with `batch: true`: the provider's batch price (half the
online one at OpenAI, Together and Fireworks), results within the batch window instead of seconds, no online rate limit.

The ledger, DIR/batches.jsonl, says what is sent before it is sent, one fsynced event per line:
  prepared   the run's own id for a batch, its checkpoint, model and items: before its input file is written;
  uploaded   the input file's id at the provider;
  submitted  the provider's batch id;
  seen       a state the provider reported, when it changes (scripts/status.py and the report read these);
  collected  every result of the batch is in the checkpoint.
A run killed at any moment resumes from it, never paying twice: a batch prepared but not uploaded is written and
uploaded again (an upload costs nothing); one uploaded but not recorded as submitted is looked for at the provider by
the run's id (batch metadata) and submitted only if it is not there; one submitted is polled; one that ended is
collected, skipping the items a collection cut short already wrote. No item is in two live batches.

A result line becomes the record an online call makes (same request body, same record code); a line the provider
failed becomes the item's failure with the provider's reason, retried in a later batch within max_attempts. What an
expired or cancelled batch did not finish is submitted again: in this run if it expired, in the next if it was
cancelled (someone wanted it stopped). Ctrl-C leaves submitted batches running, since they are paid for: a rerun
collects them, `--cancel-batches` cancels them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arena10k import liveness
from arena10k.checkpoint import Checkpoint
from arena10k.config import ExperimentConfig, ModelConfig
from arena10k.errors import Arena10kError, ItemError
from arena10k.providers import get_provider
from arena10k.providers.base import Generation, ItemCalls
from arena10k.providers.batch_api import BatchAPI, BatchStatus
from arena10k.runner import StageReport, run_items
from arena10k.workspace import Workspace, policy_of

log = logging.getLogger("arena10k.batches")

FIRST_POLL_SECONDS = 1.0  # or the model's batch_poll_seconds if shorter; then twice as long each time, up to it


@dataclass
class Batch:
    """One batch as the ledger knows it."""

    id: str  # the run's own id, also the batch's metadata at the provider
    checkpoint: str
    model: str  # a key of the config's models
    items: list[str]
    attempts: dict[str, int]  # attempts each item had when it was prepared (only those with any)
    requests: int
    prepared: float
    file_id: str | None = None
    batch_id: str | None = None
    submitted: float | None = None
    status: str = "prepared"  # prepared, uploaded, or the provider's last reported state
    completed: int = 0
    failed: int = 0
    ended: float | None = None
    collected: bool = False
    abandoned: bool = False  # sent under a configuration --force replaced: its results are not used
    records: int = 0  # what its collection wrote to the checkpoint
    failures: int = 0


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        self.batches: dict[str, Batch] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:  # the torn last line of a killed run: that event did not happen
                    continue
                self._apply(event)

    def live(self, checkpoint: str | None = None) -> list[Batch]:
        """Batches whose results are still to be written to their checkpoint."""
        return [b for b in self.batches.values() if not b.collected and not b.abandoned
                and checkpoint in (None, b.checkpoint)]

    def running(self) -> list[Batch]:
        """Batches submitted that have not ended as far as this run saw, abandoned ones included: what a provider may still bill."""
        return [b for b in self.batches.values() if b.batch_id and b.ended is None and not b.collected]

    def record(self, event: dict) -> None:
        event = {"time": time.time(), **event}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(event, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self._apply(event)

    def _apply(self, event: dict) -> None:
        kind = event["event"]
        if kind == "prepared":
            self.batches[event["id"]] = Batch(event["id"], event["checkpoint"], event["model"], event["items"],
                                              event["attempts"], event["requests"], event["time"])
            return
        batch = self.batches.get(event["id"])
        if batch is None:
            return
        if kind == "uploaded":
            batch.file_id, batch.status = event["file_id"], "uploaded"
        elif kind == "submitted":
            batch.batch_id, batch.submitted, batch.status = event["batch_id"], event["time"], "submitted"
        elif kind == "seen":
            batch.status, batch.completed, batch.failed = event["status"], event["completed"], event["failed"]
            batch.ended = event["time"] if event.get("ended") else batch.ended
        elif kind == "abandoned":
            batch.abandoned = True
        elif kind == "collected":
            batch.collected, batch.records, batch.failures = True, event["records"], event["failures"]


def run_calls(stage: str, checkpoint: Checkpoint, keys: list[str], make_calls: Callable[[str], ItemCalls | str],
              config: ExperimentConfig, workspace: Workspace, lanes: dict[str, int], lane_of: Callable[[str], str]
              ) -> StageReport:
    """Runs the items of a stage whose work is model calls: in batches for models with `batch: true` (submitted first),
    online for the others (while the batches run), as run_items does; `lane_of` gives the model an item calls."""
    # Items in a batch still running are collected from it, even where their model's batch was turned off since.
    running = {key for batch in Ledger(workspace.batches_path).live(checkpoint.stage) for key in batch.items}
    batched = [key for key in keys if config.models[lane_of(key)].batch or key in running]
    online = [key for key in keys if not config.models[lane_of(key)].batch and key not in running]

    def online_work(key: str) -> Callable[[], dict] | str:
        calls = make_calls(key)
        return calls if isinstance(calls, str) else lambda: call_online(config, calls)

    def run_online() -> StageReport:
        return run_items(stage, checkpoint, online, online_work, config.max_attempts,
                         {lane: n for lane, n in lanes.items() if not config.models[lane].batch}, lane_of)

    if not batched:
        return run_online()
    reports: list[StageReport] = []
    report = run_batched(stage, checkpoint, batched, make_calls, config, workspace,
                         meanwhile=(lambda: reports.append(run_online())) if online else None)
    return report + reports[0] if reports else report


def call_online(config: ExperimentConfig, calls: ItemCalls) -> dict:
    provider = get_provider(config, calls.model)
    return calls.record([provider.generate(request) for request in calls.requests])


def run_batched(stage: str, checkpoint: Checkpoint, keys: list[str], make_calls: Callable[[str], ItemCalls | str],
                config: ExperimentConfig, workspace: Workspace, meanwhile: Callable[[], None] | None = None) -> StageReport:
    """Sends the items of `keys` not yet done through their models' Batch APIs, runs `meanwhile` once they are
    submitted, waits for the batches, and writes every result to the checkpoint; returns the report run_items would."""
    started = time.monotonic()
    ledger = Ledger(workspace.batches_path)
    report = StageReport(stage, expected=len(keys))
    report_tried: set[str] = set()  # items sent in this run
    stalled: set[str] = set()  # items of a batch that ended with none of its results: not sent again in this run
    seen_running: set[str] = set()
    try:
        while True:
            for batch in ledger.live(checkpoint.stage):
                _make_sure_submitted(ledger, batch, config, workspace, make_calls)
            busy = {key for batch in ledger.live(checkpoint.stage) for key in batch.items}
            pending: dict[str, list[tuple[str, ItemCalls]]] = {}
            for key in checkpoint.todo(keys, config.max_attempts):
                if key in busy or key in stalled:
                    continue
                calls = make_calls(key)
                if isinstance(calls, str):
                    report.blocked[calls] += 1
                elif config.models[calls.model].batch:  # not an item left in a batch after batch was turned off
                    pending.setdefault(calls.model, []).append((key, calls))
            for model, items in pending.items():
                for chunk in _chunks(items, config.models[model], get_provider(config, model)):
                    _submit(ledger, checkpoint, model, chunk, config, workspace)
                    report_tried.update(key for key, _ in chunk)
            if meanwhile is not None:
                meanwhile()
                meanwhile = None
            live = ledger.live(checkpoint.stage)
            if not live:
                break
            report.blocked.clear()  # counted again on the next round
            for batch, status in _wait_for_an_end(ledger, live, config, seen_running):
                written = _collect(ledger, batch, status, checkpoint, make_calls, config)
                if written == 0 and batch.status == "expired":
                    stalled.update(batch.items)
                    report.unreached[f"batch {batch.batch_id} {batch.status} with none of them done"] += len(batch.items)
                if batch.status == "cancelled" and batch.id in seen_running:
                    left = len(set(batch.items) - checkpoint.done_keys())
                    raise Arena10kError(
                        f"batch {batch.batch_id} ({stage}, {batch.model}) was cancelled at the provider while this run "
                        f"waited for it: its {written} results are saved; {left} of its items are left to do, and a rerun "
                        "submits them again.")
    except ItemError as error:  # a call to the Files or Batches endpoints, not an item's
        raise Arena10kError(f"{stage}: the Batch API did not do what was asked ({error}). Every batch is on record in "
                            f"{ledger.path}: rerun the same command to resume them.") from None
    except KeyboardInterrupt:
        running = ledger.running()
        if running:
            print(f"\n{len(running)} batches stay submitted at the provider and are paid for ("
                  + ", ".join(b.batch_id for b in running) + "): rerun the same command to collect their results, or "
                  "add --cancel-batches to cancel them.", file=sys.stderr, flush=True)
        raise
    report.attempted = len(report_tried)
    report.tally(checkpoint, keys)
    report.seconds = time.monotonic() - started
    return report


def cancel_all(config: ExperimentConfig, workspace: Workspace) -> str:
    """--cancel-batches: asks the provider to cancel every batch of this run that is submitted and not ended. A rerun
    collects what they finished and submits the rest again."""
    ledger = Ledger(workspace.batches_path)
    lines = []
    for batch in ledger.running():
        status = _api(config, batch.model).cancel(batch.batch_id)
        ledger.record({"event": "seen", "id": batch.id, "status": status.status, "completed": status.completed,
                       "failed": status.failed, "ended": status.ended})
        lines.append(f"batch {batch.batch_id} ({batch.checkpoint}, {batch.model}, {batch.requests} requests): "
                     f"{status.status}, {status.completed} done")
    return "\n".join(lines) or "no batch of this run is running at a provider"


def abandon(workspace: Workspace, units: set[tuple[str, str]]) -> list[str]:
    """--force: the live batches holding items it recomputes were sent under the configuration it replaces, so their
    results are never written; returns what to tell the user (they keep running at the provider until cancelled)."""
    ledger = Ledger(workspace.batches_path)
    lines = []
    for batch in ledger.live():
        if any((batch.checkpoint, policy_of(key)) in units for key in batch.items):
            ledger.record({"event": "abandoned", "id": batch.id})
            lines.append(f"batch {batch.batch_id or batch.id} ({batch.checkpoint}, {batch.model}) was sent under the "
                         "configuration --force replaces: its results will not be used"
                         + (" (it runs on at the provider: --cancel-batches cancels it)" if batch.batch_id else ""))
    return lines


def forgotten_by_fresh(workspace: Workspace) -> list[str]:
    """--fresh deletes the ledger: the batches still running at a provider, which the new start will not know of."""
    return [f"batch {b.batch_id} ({b.checkpoint}, {b.model}) is running at the provider and --fresh forgets it: "
            "it is billed when it finishes (run --cancel-batches before --fresh to cancel it)"
            for b in Ledger(workspace.batches_path).running()]


def _api(config: ExperimentConfig, model: str) -> BatchAPI:
    return get_provider(config, model).batch_api()


def _custom_id(item: int, call: int) -> str:
    """A request's id in its batch: its item's place in the batch's items (the ledger has them), and which of the item's
    calls it is. Short, since some providers cap custom_id at 64 characters (Together), which item keys can exceed."""
    return f"{item}.{call}"


def _item_of(custom_id: str) -> tuple[int, int]:
    item, _, call = custom_id.partition(".")
    return int(item), int(call)


def _chunks(items: list[tuple[str, ItemCalls]], model: ModelConfig, provider) -> list[list[tuple[str, ItemCalls]]]:
    """Items split at the provider's limits of one input file (requests and bytes); an item's calls stay together."""
    chunks: list[list[tuple[str, ItemCalls]]] = [[]]
    requests = size = 0
    for position, (key, calls) in enumerate(items):
        lines = len(calls.requests)
        bytes_ = sum(len(BatchAPI.line(_custom_id(position, i), provider.chat_arguments(r)).encode())
                     for i, r in enumerate(calls.requests))
        if chunks[-1] and (requests + lines > model.batch_max_requests or size + bytes_ > model.batch_max_bytes):
            chunks.append([])
            requests = size = 0
        chunks[-1].append((key, calls))
        requests += lines
        size += bytes_
    return [chunk for chunk in chunks if chunk]


def _submit(ledger: Ledger, checkpoint: Checkpoint, model: str, chunk: list[tuple[str, ItemCalls]],
            config: ExperimentConfig, workspace: Workspace) -> None:
    attempts = {key: checkpoint.items[key].attempts for key, _ in chunk if key in checkpoint.items}
    batch_id = uuid.uuid4().hex
    ledger.record({"event": "prepared", "id": batch_id, "checkpoint": checkpoint.stage, "model": model,
                   "items": [key for key, _ in chunk], "attempts": attempts,
                   "requests": sum(len(calls.requests) for _, calls in chunk)})
    _make_sure_submitted(ledger, ledger.batches[batch_id], config, workspace, dict(chunk).__getitem__)


def _make_sure_submitted(ledger: Ledger, batch: Batch, config: ExperimentConfig, workspace: Workspace,
                         make_calls: Callable[[str], ItemCalls | str]) -> None:
    if batch.batch_id is not None:
        return
    model = config.models[batch.model]
    api, provider = _api(config, batch.model), get_provider(config, batch.model)
    if batch.file_id is not None:  # uploaded; maybe submitted by a process killed before it wrote the id down
        found = api.find(batch.file_id, batch.id, since=batch.prepared - 600)
        if found is not None:
            ledger.record({"event": "submitted", "id": batch.id, "batch_id": found.batch_id})
            return
    else:
        path = workspace.batch_input_path(batch.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            for item, key in enumerate(batch.items):
                calls = make_calls(key)
                if isinstance(calls, str):  # its response was recomputed since: sent as it is now in a later batch
                    continue
                file.writelines(BatchAPI.line(_custom_id(item, i), provider.chat_arguments(request))
                                for i, request in enumerate(calls.requests))
        ledger.record({"event": "uploaded", "id": batch.id, "file_id": api.upload(path, model.batch_file_purpose)})
        path.unlink()
    status = api.submit(batch.file_id, model.batch_window, batch.id)
    ledger.record({"event": "submitted", "id": batch.id, "batch_id": status.batch_id})
    log.info("%s: submitted batch %s (%s, %d requests)", batch.checkpoint, status.batch_id, batch.model, batch.requests)


def _wait_for_an_end(ledger: Ledger, live: list[Batch], config: ExperimentConfig, seen_running: set[str]
                     ) -> list[tuple[Batch, BatchStatus]]:
    """Polls the live batches, with a growing interval, until at least one has ended; returns those that have, with the
    state the provider reported."""
    longest = min(config.models[b.model].batch_poll_seconds for b in live)
    delay = min(FIRST_POLL_SECONDS, longest)
    while True:
        ended = []
        for batch in live:
            status = _api(config, batch.model).status(batch.batch_id)
            if (status.status, status.completed, status.failed) != (batch.status, batch.completed, batch.failed):
                ledger.record({"event": "seen", "id": batch.id, "status": status.status, "completed": status.completed,
                               "failed": status.failed, "ended": status.ended})
                print(f"{batch.checkpoint:>18}: batch {status.batch_id} ({batch.model}): {status.status}, "
                      f"{status.completed}/{batch.requests} requests done, {status.failed} failed", file=sys.stderr, flush=True)
            if status.ended:
                ended.append((batch, status))
            elif status.status != "cancelling":
                seen_running.add(batch.id)
        if ended:
            return ended
        time.sleep(delay)
        delay = min(2 * delay, longest)


def _collect(ledger: Ledger, batch: Batch, status: BatchStatus, checkpoint: Checkpoint,
             make_calls: Callable[[str], ItemCalls | str], config: ExperimentConfig) -> int:
    """Writes the batch's results to the checkpoint: a record, or a failure with the provider's reason, per item it
    finished; what it did not finish (expired, cancelled) is left to do. Returns how many lines it wrote."""
    api, provider = _api(config, batch.model), get_provider(config, batch.model)
    results: dict[str, dict[int, dict]] = {}
    for file_id in (status.output_file_id, status.error_file_id):
        for line in api.lines(file_id) if file_id else []:
            item, call = _item_of(line["custom_id"])
            results.setdefault(batch.items[item], {})[call] = line
    records = failures = 0
    for key in batch.items:
        state = checkpoint.items.get(key)
        if state is not None and (state.record is not None or state.attempts > batch.attempts.get(key, 0)):
            continue  # written by a collection of this batch that a kill cut short
        calls = make_calls(key)
        if isinstance(calls, str):
            continue
        outcome = _outcome(calls, results.get(key, {}), provider, status)
        if outcome is None:
            continue
        if isinstance(outcome, ItemError):
            checkpoint.append(key, error=str(outcome), retryable=outcome.retryable, raw=outcome.raw)
            failures += 1
        else:
            checkpoint.append(key, record=outcome)
            records += 1
        liveness.record_finished(checkpoint, key)
    ledger.record({"event": "collected", "id": batch.id, "records": records, "failures": failures})
    log.info("%s: batch %s %s: %d records, %d failures written", batch.checkpoint, batch.batch_id, status.status,
             records, failures)
    return records + failures


def _outcome(calls: ItemCalls, lines: dict[int, dict], provider, status: BatchStatus) -> dict | ItemError | None:
    """An item's record or failure from its result lines; None when the batch did not get to it."""
    for line in lines.values():
        response = line.get("response") or {}
        if response.get("status_code") != 200:
            code = response.get("status_code")
            body = response.get("body") or {}
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            message = message or (line.get("error") or {}).get("message") or "no reason given"
            return ItemError(f"batch line HTTP {code}: {message}", retryable=code not in (400, 404, 422))
    if len(lines) < len(calls.requests):
        if status.status == "failed":
            return ItemError(f"the provider failed the batch: {status.errors or 'no reason given'}", retryable=True)
        return None
    try:
        generations: list[Generation] = [provider.generation(lines[i]["response"]["body"], request)
                                         for i, request in enumerate(calls.requests)]
        return calls.record(generations)
    except ItemError as error:
        return error

