"""cje-eval 0.3.0's three estimators on one variant's Phase 2 files, called by hand as the README shows them, with the
settings stage 7 uses and without any of arena10k/cje_estimates.py's speed-ups: what stage 7's numbers must equal.

    PYTHONHASHSEED=0 .venv-cje-0.3.0/bin/python benchmarks/cje_by_hand.py data/runs/local/phase2/deterministic 1000

Prints one line of JSON: per estimator and policy, [estimate, standard error, 95% interval low, high]. Used by
tests/test_pipeline.py (a real run's files) and benchmarks/run_10k.py --by-hand (10,000 prompts).
"""

import json
import sys
import warnings

from cje import analyze_dataset

folder, replicates = sys.argv[1], int(sys.argv[2])
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    results = {
        "calibrated-ips": analyze_dataset(logged_data_path=folder + "/logged.jsonl", estimator="calibrated-ips"),
        "stacked-dr": analyze_dataset(logged_data_path=folder + "/logged.jsonl", fresh_draws_dir=folder + "/fresh_draws",
                                      estimator="stacked-dr", estimator_config={"parallel": False}),
        "direct": analyze_dataset(fresh_draws_dir=folder + "/fresh_draws", calibration_data_path=folder + "/logged.jsonl",
                                  estimator="direct", estimator_config={"n_bootstrap": replicates}),
    }
out = {}
for name, result in results.items():
    low, high = result.confidence_interval(alpha=0.05)
    out[name] = {p: [float(result.estimates[i]), float(result.standard_errors[i]), float(low[i]), float(high[i])]
                 for i, p in enumerate(result.metadata["target_policies"])}
print(json.dumps(out))
