"""Stage 4: judge every response (deterministic score and score distribution)."""

from arena10k.pipeline import main_for_stage

if __name__ == "__main__":
    main_for_stage("judge", __doc__)
