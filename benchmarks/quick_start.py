"""Benchmark: the quick-start run (configs/local.yaml, 20 prompts, embedded models), stage by stage ("stages in all"
is prepare to phase2, the stages issue 10 timed; "with analyze" adds stage 7), in one process each: as configured
(prefix reuse, SmolLM2 decoding several responses per batch); without prefix reuse; and with
one sequence at a time. Then llama.cpp's own prefill rate for SmolLM2 on this machine, to compare the rate at which
the pipeline evaluates prompt tokens with.

    python benchmarks/quick_start.py                 # the three settings, 20 prompts
    python benchmarks/quick_start.py --samples 10
    python benchmarks/quick_start.py --against 1764cc2 --rounds 2   # this code and that commit's, taking turns
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from arena10k.models import gguf_path  # noqa: E402
from arena10k.providers.slots import N_BATCH  # noqa: E402

CHILD = """
import contextlib, io, json, re, sys
sys.path.insert(0, {root!r})
from arena10k import pipeline, providers
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = pipeline.main(["--config", {config!r}, "--data-dir", {data_dir!r}, {samples!r}])
times = dict((name, float(seconds)) for name, seconds in re.findall(r"(\\w+) ([0-9.]+)s", out.getvalue().split("stage times: ")[-1]))
counters = {{name: {{"prompt tokens held": p.prompt_tokens, "prompt tokens evaluated": p.prompt_tokens_evaluated,
             "prompt tokens evaluated alone": p.prompt_tokens_timed, "their seconds": round(p.prompt_seconds, 1),
             "decode steps": p.decode_steps, "tokens decoded": p.decoded_tokens, "placeholder tokens": p.placeholder_tokens}}
            for name, p in providers.loaded().items()}}
phase1 = round(sum(t for name, t in times.items() if name != "analyze"), 1)
print(json.dumps({{"status": status, "stages": times, "stages in all": phase1, "with analyze": round(phase1 + times.get("analyze", 0), 1),
                  "models": counters}}))
"""


def run(config: Path, samples: str, root: Path = PROJECT_ROOT, **setting) -> dict:
    """The pipeline in a child process, with `setting` (reuse_prefix, sequences) on every model it names, on the code
    in `root` (default: this checkout)."""
    raw = yaml.safe_load(config.read_text())
    for model in raw["models"].values():
        model.update(setting)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        code = CHILD.format(root=str(root), config=str(path), data_dir=str(Path(tmp) / "run"), samples=samples)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])


def llama_cpp_prefill_rate(n_batch: int) -> float:
    """Tokens per second of llama.cpp evaluating a 512-token prompt in micro-batches of n_batch."""
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path("smollm2-135m-instruct")), n_ctx=1024, n_batch=n_batch, n_ubatch=n_batch,
                          flash_attn=True, verbose=False)
    tokens = (llm.tokenize(b"The quick brown fox jumps over the lazy dog and keeps on running. ") * 60)[:512]
    best = float("inf")
    for _ in range(3):
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        started = time.perf_counter()
        for start in range(0, len(tokens), n_batch):
            llm._batch.set_batch(tokens[start:start + n_batch], n_past=start, logits_all=False)
            llm._ctx.decode(llm._batch)
        best = min(best, time.perf_counter() - started)
    return len(tokens) / best


MODEL_STAGES = ("generate", "teacher_force", "judge", "oracle")  # the stages that call the embedded models


def compare(config: Path, samples: str, commit: str, rounds: int) -> dict:
    """The quick start as configured on this code and on `commit`'s (a git worktree of it), one after the other in
    each round, so that both see the machine as it is: their stage times, and the ratio of the time of the stages
    that call the embedded models (the other stages' work moved between commits: the report, once written in stage 6,
    is now written after the stages)."""
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", str(other), commit],
                       check=True, capture_output=True)
        for environment in PROJECT_ROOT.glob(".venv-cje-*"):  # stage 1 checks that stage 7 will find cje-eval
            (other / environment.name).symlink_to(environment)
        try:
            times: dict[str, list[dict]] = {"this code": [], commit: []}
            for _ in range(rounds):
                for name, root in (("this code", PROJECT_ROOT), (commit, other)):
                    stages = run(config, samples, root=root)["stages"]
                    times[name].append({**stages, "model stages": round(sum(stages[s] for s in MODEL_STAGES), 1)})
        finally:
            subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(other)], check=True)
    return {"seconds per stage, per round": times,
            f"model stages, {commit} / this code (medians)": round(float(
                np.median([t["model stages"] for t in times[commit]]) / np.median([t["model stages"] for t in times["this code"]])), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", default="20")
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "configs" / "local.yaml")
    parser.add_argument("--against", metavar="COMMIT", help="time this code and COMMIT's as configured, taking turns")
    parser.add_argument("--rounds", type=int, default=2, help="with --against: runs of each")
    args = parser.parse_args()
    if args.against:
        print(json.dumps(compare(args.config, args.samples, args.against, args.rounds), indent=2))
        return
    results = {"as configured": run(args.config, args.samples),
               "without prefix reuse": run(args.config, args.samples, reuse_prefix=False),
               "one sequence at a time": run(args.config, args.samples, sequences=1)}
    results["llama.cpp prefill, tokens/s"] = {f"n_batch {n}": round(llama_cpp_prefill_rate(n)) for n in (N_BATCH, 512)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
