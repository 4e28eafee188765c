"""Stage 3: log-probability of every P0 response under each of the five policies."""

from arena10k.pipeline import main_for_stage

if __name__ == "__main__":
    main_for_stage("teacher_force", __doc__)
