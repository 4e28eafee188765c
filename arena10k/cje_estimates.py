"""cje-eval 0.3's estimators on one variant's Phase 2 files; run by the analyze stage in cje-eval's own environment
(install.sh makes `.venv-cje-0.3.0`), so it imports nothing from arena10k and nothing but cje and the standard library.

    .venv-cje-0.3.0/bin/python arena10k/cje_estimates.py data/runs/local/phase2/uncertainty 1000
    .venv-cje-0.3.0/bin/python arena10k/cje_estimates.py data/runs/local/phase2/uncertainty 1000 raise
    .venv-cje-0.3.0/bin/python arena10k/cje_estimates.py data/runs/local/phase2/uncertainty 1000 --oracle-fractions 0.05,0.25,1 --seed 42

The number is the Direct estimator's bootstrap replicates (cje's n_bootstrap; the config's
analysis.bootstrap_replicates), the one setting that differs from cje's defaults.

With an end (lower or raise), the off-policy estimators only, on `certified_ends/<end>/logged.jsonl` (the log-ratios
moved to the ends of their certified intervals; the Direct estimate does not reweight, so it does not move).

With --stage, everything stage 7 asks of the variant, in this one process (importing cje takes about 3 seconds of
each process): the estimators, then at each certified end if the folder has `certified_ends/`, then the coverage
ablation if --oracle-fractions is given; their results under "estimators", "ends" and "coverage".

With --oracle-fractions, the oracle coverage ablation: ABLATION_ESTIMATORS on copies of the files (in a temporary
directory) that keep a seeded share of the logged responses' oracle labels, the smaller shares inside the larger, and
none of the fresh draws' (the target policies' own labels are the truth the estimates are checked against, so no
estimate may see them), Direct with cluster-robust inference (DIRECT_WITHOUT_TARGET_LABELS says why).

Prints one line of JSON: per estimator, cje's estimate, standard error, 95% interval, ESS fraction and diagnostic
status of every target policy, with the warnings cje gave. Each estimator is called exactly as the README shows it,
so that running it by hand gives the same numbers. On standard error, a line `progress <estimator> <seconds>` as each
estimator finishes.

Two changes to cje, of speed only, each returning what cje's own function returns, so the numbers are the same to the
last digit (tests/test_pipeline.py calls cje without them and compares). BENCHMARKS.md has the times.
- `FreshDrawDataset` finds a prompt's fresh draws by scanning every draw, and the DR estimators ask for each prompt's
  draws in every fold of every policy of every component: stacked DR's time grew with the square of the prompts.
  Here the same lookups read an index built once per dataset (the same draws in the same order).
- `get_fold` hashes a prompt id each time it is asked for its fold, 20 million times in the Direct estimator's 2,000
  bootstrap replicates at 10,000 prompts: remembered here.
- scikit-learn's `IsotonicRegression` validates its input on every fit and predict (`check_array`: 56 s of stacked
  DR's 146 s under the profiler at 10,000 prompts, 761,144 predicts). Where the input is already what the check would
  return (a non-empty, finite, one-dimensional float array of the fitted dtype), the same computation runs without it;
  any other input takes scikit-learn's own path, errors included.
"""

import argparse
import functools
import json
import logging
import math
import random
import sys
import tempfile
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import cje.data.folds
from cje import analyze_dataset
from cje.data.fresh_draws import FreshDrawDataset
from sklearn import config_context
from sklearn.isotonic import IsotonicRegression

# id(dataset) -> (its samples list, held so that the id is not reused while the entry stands; its length; the index)
_INDEXES: dict[int, tuple[list, int, dict[str, list]]] = {}


def _draws_of(dataset: FreshDrawDataset, prompt_id: str) -> list:
    entry = _INDEXES.get(id(dataset))
    if entry is None or entry[0] is not dataset.samples or entry[1] != len(dataset.samples):
        index: dict[str, list] = {}
        for sample in dataset.samples:
            index.setdefault(sample.prompt_id, []).append(sample)
        entry = _INDEXES[id(dataset)] = (dataset.samples, len(dataset.samples),
                                         {prompt: sorted(draws, key=lambda s: s.draw_idx) for prompt, draws in index.items()})
    if prompt_id not in entry[2]:
        raise ValueError(f"No samples found for prompt_id '{prompt_id}'")  # cje's own error
    return entry[2][prompt_id]


cje.data.folds.get_fold = functools.cache(cje.data.folds.get_fold)
FreshDrawDataset.get_samples_for_prompt_id = lambda self, prompt_id: list(_draws_of(self, prompt_id))
FreshDrawDataset.get_scores_for_prompt_id = lambda self, prompt_id: np.array([s.judge_score for s in _draws_of(self, prompt_id)])


def _as_checked(array, dtype) -> bool:
    """check_array(array, dtype=dtype, ensure_2d=False) would return this array as it is."""
    return type(array) is np.ndarray and array.ndim == 1 and array.size > 0 and array.dtype == dtype and bool(np.isfinite(array).all())


_checked_fit, _checked_transform = IsotonicRegression.fit, IsotonicRegression._transform


def _fit(self, X, y, sample_weight=None):
    if sample_weight is not None or not _as_checked(X, np.float64) or not _as_checked(y, np.float64) or len(X) != len(y):
        return _checked_fit(self, X, y, sample_weight)
    self._validate_params()
    with config_context(skip_parameter_validation=True):  # as scikit-learn's fit runs _build_y
        X, y = self._build_y(X, y, sample_weight)
    self.X_thresholds_, self.y_thresholds_ = X, y
    self._build_f(X, y)
    return self


def _transform(self, T):
    if not hasattr(self, "X_thresholds_") or not _as_checked(T, self.X_thresholds_.dtype):
        return _checked_transform(self, T)
    if self.out_of_bounds == "clip":
        T = np.clip(T, self.X_min_, self.X_max_)
    return self.f_(T).astype(T.dtype)


IsotonicRegression.fit, IsotonicRegression._transform = _fit, _transform


ENDS = ("lower", "raise")  # the certified_ends/ folders stage 6 writes (phase2.CERTIFIED_ENDS)


def calls(folder: str, bootstrap_replicates: int, end: str | None = None) -> dict[str, dict]:
    fresh_draws = f"{folder}/fresh_draws"
    if end is not None:
        logged = f"{folder}/certified_ends/{end}/logged.jsonl"
        return {"calibrated-ips": {"logged_data_path": logged, "estimator": "calibrated-ips"},
                "stacked-dr": {"logged_data_path": logged, "fresh_draws_dir": fresh_draws, "estimator": "stacked-dr",
                               "estimator_config": {"parallel": False}}}
    logged = f"{folder}/logged.jsonl"
    return {
        "calibrated-ips": {"logged_data_path": logged, "estimator": "calibrated-ips"},
        "stacked-dr": {"logged_data_path": logged, "fresh_draws_dir": fresh_draws, "estimator": "stacked-dr",
                       "estimator_config": {"parallel": False}},
        "direct": {"fresh_draws_dir": fresh_draws, "calibration_data_path": logged, "estimator": "direct",
                   "estimator_config": {"n_bootstrap": bootstrap_replicates}},
    }


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _status(value) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def estimate(arguments: dict) -> dict:
    """One estimator's results, or the error cje raised (too few oracle labels, say), never a stand-in value."""
    kept = _Kept()
    logging.getLogger().addHandler(kept)
    try:
        with warnings.catch_warnings(record=True) as raised:
            warnings.simplefilter("always")
            result = analyze_dataset(**arguments)
    except Exception as error:  # cje's own errors are ValueError, RuntimeError and more: each is reported as it is
        return {"error": f"{type(error).__name__}: {error}", "warnings": kept.messages}
    finally:
        logging.getLogger().removeHandler(kept)
    low, high = result.confidence_interval(alpha=0.05)
    diagnostics = result.diagnostics
    ess = (diagnostics.ess_per_policy if diagnostics is not None and arguments["estimator"] != "direct" else {}) or {}
    statuses = (getattr(diagnostics, "status_per_policy", None) or {}) if diagnostics is not None else {}
    policies = list(result.metadata["target_policies"])
    return {
        "method": result.method,
        "status": _status(diagnostics.overall_status) if diagnostics is not None else None,
        "policies": {policy: {"estimate": float(result.estimates[i]), "standard_error": float(result.standard_errors[i]),
                              "ci_low": float(low[i]), "ci_high": float(high[i]),
                              "ess_fraction": None if policy not in ess else float(ess[policy]),
                              "status": _status(statuses.get(policy)), "n": int(result.n_samples_used.get(policy, 0))}
                     for i, policy in enumerate(policies)},
        "warnings": list(dict.fromkeys([str(w.message) for w in raised] + kept.messages)),
    }


def _timed(label: str, arguments: dict) -> dict:
    started = time.monotonic()
    result = estimate(arguments)
    print(f"progress {label} {time.monotonic() - started:.1f}", file=sys.stderr, flush=True)
    return result


def _write_rows(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def _read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# Stacked DR is left out: it costs as much as the other two together at 10,000 prompts, for each share of labels.
ABLATION_ESTIMATORS = ("calibrated-ips", "direct")
# cje 0.3's Direct estimator by default (inference by cluster bootstrap) refits its calibration in each replicate from
# the oracle labels of the fresh draws alone, and debiases with their residuals: without the targets' own labels it
# returns NaN ("Full data calibration failed: division by zero"), and with them it nearly equals their mean by
# construction. With cluster-robust inference it calibrates on the logged labels and averages the calibrated scores of
# the targets' responses: the off-policy use of Direct that the ablation measures.
DIRECT_WITHOUT_TARGET_LABELS = {"inference_method": "cluster_robust"}


def coverage_ablation(folder: str, bootstrap_replicates: int, fractions: list[float], seed: int) -> list[dict]:
    """Per share of the logged responses' oracle labels: how many were kept and each ablation estimator's results."""
    logged = _read_rows(Path(folder, "logged.jsonl"))
    labelled = sorted(row["prompt_id"] for row in logged if row.get("oracle_label") is not None)
    random.Random(seed).shuffle(labelled)
    results = []
    with tempfile.TemporaryDirectory(prefix="arena10k-coverage-") as held_out:
        Path(held_out, "fresh_draws").mkdir()
        for path in sorted(Path(folder, "fresh_draws").glob("*.jsonl")):
            _write_rows(Path(held_out, "fresh_draws", path.name), ({**row, "oracle_label": None} for row in _read_rows(path)))
        for fraction in fractions:
            kept = set(labelled[:math.ceil(fraction * len(labelled))])
            _write_rows(Path(held_out, "logged.jsonl"),
                        (row if row["prompt_id"] in kept else {**row, "oracle_label": None} for row in logged))
            wanted = {name: arguments for name, arguments in calls(held_out, bootstrap_replicates).items()
                      if name in ABLATION_ESTIMATORS}
            wanted["direct"]["estimator_config"] = DIRECT_WITHOUT_TARGET_LABELS
            results.append({"fraction": fraction, "labels": len(kept),
                            "estimators": {name: _timed(f"{name} with {fraction * 100:g}% of the oracle labels", arguments)
                                           for name, arguments in wanted.items()}})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="a variant's Phase 2 folder (logged.jsonl and fresh_draws/)")
    parser.add_argument("replicates", type=int, help="the Direct estimator's bootstrap replicates")
    parser.add_argument("end", nargs="?", choices=ENDS, help="the off-policy estimators at this end")
    parser.add_argument("--oracle-fractions", type=lambda text: [float(f) for f in text.split(",")],
                        help="the coverage ablation, at these shares of the oracle labels (comma-separated)")
    parser.add_argument("--seed", type=int, default=0, help="which oracle labels the ablation keeps")
    parser.add_argument("--stage", action="store_true",
                        help="the estimators, at each certified end the folder has, and the ablation if asked: all in one")
    options = parser.parse_args()
    if options.stage and options.end:
        parser.error("--stage makes the estimates at every certified end the folder has: give no end with it")
    logging.getLogger().setLevel(logging.WARNING)  # cje's warnings are kept in the JSON
    results = {"cje_version": version("cje-eval")}
    if options.stage or not options.oracle_fractions:
        results["estimators"] = estimators(options.folder, options.replicates, options.end)
    if options.stage and Path(options.folder, "certified_ends").is_dir():
        results["ends"] = {end: estimators(options.folder, options.replicates, end) for end in ENDS}
    if options.oracle_fractions:
        results["coverage"] = coverage_ablation(options.folder, options.replicates, options.oracle_fractions, options.seed)
    print(json.dumps(results))


def estimators(folder: str, replicates: int, end: str | None = None) -> dict[str, dict]:
    return {name: _timed(name if end is None else f"{name} at the {end} end", arguments)
            for name, arguments in calls(folder, replicates, end).items()}


if __name__ == "__main__":
    main()
