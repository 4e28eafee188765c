import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from arena10k import pipeline, providers, report

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED_ARENA = PROJECT_ROOT.parent / "shared" / "arena"
TINY_CONFIG = PROJECT_ROOT / "tests" / "data" / "tiny.yaml"
OWN_CONFIG = PROJECT_ROOT / "tests" / "data" / "own_policies.yaml"  # a researcher's own policies, seven of them
PHASE2_FILES = ("deterministic", "uncertainty", "dataset_info.json")
# The slow tests: the embedded models, whole pipelines through the loopback server, and tests that start many
# processes. `-m "not slow"` leaves them out, to check a change in under a minute.
SLOW_TESTS = ("tests/test_pipeline.py", "tests/test_local_model.py", "tests/test_third_party_server.py",
              "tests/test_server.py::test_the_local_model_serves", "tests/test_api_path.py",
              "tests/test_safety.py::test_two_pipelines_started_together_run_one_in_each_of_5_rounds",
              "tests/test_messages.py::test_ctrl_c_in_a_dry_run_stops_it_cleanly_and_names_the_dry_run_to_resume",
              "tests/test_batches.py::test_a_run_killed", "tests/test_batches.py::test_an_expired",
              "tests/test_batches.py::test_lines_a_batch_failed", "tests/test_batches.py::test_ctrl_c")
# The files that take longest start first, so that the last file to finish is a short one (BENCHMARKS.md, tests).
LONGEST_FIRST = ("tests/test_pipeline.py", "tests/test_local_model.py", "tests/test_api_path.py",
                 "tests/test_third_party_server.py", "tests/test_safety.py")


def pipeline_command(data_dir: Path, *args: str, config: Path = TINY_CONFIG) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "run_phase1_pipeline.py"), "--config", str(config), "--data-dir", str(data_dir), *args]


def run_pipeline_process(data_dir: Path, *args: str, config: Path = TINY_CONFIG) -> subprocess.CompletedProcess:
    """`python run_phase1_pipeline.py ...` as a user runs it, in a process of its own."""
    return subprocess.run(pipeline_command(data_dir, *args, config=config), capture_output=True, text=True, cwd=PROJECT_ROOT)


_embedded_models: dict[str, providers.Provider] = {}


def _provider_for_one_run(model) -> providers.Provider:
    """Hosted clients and rate limiters are made anew for each run, as in a process of its own. An embedded model is
    loaded once per test process: its results do not depend on what it computed before (test_local_model.py)."""
    if model.provider != "local":
        return providers.create(model)
    key = model.model_dump_json()
    if key not in _embedded_models:
        _embedded_models[key] = providers.create(model)
    return _embedded_models[key]


def run_pipeline(data_dir: Path, *args: str, config: Path = TINY_CONFIG) -> subprocess.CompletedProcess:
    """The same command run in this process (`pipeline.main` returns its exit status): what the output and the exit
    status show, without a new interpreter's second of imports. Kills, signals and locks need run_pipeline_process."""
    command = pipeline_command(data_dir, *args, config=config)
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = command[1:]  # the "resume with" line names the script, as it does in a process of its own
    os.chdir(PROJECT_ROOT)
    try:
        with providers.substituted(_provider_for_one_run), redirect_stdout(stdout), redirect_stderr(stderr):
            status = pipeline.main(command[2:])
    finally:
        sys.argv = argv
        os.chdir(cwd)
    return subprocess.CompletedProcess(command, status, stdout.getvalue(), stderr.getvalue())


def phase2_bytes(data_dir: Path) -> dict[str, bytes]:
    """Every file a Phase 2 consumer reads, by path relative to the phase2 directory."""
    root = data_dir / "phase2"
    files = [p for name in PHASE2_FILES for p in ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*.jsonl")))]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def analysed_config(clean_run: Path) -> Path:
    """The config the clean run was made with: the own-policies config with the analyze stage on."""
    return clean_run.parent / "own_policies_analysed.yaml"


@pytest.fixture(scope="session")
def clean_run(tmp_path_factory) -> Path:
    """One uninterrupted run of the own-policies config on the embedded models, with the analyze stage, shared by the
    tests that only read its output."""
    data_dir = tmp_path_factory.mktemp("clean_run")
    config = analysed_config(data_dir)
    config.write_text(OWN_CONFIG.read_text().replace("analysis:\n  enabled: false", "analysis:\n  enabled: true"))
    result = run_pipeline_process(data_dir, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    return data_dir


_draw_figures = report.Figures.draw


@pytest.fixture(scope="session", autouse=True)
def _figures_left_undrawn():
    """A report's figures take one to two seconds of every run that writes one (matplotlib, seven PNGs): in this
    process they are drawn only for a test that asks for them (drawn_figures). Runs in processes of their own,
    such as clean_run's, draw them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report.Figures, "draw", lambda figures, directory: None)
        yield


@pytest.fixture
def drawn_figures(monkeypatch):
    """The report's figures are drawn in this test."""
    monkeypatch.setattr(report.Figures, "draw", _draw_figures)


@pytest.fixture(scope="session")
def shared_arena() -> Path:
    if not SHARED_ARENA.is_dir():
        pytest.skip(f"shared ChatBot Arena data not found at {SHARED_ARENA} (it lives beside the project root)")
    return SHARED_ARENA


def pytest_configure(config):
    """Each xdist worker, and every process it starts, runs on a core of its own. llama.cpp's threads spin while they
    wait for each other, so a model process sharing its cores with another worker's work slowed several times over
    (a decode test: 44 s alone on 2 cores, 107 s beside the other worker, 62 s on one core of its own); on one core a
    model process has one thread, and the two workers' models run side by side."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    cores = sorted(os.sched_getaffinity(0))
    if worker and len(cores) >= workers:
        os.sched_setaffinity(0, {cores[int(worker.removeprefix("gw")) % len(cores)]})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW_TESTS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: next((i for i, path in enumerate(LONGEST_FIRST) if item.nodeid.startswith(path)),
                                     len(LONGEST_FIRST)))


def run_cje(version: str, script: str, *args: str) -> dict:
    """Runs `script` under cje-eval `version`, in the environment of its own that install.sh makes; its last line of
    output is JSON."""
    python = PROJECT_ROOT / f".venv-cje-{version}" / "bin" / "python"
    assert python.exists(), f"{python} is missing: install.sh creates it"
    # As the analyze stage runs it: cje's stacked DR depends on string hashing in its last digits.
    result = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
