"""Stage 6: validate coverage, weight diagnostics, and write the Phase 2 dataset for cje-eval."""

from arena10k.pipeline import main_for_stage

if __name__ == "__main__":
    main_for_stage("phase2", __doc__)
