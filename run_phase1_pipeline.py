"""Run Phase 1 end to end: prepare -> generate -> teacher_force -> judge -> oracle -> phase2 -> analyze.

Resumes by default: finished work items are read from the per-stage checkpoints and never redone.

    python run_phase1_pipeline.py 20                  # 20 prompts, embedded local model
    python run_phase1_pipeline.py --force pi_bad      # recompute one policy's items (after changing it)
    python run_phase1_pipeline.py --force judge       # recompute the judge's scores
    python run_phase1_pipeline.py --only phase2       # just rewrite the Phase 2 files
"""

import sys

from arena10k.pipeline import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
