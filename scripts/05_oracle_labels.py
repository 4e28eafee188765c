"""Stage 5: oracle labels from a stronger judge on seeded slices."""

from arena10k.pipeline import main_for_stage

if __name__ == "__main__":
    main_for_stage("oracle", __doc__)
