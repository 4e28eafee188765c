"""Stage 7: cje-eval 0.3's estimators on the Phase 2 files (calibrated IPS, stacked DR, and Direct on the fresh draws,
for both judge variants), in cje-eval's own environment. Writes analysis/estimates.json and the Estimates section of
phase2/report.md, with a verdict that says when the numbers cannot rank the policies. Calls no model.

The work: arena10k/stages/analyze.py, arena10k/cje_estimates.py.
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.analyze import STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
