"""Runs a stage's work items against its checkpoint: skip what is done, try the rest, record every outcome.

An `ItemError` is written as a failed line and retried (within this run and the next ones) until the
item has had `max_attempts` attempts or the error is permanent. Any other error, an authentication
failure above all, stops the stage at once; everything finished so far is already on disk.

Items are run in the order of `keys` within each lane (the model an item calls), and each lane keeps as many
calls in flight as its model serves at once: a lane never waits behind another model's calls.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from collections.abc import Callable
from dataclasses import dataclass, field

from tqdm import tqdm

from arena10k import liveness
from arena10k.checkpoint import Checkpoint, may_try
from arena10k.errors import ItemError

log = logging.getLogger("arena10k.runner")


@dataclass
class StageReport:
    stage: str
    expected: int = 0
    done: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> items that stay failed
    blocked: Counter = field(default_factory=Counter)  # reason -> items whose input is missing
    unreached: Counter = field(default_factory=Counter)  # reason -> items whose endpoint did not serve them (not recorded)
    attempted: int = 0  # items tried in this run
    seconds: float = 0.0

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    @property
    def missing(self) -> int:
        return self.expected - self.done

    def tally(self, checkpoint: Checkpoint, keys: list[str]) -> None:
        """Counts what the checkpoint holds of these items: done, or failed by their last error."""
        for key in keys:
            state = checkpoint.items.get(key)
            if state and state.record is not None:
                self.done += 1
            elif state:
                self.failed[state.last_error] += 1

    def __add__(self, other: StageReport) -> StageReport:
        """Two reports of one stage over separate items (its online items and its batched ones)."""
        return StageReport(self.stage, self.expected + other.expected, self.done + other.done, self.failed + other.failed,
                           self.blocked + other.blocked, self.unreached + other.unreached,
                           self.attempted + other.attempted, self.seconds + other.seconds)

    def describe(self) -> str:
        text = (f"{self.stage}: {self.done}/{self.expected} done, {self.failed_total} failed, "
                f"{self.attempted} tried in this run ({self.seconds:.1f}s)")
        for reason, count in list(self.failed.items()) + [(f"blocked, {r}", n) for r, n in self.blocked.items()]:
            text += f"\n    {count} x {reason}"
        for reason, count in self.unreached.items():
            text += (f"\n    {count} x not reached, the endpoint did not serve them ({reason}): not failed, none of their "
                     "attempts used; a rerun tries them")
        return text


WorkItem = tuple[str, Callable[[], dict]]
# The work of an item, or why it cannot be done yet (the response it needs is missing).
MakeWork = Callable[[str], Callable[[], dict] | str]


def run_items(stage: str, checkpoint: Checkpoint, keys: list[str], make_work: MakeWork, max_attempts: int,
              lanes: dict[str, int] | None = None, lane_of: Callable[[str], str] | None = None) -> StageReport:
    """Runs the items of `keys` not yet done, at most lanes[lane_of(key)] at a time in each lane (by default one
    lane, one at a time); work is made only for those. Only this thread writes the checkpoint, one line per outcome
    as it arrives, so a kill loses only the calls in flight."""
    lanes, lane_of = (lanes, lane_of) if lanes and lane_of else ({"": 1}, lambda key: "")
    started = time.monotonic()
    report = StageReport(stage, expected=len(keys))
    todo: dict[str, deque[WorkItem]] = {lane: deque() for lane in lanes}
    for key in checkpoint.todo(keys, max_attempts):
        work = make_work(key)
        if isinstance(work, str):
            report.blocked[work] += 1
        else:
            todo[lane_of(key)].append((key, work))
    runnable = len(keys) - sum(report.blocked.values())
    done = sum(1 for key in keys if _succeeded(checkpoint, key))
    waiting = sum(map(len, todo.values()))
    failed = runnable - waiting - done
    with tqdm(total=runnable, initial=runnable - waiting, desc=f"{stage:>18}", unit="item",
              dynamic_ncols=True) as bar, ThreadPoolExecutor(max_workers=sum(lanes.values())) as pool:
        in_flight: dict[Future, WorkItem] = {}
        running = Counter()  # lane -> calls in flight
        tried: set[str] = set()
        try:
            while any(todo.values()) or in_flight:
                for lane, queue in todo.items():
                    while queue and running[lane] < lanes[lane]:  # a bounded window, never one task per item
                        key, work = queue.popleft()
                        tried.add(key)
                        running[lane] += 1
                        in_flight[pool.submit(work)] = (key, work)
                finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    key, work = in_flight.pop(future)
                    running[lane_of(key)] -= 1
                    try:
                        checkpoint.append(key, record=future.result())
                    except ItemError as error:
                        if error.unreachable:  # not the item's failure: nothing recorded, a rerun tries it
                            log.warning("%s %s not reached: %s", stage, key, error)
                            report.unreached[str(error)] += 1
                            bar.update(1)
                            continue
                        checkpoint.append(key, error=str(error), retryable=error.retryable, raw=error.raw)
                        log.warning("%s %s attempt %d failed: %s", stage, key, checkpoint.items[key].attempts, error)
                        if may_try(checkpoint.items.get(key), max_attempts):
                            todo[lane_of(key)].append((key, work))
                            continue
                    done += _succeeded(checkpoint, key)
                    failed += not _succeeded(checkpoint, key)
                    liveness.record_finished(checkpoint, key)
                    bar.set_postfix(done=done, failed=failed, remaining=runnable - done - failed, refresh=False)
                    bar.update(1)
        except BaseException as error:
            # Authentication failures, Ctrl-C: start nothing new; what finished is already on disk.
            for future in in_flight:
                future.cancel()
            if isinstance(error, KeyboardInterrupt):  # said at once: the calls in flight may take a while to return
                bar.close()
                print(f"\nstopping: {sum(not f.done() for f in in_flight)} calls in flight are left to return, their "
                      "results not kept; nothing new starts, every finished item is saved", file=sys.stderr, flush=True)
            raise
    report.attempted = len(tried)
    report.tally(checkpoint, keys)
    report.seconds = time.monotonic() - started
    log.info("%s: %d/%d done, %d failed, %d blocked, %d tried this run, %.1fs", stage, report.done,
             report.expected, report.failed_total, sum(report.blocked.values()), report.attempted, report.seconds)
    return report


def _succeeded(checkpoint: Checkpoint, key: str) -> bool:
    state = checkpoint.items.get(key)
    return state is not None and state.record is not None
