"""Every mistake gets one clear message and no traceback, and every message says what happened and what to do.
Commands run as a user runs them (a process) where the traceback is the point; in-process on the fake provider
otherwise."""

import os
import signal
import subprocess
import sys
import urllib.error
from types import SimpleNamespace

import pytest
import yaml
from conftest import OWN_CONFIG, PROJECT_ROOT, pipeline_command

from arena10k import pipeline, providers
from arena10k.testing.fake_provider import FakeModels

SCRIPTS = PROJECT_ROOT / "scripts"


def command(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=PROJECT_ROOT, **kwargs)


def run(data_dir, *args, config=OWN_CONFIG):
    fake = FakeModels()
    with providers.substituted(fake):
        code = pipeline.main(["--config", str(config), "--data-dir", str(data_dir), *args])
    return code, fake


def said_once_without_a_traceback(result: subprocess.CompletedProcess, line: str, code: int = 2) -> None:
    assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and (result.stdout + result.stderr).count(line) == 1, result.stderr[-2000:]


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (root ignores file modes, so a directory's mode would not do)."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a read-only tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_run_directory_or_parent_is_said_before_anything_runs(read_only):
    said_once_without_a_traceback(command(*pipeline_command(read_only, "3")[1:]),
                                  f"error: The run directory {read_only} cannot be written (Read-only file system)")
    said_once_without_a_traceback(command(*pipeline_command(read_only / "run", "3")[1:]),
                                  f"error: The run directory {read_only / 'run'} cannot be written (Read-only file system)")


def test_a_data_dir_that_is_a_file_or_inside_one_is_said(tmp_path):
    (tmp_path / "file").write_text("")
    said_once_without_a_traceback(command(*pipeline_command(tmp_path / "file", "3")[1:]),
                                  f"error: --data-dir {tmp_path / 'file'} is a file, not a directory")
    said_once_without_a_traceback(command(*pipeline_command(tmp_path / "file" / "run", "3")[1:]),
                                  f"error: The run directory {tmp_path / 'file' / 'run'} cannot be written (Not a directory)")


def test_a_prompt_file_that_is_not_utf8_names_its_row(tmp_path):
    rows = (PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl").read_bytes().splitlines(keepends=True)[:4]
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_bytes(b"".join(rows) + b'{"conversation_a": [{"role": "user", "content": "caf\xe9 au lait?"}]}\n')
    said_once_without_a_traceback(command(*pipeline_command(tmp_path / "run", "3", "--dataset", str(dataset))[1:]),
                                  f"error: {dataset}: row 5 is not UTF-8 text")


def test_analyze_before_phase2_says_to_run_stage_6(tmp_path):
    said_once_without_a_traceback(command(SCRIPTS / "07_analyze.py", "--data-dir", tmp_path / "run"),
                                  "run stage 6 first (scripts/06_validate_and_write_phase2.py, or the runner)")
    assert not (tmp_path / "run" / ".arena10k-run").exists()  # a refused start leaves no run behind


def test_the_dry_run_says_a_broken_or_missing_config_in_one_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    said_once_without_a_traceback(command(SCRIPTS / "dry_run.py", "--config", broken), f"error: {broken} is not valid YAML")
    said_once_without_a_traceback(command(SCRIPTS / "dry_run.py", "--config", tmp_path / "none.yaml"),
                                  f"error: Config file {tmp_path / 'none.yaml'} does not exist")


def test_ctrl_c_in_a_dry_run_stops_it_cleanly_and_names_the_dry_run_to_resume(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "dry_run.py"), "--config", str(PROJECT_ROOT / "configs" / "arena_10k.yaml"),
         "--samples", "12", "--dataset", str(PROJECT_ROOT / "data" / "prompts" / "arena10k_prompts.jsonl"),
         "--data-dir", str(tmp_path / "dry")], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    generate = tmp_path / "dry" / "checkpoints" / "generate.jsonl"
    while not (generate.exists() and generate.read_text().count("\n") >= 3):
        assert process.poll() is None
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches every process of the foreground group
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err
    assert "stopping: " in err and "dry run interrupted; resume with: python scripts/dry_run.py --config" in err
    # the pipeline's own line names the dry run too, not the temporary config the dry run made for it
    assert "interrupted: every finished item is saved; resume with: python scripts/dry_run.py --config" in err


def test_a_dry_run_whose_server_died_keeps_the_pipelines_exit_status(monkeypatch, capsys):
    sys.path.insert(0, str(SCRIPTS))
    import dry_run

    def stats():
        raise urllib.error.URLError("connection refused")

    class Server:
        root_url = "http://127.0.0.1:9"

        def __enter__(self):
            return SimpleNamespace(root_url=self.root_url, stats=stats)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(dry_run, "run_subprocess", lambda config: Server())
    monkeypatch.setattr(dry_run.subprocess, "Popen", lambda *a, **k: SimpleNamespace(wait=lambda: 3))
    monkeypatch.setattr(sys, "argv", ["dry_run.py", "--config", str(PROJECT_ROOT / "configs" / "arena_10k.yaml")])
    assert dry_run.main() == 3
    assert "the loopback server stopped answering before the run ended" in capsys.readouterr().err


def test_a_report_of_a_file_not_in_cjes_format_names_the_line_and_field(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"prompt_id": "a", "judge_score": 0.5}\n')
    said_once_without_a_traceback(command(SCRIPTS / "report.py", "--cje-dataset", tmp_path / "rows.jsonl", "--out", tmp_path / "r"),
                                  f"error: {tmp_path / 'rows.jsonl'} line 1 is not a CJE dataset row: it has no "
                                  "base_policy_logprob, target_policy_logprobs")


def test_status_piped_into_head_ends_quietly(tmp_path):
    assert run(tmp_path / "run", "3")[0] == 0
    result = subprocess.run(f"{sys.executable} {SCRIPTS / 'status.py'} --data-dir {tmp_path / 'run'} | head -1",
                            shell=True, capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.stdout.startswith("Run ") and result.stderr == ""


# ---------------------------------------------------------------- what a message says


def test_checks_that_cost_nothing_come_before_the_first_call(tmp_path, capsys):
    """An unknown embedded judge model, named by its config field, before any generation; a missing dataset before
    the preflight (free here, paid on an API)."""
    config = tmp_path / "config.yaml"
    raw = yaml.safe_load(OWN_CONFIG.read_text())
    raw["models"]["judge_model"] = {"provider": "local", "model": "smollm3-nonexistent"}
    raw["judge"]["model"] = "judge_model"
    config.write_text(yaml.safe_dump(raw))
    code, fake = run(tmp_path / "run", "3", config=config)
    assert code == 2 and fake.calls == []
    assert "models.judge_model.model: Unknown local model 'smollm3-nonexistent'" in capsys.readouterr().err
    code, fake = run(tmp_path / "run2", "3", "--dataset", str(tmp_path / "absent.jsonl"))
    assert code == 2 and fake.calls == [] and "absent.jsonl does not exist" in capsys.readouterr().err


def test_a_refused_start_leaves_no_run_behind(tmp_path, capsys):
    code, _ = run(tmp_path / "run", "5000")
    assert code == 2 and "The run asks for 5000 prompts" in capsys.readouterr().err
    assert not (tmp_path / "run" / ".arena10k-run").exists() and not (tmp_path / "run" / "logs").exists()
    assert run(tmp_path / "run", "3")[0] == 0  # the directory is still usable


def test_a_duplicate_policy_key_is_refused_with_its_line(tmp_path, capsys):
    lines = OWN_CONFIG.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("  terse:"))
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    config = tmp_path / "config.yaml"
    config.write_text("".join(lines[:end] + lines[start:end] + lines[end:]))  # a second policy named terse
    code, _ = run(tmp_path / "run", "3", config=config)
    assert code == 2 and "the key 'terse' appears twice in one mapping" in capsys.readouterr().err


def test_temperature_zero_is_refused_with_the_reason_and_what_to_do(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    raw = yaml.safe_load(OWN_CONFIG.read_text())
    raw["policies"]["terse"]["temperature"] = 0
    config.write_text(yaml.safe_dump(raw))
    code, _ = run(tmp_path / "run", "3", config=config)
    error = capsys.readouterr().err
    assert code == 2 and "policies.terse.temperature" in error and "no importance weight exists" in error
    assert "0.1 is close to greedy" in error


def test_resuming_without_config_uses_the_config_the_run_was_made_with(tmp_path, capsys):
    assert run(tmp_path / "run", "3")[0] == 0
    capsys.readouterr()
    with providers.substituted(FakeModels()):
        code = pipeline.main(["--data-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and "experiment 'own_policies'" in out


def test_a_renamed_policy_is_said_to_be_a_new_policy(tmp_path, capsys):
    assert run(tmp_path / "run", "3")[0] == 0
    config = tmp_path / "renamed.yaml"
    raw = yaml.safe_load(OWN_CONFIG.read_text())
    raw["policies"] = {("brief" if name == "terse" else name): policy for name, policy in raw["policies"].items()}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    code, fake = run(tmp_path / "run", config=config)
    out = capsys.readouterr().out
    assert code == 0 and "warning: policy 'brief' is configured exactly as 'terse' was in this run" in out
    assert "name it 'terse' again to reuse them" in out and fake.calls


def test_the_self_check_says_why_a_response_was_not_compared(tmp_path):
    from arena10k.stages import phase2

    info = {"logging_policy": "p0", "coverage": {}, "weights": {}, "clones": [], "logged_rows": 2, "fresh_draws": {},
            "oracle_labels": {"calibration": 0, "validation": {}}, "removed_stale_files": [], "excluded": {},
            "excluded_prompts": {}, "unlabelled": {}, "dry_run": False,
            "self_check": {"compared": 5, "median_difference": 0.0, "largest_difference": 0.0, "beyond_tolerance": [],
                           "not_compared": {"the endpoint returned no log-prob of the end of turn it sampled": 1}}}
    assert ("5 compared, |difference| median 0, largest 0 nats, 0 beyond tolerance; 1 not compared: the endpoint "
            "returned no log-prob of the end of turn it sampled") in phase2.summary_table(info)


def test_status_lists_policies_in_the_configs_order(tmp_path):
    from arena10k import status
    from arena10k.workspace import Workspace

    assert run(tmp_path / "run", "3")[0] == 0
    workspace = Workspace(tmp_path / "run")
    judge = next(s for s in status.collect(workspace, workspace.saved_config()).stages if s.name == "judge")
    assert list(judge.by_policy) == list(yaml.safe_load(OWN_CONFIG.read_text())["policies"])
