"""cje-eval 0.3's estimators on one variant's Phase 2 files; run by the analyze stage in cje-eval's own environment
(install.sh makes `.venv-cje-0.3.0`), so it imports nothing from arena10k and nothing but cje and the standard library.

    .venv-cje-0.3.0/bin/python arena10k/cje_estimates.py data/runs/local/phase2/uncertainty
    .venv-cje-0.3.0/bin/python arena10k/cje_estimates.py data/runs/local/phase2/uncertainty raise

With an end (lower or raise), the off-policy estimators only, on `certified_ends/<end>/logged.jsonl` (the log-ratios
moved to the ends of their certified intervals; the Direct estimate does not reweight, so it does not move).

Prints one line of JSON: per estimator, cje's estimate, standard error, 95% interval, ESS fraction and diagnostic
status of every target policy, with the warnings cje gave. Each estimator is called exactly as the README shows it,
with cje's defaults, so that running it by hand gives the same numbers.

Two changes to cje, of speed only, each returning what cje's own function returns, so the numbers are the same to the
last digit (tests/test_pipeline.py calls cje without them and compares). BENCHMARKS.md has the times.
- `FreshDrawDataset` finds a prompt's fresh draws by scanning every draw, and the DR estimators ask for each prompt's
  draws in every fold of every policy of every component: stacked DR's time grew with the square of the prompts.
  Here the same lookups read an index built once per dataset (the same draws in the same order).
- `get_fold` hashes a prompt id each time it is asked for its fold, 20 million times in the Direct estimator's 2,000
  bootstrap replicates at 10,000 prompts: remembered here.
"""

import functools
import json
import logging
import sys
import warnings
from importlib.metadata import version

import numpy as np
import cje.data.folds
from cje import analyze_dataset
from cje.data.fresh_draws import FreshDrawDataset

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


def calls(folder: str, end: str | None = None) -> dict[str, dict]:
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
        "direct": {"fresh_draws_dir": fresh_draws, "calibration_data_path": logged, "estimator": "direct"},
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


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)  # cje's warnings are kept in the JSON
    results = {"cje_version": version("cje-eval"),
               "estimators": {name: estimate(arguments) for name, arguments in calls(*sys.argv[1:3]).items()}}
    print(json.dumps(results))
