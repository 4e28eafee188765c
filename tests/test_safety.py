"""A run that cannot hurt you: mistakes, damaged files and accidents get a clear error, nothing is lost or
wasted, and nothing fake passes for real. In-process on the fake provider unless a process is the point."""

import json
import multiprocessing
import signal
import subprocess
import sys
import time

import pytest
from conftest import OWN_CONFIG, PROJECT_ROOT, phase2_bytes, pipeline_command

from arena10k import liveness, pipeline, providers, status
from arena10k.config import load_config
from arena10k.errors import RunInProgressError
from arena10k.testing.fake_provider import FakeModels
from arena10k.workspace import Workspace

FAKE_PIPELINE = PROJECT_ROOT / "tests" / "fake_pipeline.py"


def run(data_dir, *args, config=OWN_CONFIG):
    fake = FakeModels()
    with providers.substituted(fake):
        code = pipeline.main(["--config", str(config), "--data-dir", str(data_dir), *args])
    return code, fake


def prompt_count(data_dir):
    return len((data_dir / "prompts.jsonl").read_text().splitlines())


# ---------------------------------------------------------------- 1. --fresh deletes only a run


def test_fresh_refuses_a_directory_that_holds_no_run(tmp_path, capsys):
    (tmp_path / ".git").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    code, fake = run(tmp_path, "--fresh")
    assert code == 2 and fake.calls == []
    assert f"{tmp_path} is not empty and holds no arena10k run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "notes.txt"]


def test_a_directory_another_pipeline_is_starting_in_is_not_taken_for_a_foreign_one(tmp_path):
    # The instant between a starting pipeline's write check and its lock (seen in CI: round 17 of the test below).
    (tmp_path / ".arena10k-write-check-123").write_bytes(b"")
    Workspace(tmp_path).refuse_foreign_directory()  # raises ConfigError if it takes the directory for someone else's


def test_fresh_deletes_the_runs_files_and_nothing_else(tmp_path):
    data_dir = tmp_path / "run"
    assert run(data_dir, "4")[0] == 0
    (data_dir / "notes.txt").write_text("mine")
    (data_dir / "preflight.json").write_text("{}\n")  # what a run with hosted models keeps of its endpoints' checks
    code, fake = run(data_dir, "--fresh", "4")
    assert code == 0 and fake.count("teacher_force") == 7 * 4  # everything was recomputed
    assert (data_dir / "notes.txt").read_text() == "mine"
    assert not (data_dir / "preflight.json").exists()  # a fresh run measures its endpoints again


# ---------------------------------------------------------------- 2. the run's size is part of the run


def test_resume_without_n_keeps_the_runs_size_and_a_new_n_is_announced(tmp_path, capsys):
    data_dir = tmp_path / "run"
    assert run(data_dir, "4")[0] == 0  # the config says 10
    code, fake = run(data_dir, "--force", "judge")
    assert code == 0 and prompt_count(data_dir) == 4 and fake.count("teacher_force") == 0
    capsys.readouterr()
    code, fake = run(data_dir, "6")
    assert code == 0 and prompt_count(data_dir) == 6
    assert "the run grows from 4 to 6 prompts" in capsys.readouterr().out
    assert fake.count("teacher_force") == 7 * 2  # only the two new prompts


def test_shrinking_n_gives_exactly_the_smaller_run(tmp_path):
    assert run(tmp_path / "shrunk", "8")[0] == 0
    assert run(tmp_path / "shrunk", "6")[0] == 0
    assert run(tmp_path / "direct", "6")[0] == 0
    assert phase2_bytes(tmp_path / "shrunk") == phase2_bytes(tmp_path / "direct")


# ---------------------------------------------------------------- 4. inputs that cannot give a dataset


def rows_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, message", [
    ("plain.jsonl", '{"prompt": "Why is the sky blue?"}\n', "no row has a conversation_a"),
    ("french.jsonl", '{"conversation_a": [{"role": "user", "content": "Pourquoi le ciel est-il bleu ?"}]}\n',
     "no English first-turn prompt"),
    ("empty.jsonl", "", "is empty"),
    ("rows.csv", "prompt\nWhy?\n", "must be .json, .jsonl or .parquet"),
])
def test_inputs_that_cannot_yield_prompts_are_refused_with_the_row_shape(tmp_path, capsys, name, text, message):
    code, fake = run(tmp_path / "run", "--dataset", str(rows_file(tmp_path, name, text)))
    error = capsys.readouterr().err
    assert code == 2 and fake.calls == [] and message in error and "Traceback" not in error
    assert '{"conversation_a": [{"role": "user", "content": "' in error or "must be" in error


@pytest.mark.parametrize("samples, message", [
    ("0", "a whole number of prompts of at least 1, or 'all'"),
    ("-3", "a whole number of prompts of at least 1, or 'all'"),
    ("abc", "a whole number of prompts of at least 1, or 'all'"),
    ("5000", "asks for 5000 prompts, but"),
])
def test_a_number_of_prompts_that_makes_no_sense_is_refused(tmp_path, capsys, samples, message):
    with pytest.raises(SystemExit) if samples in ("0", "-3", "abc") else _no_exit():
        code, _ = run(tmp_path / "run", samples)
        assert code == 2
    assert message in capsys.readouterr().err


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- 5. one pipeline per directory, atomically


def _hold_claim(root, barrier, results):
    barrier.wait()
    try:
        with liveness.claim(Workspace(root)):
            time.sleep(0.1)
        results.put("ran")
    except RunInProgressError:
        results.put("refused")


def test_two_claims_started_together_let_exactly_one_run(tmp_path):
    context = multiprocessing.get_context("fork")
    for round_ in range(20):
        root = tmp_path / f"round{round_}"
        root.mkdir()
        barrier, results = context.Barrier(2), context.Queue()
        processes = [context.Process(target=_hold_claim, args=(root, barrier, results)) for _ in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(10)
        assert sorted(results.get(timeout=5) for _ in processes) == ["ran", "refused"], round_


def test_two_pipelines_started_together_run_one_in_each_of_5_rounds(tmp_path):
    """The whole command takes the claim above and says who holds it: its atomicity is the 20 rounds of the test
    before, in forked processes; here a round is two interpreters (1.4 s)."""
    for round_ in range(5):
        data_dir = tmp_path / f"round{round_}"
        command = [sys.executable, str(FAKE_PIPELINE), "--config", str(OWN_CONFIG), "--data-dir", str(data_dir),
                   "--only", "prepare", "2"]  # about a second of work, loading the dataset
        processes = [subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        outcomes = sorted((p.wait(60), p.communicate()[1]) for p in processes)
        assert [code for code, _ in outcomes] == [0, 2], (round_, outcomes)
        assert "is working on" in outcomes[1][1]
        assert len((data_dir / "prompts.jsonl").read_text().splitlines()) == 2, round_


# ---------------------------------------------------------------- 6. a dry run never passes for a real one


def test_a_dry_runs_directory_is_refused_by_a_real_run(tmp_path, capsys):
    assert run(tmp_path / "run", "3", "--dry-run")[0] == 0
    info = json.loads((tmp_path / "run" / "phase2" / "dataset_info.json").read_text())
    assert info["dry_run"] is True
    code, fake = run(tmp_path / "run", "3")
    assert code == 2 and fake.calls == []
    assert "holds a dry run" in capsys.readouterr().err


# ---------------------------------------------------------------- 8. a damaged checkpoint loses only what is damaged


def _cut_in_half(line):
    return line[: len(line) // 2] + "\n"


def _one_digit_changed(line):
    """A finished item's line with its first and last bytes intact and still valid JSON: only its CRC-32 tells."""
    digit = next(i for i in range(len(line) // 2, len(line)) if line[i].isdigit())
    changed = line[:digit] + str((int(line[digit]) + 1) % 10) + line[digit + 1:]
    json.loads(changed)
    return changed


@pytest.mark.parametrize("checkpoint, damage", [("judge", _cut_in_half), ("generate", _one_digit_changed)])
def test_a_corrupt_line_is_quarantined_and_only_its_item_redone(tmp_path, capsys, checkpoint, damage):
    data_dir = tmp_path / "run"
    assert run(data_dir, "4")[0] == 0
    before = phase2_bytes(data_dir)
    path = data_dir / "checkpoints" / f"{checkpoint}.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[5] = damage(lines[5])  # damaged in the middle of the file
    path.write_text("".join(lines))
    capsys.readouterr()
    code, fake = run(data_dir)
    out = capsys.readouterr().out
    assert code == 0 and len(fake.calls) == 1  # only its item
    assert out.count("line 6 of") == 1 and "quarantine" in out
    assert (data_dir / "quarantine" / f"{checkpoint}.jsonl").exists()
    assert phase2_bytes(data_dir) == before


# ---------------------------------------------------------------- 10. clean messages


def test_an_error_is_said_once_without_a_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(OWN_CONFIG.read_text().replace("logging_policy: assistant", "logging_policy: nobody"))
    result = subprocess.run(pipeline_command(tmp_path / "run", config=config), capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("logging_policy 'nobody' is not a key of policies") == 1


def test_a_key_pasted_as_api_key_env_is_refused_and_never_shown(tmp_path, capsys):
    secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    config = tmp_path / "key.yaml"
    raw = load_config(OWN_CONFIG).model_dump()
    raw["models"]["smollm2"] = {"provider": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                                "api_key_env": secret, "chat_template": "{{ messages }}"}
    config.write_text(json.dumps(raw))
    code, _ = run(tmp_path / "run", config=config)
    captured = capsys.readouterr()
    assert code == 2 and "api_key_env must name an environment variable" in captured.err
    assert secret not in captured.err + captured.out
    assert not any(secret in p.read_text(errors="ignore") for p in tmp_path.rglob("*") if p.is_file() and p != config)


def test_ctrl_c_stops_without_a_traceback_and_says_how_to_resume(tmp_path):
    # Slow enough calls that the run is still going when the signal comes: the local models take 8 calls at once.
    # SIGINT is reset for the child: a test run started as a background job ignores it, and children inherit that.
    process = subprocess.Popen([sys.executable, str(FAKE_PIPELINE), "--latency", "0.5", "--config", str(OWN_CONFIG),
                                "--data-dir", str(tmp_path / "run")], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    generate = tmp_path / "run" / "checkpoints" / "generate.jsonl"
    deadline = time.monotonic() + 60
    while not (generate.exists() and generate.read_text().count("\n") >= 3):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130 and "Traceback" not in err
    assert "interrupted: every finished item is saved; resume with: python" in err
    assert "stopping: " in err and "calls in flight are left to return" in err  # said at once, before they return


def test_status_of_a_missing_directory_says_so(tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "status.py"), "--data-dir", str(tmp_path / "nope")],
                            capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert result.returncode == 2 and f"{tmp_path / 'nope'} does not exist" in result.stderr


def test_status_shows_items_awaiting_retry_apart_from_failed_ones(tmp_path):
    data_dir = tmp_path / "run"
    assert run(data_dir, "3")[0] == 0
    path = data_dir / "checkpoints" / "judge.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    keys = sorted(json.loads(line)["key"] for line in lines)  # lines come in the order items finished
    retried, given_up = (next(key for key in keys if key.endswith(policy)) for policy in ("|assistant", "|twin"))
    failed = [{"error": "no score digit", "key": retried, "raw": "hm", "retryable": True},
              {"error": "prompt too long", "key": given_up, "raw": None, "retryable": False}]
    path.write_text("".join(line for line in lines if json.loads(line)["key"] not in (retried, given_up)) + "".join(
        json.dumps({**f, "schema": 1, "status": "failed"}, sort_keys=True) + "\n" for f in failed))
    config = load_config(OWN_CONFIG)
    judge = next(s for s in status.collect(Workspace(data_dir), config).stages if s.name == "judge")
    assert judge.total.coverage.retrying == 1 and sum(judge.total.coverage.failed.values()) == 2
    text = status.describe(status.collect(Workspace(data_dir), config))
    assert "judge: 1 x no score digit (assistant 1; 1 of them awaiting retry)" in text
    assert "judge: 1 x prompt too long (twin 1)" in text


# ---------------------------------------------------------------- 4. the exit status tells the truth


def test_a_run_whose_phase2_is_incomplete_exits_non_zero_saying_what_is_missing(tmp_path, capsys):
    data_dir = tmp_path / "run"
    assert run(data_dir, "3")[0] == 0
    path = data_dir / "checkpoints" / "judge.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3] + lines[4:]))  # one judge item not done: a rerun would do it
    capsys.readouterr()
    code, fake = run(data_dir, "--only", "phase2")
    error = capsys.readouterr().err
    assert code == 3 and fake.calls == []
    assert "Phase 2 is incomplete: judge 20/21 done, 1 still to do." in error and "Continue with: python" in error


def test_an_item_out_of_attempts_leaves_its_prompt_out_and_retry_failed_tries_it_again(tmp_path, capsys):
    """The estimates are made on the other prompts; the exit status and message say the answer is partial."""
    config = tmp_path / "analysed.yaml"
    config.write_text(OWN_CONFIG.read_text().replace("analysis:\n  enabled: false", "analysis:\n  enabled: true"))
    data_dir = tmp_path / "run"
    assert run(data_dir, "3", config=config)[0] == 0
    complete = phase2_bytes(data_dir)
    path = data_dir / "checkpoints" / "judge.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    key = json.loads(lines[3])["key"]
    failed = {"error": "the judge's reply contains no score digit", "key": key, "raw": "hm", "retryable": True,
              "schema": 1, "status": "failed"}
    attempts = load_config(config).max_attempts
    path.write_text("".join(lines[:3] + lines[4:]) + (json.dumps(failed, sort_keys=True) + "\n") * attempts)
    capsys.readouterr()
    code, fake = run(data_dir, config=config)
    captured = capsys.readouterr()
    assert code == pipeline.PARTIAL and fake.calls == []
    assert json.loads((data_dir / "analysis" / "estimates.json").read_text())["analysed"]
    assert "Estimates (cje-eval" in captured.out
    prompt_id = key.rpartition("|")[0]
    assert ("partial: The answer is partial: 1 of 3 prompts are left out of every file, items of theirs failed for good "
            "(1 x the judge's reply contains no score digit)") in captured.err and "--retry-failed" in captured.err
    info = json.loads((data_dir / "phase2" / "dataset_info.json").read_text())
    assert info["excluded_prompts"] == {prompt_id: [f"judge {key.rpartition('|')[2]}: the judge's reply contains no score digit"]}
    rows = [json.loads(line) for name, text in phase2_bytes(data_dir).items() if name.endswith(".jsonl")
            for line in text.splitlines()]
    assert len(rows) == 2 * (2 + 2 * 6) and all(row["prompt_id"] != prompt_id for row in rows)  # 2 variants, 6 targets
    assert info["logged_rows"] == 2 and f"{prompt_id}: judge" in (data_dir / "phase2" / "summary.txt").read_text()
    assert f"{prompt_id}: judge" in (data_dir / "phase2" / "report.md").read_text()
    code, fake = run(data_dir, "--retry-failed")  # the same config, but for the analysis: estimated once is enough
    assert code == 0 and len(fake.calls) == 1 and "judge: 1 failed items get their attempts again" in capsys.readouterr().out
    rows = {name: text for name, text in phase2_bytes(data_dir).items() if name.endswith(".jsonl")}
    assert rows == {name: text for name, text in complete.items() if name.endswith(".jsonl")}


def test_a_stage_script_run_before_the_stage_it_needs_says_which_to_run_first(tmp_path, capsys):
    data_dir = tmp_path / "run"
    with providers.substituted(FakeModels()):
        assert pipeline.main(["3", "--config", str(OWN_CONFIG), "--data-dir", str(data_dir)], stage="prepare") == 0
        code = pipeline.main(["--config", str(OWN_CONFIG), "--data-dir", str(data_dir)], stage="judge")
    error = capsys.readouterr().err
    assert code == 3
    assert ("judge: 21 items still to do, 21 of them waiting for responses stage 2 (generate) has not made: run "
            "scripts/02_generate_responses.py (or the runner) first") in error
