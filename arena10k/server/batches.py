"""OpenAI's Files and Batches endpoints, with the lifecycle a hosted Batch API goes through: validating, in_progress,
finalizing, then completed, failed (an input that does not validate), expired (with what it finished) or cancelled
(likewise, after cancelling). Output lines come back in another order than submitted, failed lines go to the error
file, and faults (FaultConfig's batch_* options) make batches expire, fail or lose lines, so that every way a run
resumes its batches is tested without a network. Online rate limits and faults do not apply: batches have their own
quota at the providers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

import arena10k.server.protocol as protocol
from arena10k.server.faults import FaultConfig

CHAT = "/v1/chat/completions"
LINES_AT_ONCE = 4
# A line's outcome: (HTTP status, body), as the chat endpoint would have answered it.
ServeLine = Callable[[dict], Awaitable[tuple[int, dict]]]


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    window: str
    metadata: dict
    created_at: int
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    total: int = 0
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict] = field(default_factory=list)
    cancel: bool = False

    def as_json(self) -> dict:
        stamps = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")
        return {"id": self.id, "object": "batch", "endpoint": self.endpoint, "input_file_id": self.input_file_id,
                "completion_window": self.window, "status": self.status, "output_file_id": self.output_file_id,
                "error_file_id": self.error_file_id, "created_at": self.created_at,
                "expires_at": self.created_at + 24 * 3600, **{f"{stamp}_at": self.times.get(stamp) for stamp in stamps},
                "errors": {"object": "list", "data": self.errors} if self.errors else None,
                "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
                "metadata": self.metadata}


class BatchService:
    def __init__(self, serve_line: ServeLine, faults: FaultConfig):
        self._serve_line = serve_line
        self._faults = faults
        self._files: dict[str, tuple[str, bytes, int]] = {}  # id -> (filename, content, created_at)
        self._batches: dict[str, _Batch] = {}
        self._tasks: set[asyncio.Task] = set()
        self.submitted: Counter[str] = Counter()  # digest of a request's body -> times submitted in an accepted batch
        self.lines_served = 0

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/files", self._upload), web.get("/v1/files/{id}", self._file),
                web.get("/v1/files/{id}/content", self._content), web.post("/v1/batches", self._create),
                web.get("/v1/batches", self._list), web.get("/v1/batches/{id}", self._retrieve),
                web.post("/v1/batches/{id}/cancel", self._cancel)]

    def stats(self) -> dict:
        """requests_submitted - distinct_requests: requests (bodies) that were in an earlier batch too."""
        return {"batches": len(self._batches), "requests_submitted": sum(self.submitted.values()),
                "distinct_requests": len(self.submitted), "lines_served": self.lines_served,
                "by_status": dict(Counter(batch.status for batch in self._batches.values()))}

    # ------------------------------------------------------------ files

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form.get("file")
        if form.get("purpose") != "batch" or not isinstance(upload, web.FileField):
            raise Refused(400, "a file upload needs purpose=batch and a file")
        return web.json_response(self._file_json(self._store(upload.filename, upload.file.read())))

    def _store(self, filename: str, content: bytes) -> str:
        file_id = f"file-{uuid.uuid4().hex}"
        self._files[file_id] = (filename, content, int(time.time()))
        return file_id

    def _file_json(self, file_id: str) -> dict:
        filename, content, created = self._files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": created, "filename": filename,
                "purpose": "batch", "status": "processed"}

    async def _file(self, request: web.Request) -> web.Response:
        return web.json_response(self._file_json(self._known(self._files, request.match_info["id"])))

    async def _content(self, request: web.Request) -> web.Response:
        return web.Response(body=self._files[self._known(self._files, request.match_info["id"])][1],
                            content_type="application/octet-stream")

    # ------------------------------------------------------------ batches

    async def _create(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        file_id = self._known(self._files, body.get("input_file_id", ""))
        if body.get("endpoint") != CHAT:
            raise Refused(400, f"endpoint must be {CHAT} on this server")
        batch = _Batch(f"batch_{uuid.uuid4().hex}", file_id, CHAT, body.get("completion_window", "24h"),
                       body.get("metadata") or {}, int(time.time()))
        self._batches[batch.id] = batch
        task = asyncio.get_running_loop().create_task(self._process(batch, len(self._batches)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(batch.as_json())

    async def _retrieve(self, request: web.Request) -> web.Response:
        return web.json_response(self._batches[self._known(self._batches, request.match_info["id"])].as_json())

    async def _list(self, request: web.Request) -> web.Response:
        """Newest first, `limit` at a time after the batch `after`, as OpenAI pages them."""
        newest_first = list(reversed(self._batches))
        after = request.query.get("after")
        start = newest_first.index(after) + 1 if after in newest_first else 0
        page = newest_first[start:start + int(request.query.get("limit", 20))]
        return web.json_response({"object": "list", "data": [self._batches[b].as_json() for b in page],
                                  "first_id": page[0] if page else None, "last_id": page[-1] if page else None,
                                  "has_more": start + len(page) < len(newest_first)})

    async def _cancel(self, request: web.Request) -> web.Response:
        batch = self._batches[self._known(self._batches, request.match_info["id"])]
        if batch.status in ("validating", "in_progress", "finalizing"):
            batch.cancel = True
            batch.status = "cancelling"
            batch.times["cancelling"] = int(time.time())
        return web.json_response(batch.as_json())

    @staticmethod
    def _known(table: dict, key: str) -> str:
        if key not in table:
            raise Refused(404, f"No such object: '{key}'")
        return key

    async def _process(self, batch: _Batch, number: int) -> None:
        faults = self._faults
        await asyncio.sleep(faults.batch_step_seconds)
        lines, problems = _validated(self._files[batch.input_file_id][1])
        if problems or faults.batch_fail:
            batch.errors = problems or [{"code": "batch_failed", "message": "The batch failed (injected).", "line": None}]
            return self._end(batch, "failed")
        batch.total = len(lines)
        self.submitted.update(map(_digest, lines))
        batch.status, batch.times["in_progress"] = "in_progress", int(time.time())
        expiring = number <= faults.batch_expire_first  # this many of the first batches expire half done
        stop_after = len(lines) // 2 if expiring else len(lines)
        slowed = not faults.batch_slow_first or number <= faults.batch_slow_first
        line_seconds = faults.batch_line_ms / 1000 if slowed else 0.0
        answered: list[tuple[dict, int, dict]] = []
        queue = list(lines)

        async def worker() -> None:
            while queue and not batch.cancel and len(lines) - len(queue) < stop_after:
                line = queue.pop(0)
                await asyncio.sleep(line_seconds)
                status, body = await self._answer(line)
                answered.append((line, status, body))
                self.lines_served += 1
                batch.completed += status == 200
                batch.failed += status != 200

        await asyncio.gather(*(worker() for _ in range(LINES_AT_ONCE)))
        batch.status, batch.times["finalizing"] = ("cancelling" if batch.cancel else "finalizing"), int(time.time())
        await asyncio.sleep(faults.batch_step_seconds)
        random.Random(batch.id).shuffle(answered)  # providers return lines in no particular order
        output = [_result(line, status, body) for line, status, body in answered if status == 200]
        errors = [_result(line, status, body) for line, status, body in answered if status != 200]
        batch.output_file_id = self._store(f"{batch.id}_output.jsonl", "".join(output).encode()) if output else None
        batch.error_file_id = self._store(f"{batch.id}_error.jsonl", "".join(errors).encode()) if errors else None
        self._end(batch, "cancelled" if batch.cancel else "expired" if expiring else "completed")

    async def _answer(self, line: dict) -> tuple[int, dict]:
        digest = _digest(line)
        if self.submitted[digest] == 1 and random.Random(f"{self._faults.fault_seed}:{digest}").random() < self._faults.batch_line_error_rate:
            return 500, protocol.error_body("The server had an error processing this request (injected).", "server_error")
        return await self._serve_line(line["body"])

    @staticmethod
    def _end(batch: _Batch, status: str) -> None:
        batch.status = status
        batch.times[status] = int(time.time())


def _validated(content: bytes) -> tuple[list[dict], list[dict]]:
    """The input file's lines, or what is wrong with them (OpenAI fails the whole batch for any)."""
    lines, problems, ids = [], [], set()
    for number, text in enumerate(content.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            line = json.loads(text)
            assert isinstance(line, dict)
        except (json.JSONDecodeError, AssertionError):
            problems.append({"code": "invalid_json_line", "message": "This line is not valid JSON.", "line": number})
            continue
        if line.get("url") != CHAT or line.get("method") != "POST" or not isinstance(line.get("body"), dict):
            problems.append({"code": "invalid_request", "message": f"Each line must POST a body to {CHAT}.", "line": number})
        elif line.get("custom_id") in ids or not line.get("custom_id"):
            problems.append({"code": "duplicate_custom_id", "message": "custom_id must be unique and not empty.", "line": number})
        else:
            ids.add(line["custom_id"])
            lines.append(line)
    if not lines and not problems:
        problems.append({"code": "empty_file", "message": "The input file has no requests.", "line": None})
    return lines, problems


def _digest(line: dict) -> str:
    return hashlib.sha256(json.dumps(line["body"], sort_keys=True).encode()).hexdigest()


def _result(line: dict, status: int, body: dict) -> str:
    return json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line["custom_id"],
                       "response": {"status_code": status, "request_id": uuid.uuid4().hex, "body": body},
                       "error": None}) + "\n"
