"""A provider's Batch API in OpenAI's shape (Files + Batches), which Together and DeepInfra serve at their own base_url:
upload a file of requests, submit it, find it again, read its state, download its output and errors, cancel it.

Each call goes through the hosted provider's `_call`, so what is retried, what stops the stage (a rejected key, an
outage) and what fails (a 400 with the provider's reason) is decided in one place for online calls and batches alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAT_URL = "/v1/chat/completions"
# The metadata key that names a batch after the run's own id for it. A batch submitted by a process killed before it
# wrote the provider's id down is found again by its input file (or this), never submitted a second time.
TAG = "arena10k_batch"
ENDED = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchStatus:
    batch_id: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled
    total: int
    completed: int
    failed: int
    output_file_id: str | None
    error_file_id: str | None
    errors: str | None  # why the provider failed the batch as a whole

    @property
    def ended(self) -> bool:
        return self.status in ENDED


class BatchAPI:
    def __init__(self, client: Any, model: str, call: Callable[..., Any]):
        self._client, self.model, self._call = client, model, call

    @staticmethod
    def line(custom_id: str, body: dict) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body},
                          ensure_ascii=False, separators=(",", ":")) + "\n"

    def upload(self, path: Path, purpose: str) -> str:
        return self._admin(lambda: self._client.files.create(file=path, purpose=purpose)).id

    def submit(self, file_id: str, window: str, tag: str) -> BatchStatus:
        return _status(self._admin(lambda: self._client.batches.create(
            input_file_id=file_id, endpoint=CHAT_URL, completion_window=window, metadata={TAG: tag})))

    def find(self, file_id: str, tag: str, since: float) -> BatchStatus | None:
        """The batch submitted with this input file (or, where the provider keeps metadata, under `tag`), looked for among
        those created since `since` (newest first), or None."""
        def search() -> Any:
            for batch in self._client.batches.list(limit=100):  # the SDK fetches the next pages as they are reached
                if batch.input_file_id == file_id or (getattr(batch, "metadata", None) or {}).get(TAG) == tag:
                    return batch
                if batch.created_at < since:
                    break
            return _NotFound()

        found = self._admin(search)
        return None if isinstance(found, _NotFound) else _status(found)

    def status(self, batch_id: str) -> BatchStatus:
        return _status(self._admin(lambda: self._client.batches.retrieve(batch_id)))

    def cancel(self, batch_id: str) -> BatchStatus:
        return _status(self._admin(lambda: self._client.batches.cancel(batch_id)))

    def lines(self, file_id: str) -> list[dict]:
        text = self._admin(lambda: _Text(self._client.files.content(file_id).text)).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _admin(self, send: Callable[[], Any]) -> Any:
        return self._call(send, 0, valid=lambda response: getattr(response, "id", None) is not None
                          or isinstance(response, (_Text, _NotFound)))


@dataclass(frozen=True)
class _Text:
    text: str


class _NotFound:
    pass


def _status(batch: Any) -> BatchStatus:
    counts = batch.request_counts
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    return BatchStatus(batch.id, batch.status, getattr(counts, "total", 0) if counts else 0,
                       getattr(counts, "completed", 0) if counts else 0, getattr(counts, "failed", 0) if counts else 0,
                       batch.output_file_id, batch.error_file_id,
                       "; ".join(f"line {e.line}: {e.message}" if e.line is not None else e.message for e in errors) or None)
