"""Starting and stopping the server: in a thread of the calling process, as a subprocess, or from the command
line (`python scripts/serve_openai_compatible.py` or `python -m arena10k.server`). It listens on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields

from aiohttp import web

from arena10k.server.app import Server
from arena10k.server.backends import Backend
from arena10k.server.faults import FaultConfig
from arena10k.server.local import LocalBackend
from arena10k.server.synthetic import SyntheticBackend

# `models`: what a backend serves (local: model names or .gguf paths, loaded at start; synthetic: an empty list serves
# any model id).
BACKENDS: dict[str, Callable[[list[str], int | None], Backend]] = {"local": LocalBackend, "synthetic": SyntheticBackend}

HOST = "127.0.0.1"
DEFAULT_PORT = 8000  # of the command line; ServerConfig's 0 picks a free port


@dataclass(frozen=True)
class ServerConfig:
    backend: str = "synthetic"
    models: tuple[str, ...] = ()  # local: models to load (default smollm2-135m-instruct); synthetic: () serves any id
    n_ctx: int | None = None  # context size in tokens (default: local 4096, synthetic 32768)
    api_key: str | None = None  # None: any non-empty key is accepted
    port: int = 0  # 0: a free port
    faults: FaultConfig = field(default_factory=FaultConfig)


class RunningServer:
    def __init__(self, base_url: str, stop: Callable[[], None]):
        self.base_url = base_url  # for an OpenAI client: http://127.0.0.1:PORT/v1
        self.root_url = base_url.removesuffix("/v1")  # /stats, /tokenize and /detokenize live here, as on vLLM
        self._stop: Callable[[], None] | None = stop

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.root_url}/stats", timeout=10) as response:
            return json.load(response)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@asynccontextmanager
async def _listening(config: ServerConfig) -> AsyncIterator[str]:
    backend = BACKENDS[config.backend](list(config.models), config.n_ctx)
    # A held (timed-out) request must not keep a stopping server alive for long.
    runner = web.AppRunner(Server(backend, config.faults, config.api_key).application(), access_log=None,
                           shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, config.port))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://{HOST}:{sock.getsockname()[1]}/v1"
    finally:
        await runner.cleanup()


def run_in_thread(config: ServerConfig = ServerConfig()) -> RunningServer:
    """Serves from a daemon thread of this process until stop() (or the end of a `with` block)."""
    started: queue.Queue[tuple[str, asyncio.Event] | BaseException] = queue.Queue()

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            async with _listening(config) as url:
                started.put((url, stop))
                await stop.wait()
        except BaseException as error:  # noqa: BLE001 - handed to the starting thread, which raises it
            started.put(error)

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="arena10k-server", daemon=True)
    thread.start()
    outcome = started.get()
    if isinstance(outcome, BaseException):
        thread.join()
        loop.close()
        raise outcome
    url, stop = outcome

    def stop_server() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()

    return RunningServer(url, stop_server)


def run_subprocess(config: ServerConfig = ServerConfig()) -> RunningServer:
    """Serves from a child process (its log goes to this process's stderr) until stop(), which terminates it."""
    # A session of its own: a Ctrl-C meant for the run that uses the server does not stop the server under it.
    process = subprocess.Popen([sys.executable, "-m", "arena10k.server", *to_argv(config)], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the server prints its URL once it listens
    if not line:
        raise RuntimeError(f"the server exited with status {process.wait()} before listening")

    def stop_server() -> None:
        process.terminate()
        process.wait(timeout=30)

    return RunningServer(line.split()[-1], stop_server)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"'{value}': give true or false")
    return value.lower() == "true"


def to_argv(config: ServerConfig) -> list[str]:
    """The command-line arguments that give this config."""
    argv = ["--backend", config.backend, "--port", str(config.port)]
    argv += [argument for model in config.models for argument in ("--model", model)]
    argv += ["--n-ctx", str(config.n_ctx)] if config.n_ctx is not None else []
    argv += ["--api-key", config.api_key] if config.api_key is not None else []
    for option in fields(FaultConfig):
        value = getattr(config.faults, option.name)
        argv += [_flag(option.name), str(value)] if value != option.default else []
    return argv


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(description="Serve an OpenAI-compatible API on 127.0.0.1, with injectable faults.")
    parser.add_argument("--backend", choices=BACKENDS, default="synthetic")
    parser.add_argument("--model", action="append", default=[], dest="models", metavar="NAME",
                        help="a model to serve, repeatable (local: name or .gguf path, default smollm2-135m-instruct; "
                             "synthetic: default any id)")
    parser.add_argument("--n-ctx", type=int, help="context size in tokens (default: local 4096, synthetic 32768)")
    parser.add_argument("--api-key", help="the only key accepted (default: any non-empty key)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"0 picks a free port (default {DEFAULT_PORT})")
    faults = parser.add_argument_group("faults")
    for option in fields(FaultConfig):
        # Limits that default to None (off) are integers; other options take their default's type.
        kind = int if option.default is None else _boolean if isinstance(option.default, bool) else type(option.default)
        faults.add_argument(_flag(option.name), type=kind, default=option.default, help=option.metadata["help"])
    args = vars(parser.parse_args(argv))
    fault_config = FaultConfig(**{option.name: args.pop(option.name) for option in fields(FaultConfig)})
    args["models"] = tuple(args["models"])
    return ServerConfig(**args, faults=fault_config)


async def _serve_until_signalled(config: ServerConfig) -> None:
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with _listening(config) as url:
        print(f"arena10k OpenAI-compatible server, {config.backend} backend: {url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_until_signalled(config))
