"""The embedded models' engine: one thread, the only one that runs llama.cpp in the process, for every local model.

Callers (the runner's threads, the loopback server's) hand it a job and wait for the job's result. A job is a
generator that runs on the engine's thread: it evaluates what it needs directly, and yields when it must wait, for a
free sequence of its model (`Claim`) or for tokens decoded in steps shared with every other decoding sequence of its
model (`Decode`). Before each step the engine starts every job that has arrived, so that a new prompt is evaluated
and joins the next step. One thread, because each llama.cpp computation already uses every core, and because
llama.cpp's OpenMP build keeps a team of worker threads per calling thread: idle teams of several calling threads
spun against the working one (measured: decode steps 60% slower).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class Claim:
    """Wait for a free sequence to evaluate `prompt` in; the job is sent (sequence, tokens of it already cached)."""

    prompt: list[int]
    reuse: bool  # whether a cached start of the prompt may be reused


@dataclass(frozen=True)
class Decode:
    """Decode `token` at `position` in `sequence`, then each token `next_token` returns given the logits after the one
    before, until it returns None; an exception it raises is raised in the job."""

    sequence: Any
    token: int
    position: int
    next_token: Callable[[np.ndarray], int | None]


Job = Generator[Claim | Decode, Any, Any]


class Model(Protocol):
    """What the engine asks of a model (providers/local.py's LocalProvider)."""

    def has_free_sequence(self) -> bool: ...

    def claim(self, command: Claim) -> Any: ...

    def start_decoding(self, command: Decode) -> None: ...

    def step(self) -> list[tuple[int, BaseException | None]]:
        """One decode step of every decoding sequence; the sequences it finished, each with its next_token's error."""
        ...


@dataclass
class _Running:
    model: Model
    job: Job
    done: Future


class Engine:
    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[_Running] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="llama.cpp", daemon=True)
        self._thread.start()

    def run(self, model: Model, job: Job) -> Any:
        """Runs the job on the engine's thread; returns what it returns, or raises what it raised."""
        done: Future = Future()
        self._inbox.put(_Running(model, job, done))
        return done.result()

    def _loop(self) -> None:
        ready: deque[tuple[_Running, Any, BaseException | None]] = deque()  # (job, what to send, what to throw)
        claiming: deque[tuple[_Running, Claim]] = deque()  # waiting for a free sequence, in the order they asked
        decoding: dict[tuple[int, int], _Running] = {}  # (model id, sequence id) -> the job it decodes for
        while True:
            # Every job that has arrived, and every job that can go on, runs before the next step.
            while True:
                if not ready:
                    try:
                        ready.append((self._inbox.get(block=not decoding), None, None))  # waits only when idle
                    except queue.Empty:
                        break
                self._advance(*ready.popleft(), claiming, decoding)
                self._serve_claims(ready, claiming)
            for model in {running.model for running in decoding.values()}:
                try:
                    finished = model.step()
                except BaseException as error:  # the model's step failed: so did every job decoding on it
                    finished = [(seq_id, error) for (model_id, seq_id), running in decoding.items() if model_id == id(model)]
                for seq_id, error in finished:
                    ready.append((decoding.pop((id(model), seq_id)), None, error))

    @staticmethod
    def _advance(running: _Running, value: Any, error: BaseException | None, claiming: deque, decoding: dict) -> None:
        try:
            command = running.job.throw(error) if error is not None else running.job.send(value)
        except StopIteration as stop:
            running.done.set_result(stop.value)
            return
        except BaseException as failure:
            running.done.set_exception(failure)
            return
        if isinstance(command, Claim):
            claiming.append((running, command))
        else:
            running.model.start_decoding(command)
            decoding[id(running.model), command.sequence.seq_id] = running

    @staticmethod
    def _serve_claims(ready: deque, claiming: deque) -> None:
        """Each waiting claim whose model has a free sequence gets it, first come first served per model."""
        waiting = deque()
        while claiming:
            running, command = claiming.popleft()
            if running.model.has_free_sequence() and not any(r.model is running.model for r, _ in waiting):
                try:
                    ready.append((running, running.model.claim(command), None))
                except BaseException as error:
                    ready.append((running, None, error))
            else:
                waiting.append((running, command))
        claiming.extend(waiting)


_ENGINE: Engine | None = None
_STARTING = threading.Lock()


def engine() -> Engine:
    """The process's engine, started on first use."""
    global _ENGINE
    with _STARTING:
        if _ENGINE is None:
            _ENGINE = Engine()
        return _ENGINE
