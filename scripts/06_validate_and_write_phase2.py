"""Stage 6: check every stage's coverage, compute weight diagnostics (and the clone check), and write
the Phase 2 dataset that cje-eval loads, with summary.txt and the diagnostics report. Calls no model.

The work: arena10k/stages/phase2.py, arena10k/report.py.
"""

import sys

from arena10k.pipeline import main
from arena10k.stages.phase2 import STAGE as STAGE

if __name__ == "__main__":
    sys.exit(main(stage=STAGE.name, description=__doc__))
