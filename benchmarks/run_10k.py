"""Benchmark: a finished 10,000-prompt run with 512-token responses (a synthetic run: the real record types,
checkpoint lines and fingerprints), rerun with nothing to do; and Phase 2 built from it. Each as a process of its
own, measuring wall time and peak memory (the process's maximum resident set size). Every model is the fake
provider, which counts calls: a rerun must make none.

    python benchmarks/run_10k.py                        # 10,000 prompts, 512 tokens
    python benchmarks/run_10k.py --prompts 30000        # the growth rate
    python benchmarks/run_10k.py --max-tokens 64        # does memory grow with response length?
    python benchmarks/run_10k.py --max-tokens 32 --analyze   # and stage 7 (cje-eval's estimators) alone, at the end
    python benchmarks/run_10k.py --max-tokens 32 --analyze --by-hand   # and stage 7's numbers against cje by hand
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from arena10k.config import load_config  # noqa: E402

# The pipeline on fake models in a process of its own, printing the calls it made last.
CHILD = """
import sys
sys.path.insert(0, {root!r})
from arena10k import pipeline, providers
from arena10k.testing.fake_provider import FakeModels
fake = FakeModels()
with providers.substituted(fake):
    status = pipeline.main({argv!r})
print("calls", len(fake.calls), "status", status)
"""


WRITER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from arena10k.config import load_config
from arena10k.testing import synthetic_run
synthetic_run.write_run(Path({run!r}), load_config({config!r}), {prompts})
"""


def measured(argv: list[str]) -> dict:
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(PROJECT_ROOT), argv=argv)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    last = process.stdout.read().strip().splitlines()[-1]
    return {"seconds": round(seconds, 2), "peak_memory_mb": round(usage.ru_maxrss / 1024), "result": last}


def by_hand_differences(root: Path, replicates: int) -> dict:
    """Per variant and estimator, the largest difference between stage 7's estimate, SE and interval ends and those of
    benchmarks/cje_by_hand.py (cje called without the speed-ups), both variants at once; 0.0 is the same numbers."""
    python = PROJECT_ROOT / ".venv-cje-0.3.0" / "bin" / "python"
    stage = json.loads((root / "analysis" / "estimates.json").read_text())["variants"]
    processes = {variant: subprocess.Popen([str(python), str(PROJECT_ROOT / "benchmarks" / "cje_by_hand.py"),
                                            str(root / "phase2" / variant), str(replicates)],
                                           stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
                 for variant in stage}
    differences = {}
    for variant, process in processes.items():
        by_hand = json.loads(process.stdout.read().strip().splitlines()[-1])
        assert process.wait() == 0, f"cje by hand failed on {variant}"
        differences[variant] = {
            estimator: max(abs(a - b) for policy, numbers in policies.items() for a, b in zip(numbers, (
                stage[variant]["estimators"][estimator]["policies"][policy][k] for k in ("estimate", "standard_error", "ci_low", "ci_high"))))
            for estimator, policies in by_hand.items()}
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--analyze", action="store_true", help="also stage 7 alone, on the Phase 2 files built")
    parser.add_argument("--by-hand", action="store_true",
                        help="with --analyze: the largest difference between stage 7's numbers and cje's called by hand")
    args = parser.parse_args()
    config_path = PROJECT_ROOT / "configs" / "local.yaml"
    config = load_config(config_path)
    # Stage 7 only with --analyze, and alone: what the rest measures is reading a run and building Phase 2.
    config = config.model_copy(update={"policies": {name: policy.model_copy(update={"max_tokens": args.max_tokens})
                                                    for name, policy in config.policies.items()}})
    with tempfile.TemporaryDirectory() as directory:
        root, config_file = Path(directory) / "run", Path(directory) / "config.json"

        def write_config(analysis_enabled: bool) -> None:
            chosen = config.model_copy(update={"analysis": config.analysis.model_copy(update={"enabled": analysis_enabled})})
            config_file.write_text(json.dumps(chosen.model_dump(mode="json") | {"samples": args.prompts}))

        write_config(analysis_enabled=False)
        started = time.perf_counter()
        # In a process of its own: a child's peak memory on Linux starts from its parent's at the fork.
        subprocess.run([sys.executable, "-c", WRITER.format(root=str(PROJECT_ROOT), config=str(config_file),
                                                            run=str(root), prompts=args.prompts)], check=True)
        written = time.perf_counter() - started
        sizes = {p.stem: round(p.stat().st_size / 1e6) for p in sorted((root / "checkpoints").glob("*.jsonl"))}
        argv = ["--config", str(config_file), "--data-dir", str(root), "--from", "generate"]
        results = {"prompts": args.prompts, "max_tokens": args.max_tokens, "written_seconds": round(written),
                   "checkpoint_mb": sizes,
                   "first run (Phase 2 built)": measured(argv),
                   "rerun (nothing changed)": measured(argv)}
        (root / "phase2" / "inputs.json").unlink()
        results["Phase 2 alone, rebuilt"] = measured(argv[:4] + ["--only", "phase2"])
        if args.analyze:
            write_config(analysis_enabled=True)
            results["stage 7 alone"] = measured(argv[:4] + ["--only", "analyze"])
            if args.by_hand:
                results["stage 7 against cje by hand"] = by_hand_differences(root, config.analysis.bootstrap_replicates)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
