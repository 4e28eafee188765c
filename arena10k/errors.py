"""The few errors arena10k raises, with messages written for the person running the pipeline.

The split matters for a multi-day run: an `ItemError` fails one work item (it is recorded and retried
on the next run), while any other `Arena10kError` stops the stage at once.
"""


class Arena10kError(Exception):
    """Something the user has to fix; the message says what and how."""


class ConfigError(Arena10kError):
    """The experiment config is invalid or asks for something that cannot work."""


class CheckpointMismatchError(Arena10kError):
    """A checkpoint was written under a different configuration than the one now in use."""


class AccountRefusedError(Arena10kError):
    """The provider refused the account: its key (401/403), or its credit (a 429 whose code is insufficient_quota).
    Every further call would fail the same way, so the stage stops instead of recording thousands of failures (or
    fake scores), or waiting on retries that cannot succeed."""


class EndpointDownError(Arena10kError):
    """An endpoint stopped answering (connection errors, timeouts, 5xx) for every item alike: an outage, not a
    failure of the items, so the stage stops with no item recorded as failed and a rerun resumes normally."""


class SelfCheckError(Arena10kError):
    """Teacher forcing disagreed with the logging policy's own sampled log-probs on the first responses: the
    scoring path is not the sampling one, so the stage stops before spending the rest of its calls."""


class ItemError(Arena10kError):
    """One work item failed. `retryable` tells whether trying again could help;
    `raw` keeps what the model said when its reply could not be used. An item whose endpoint could not be reached
    or would not serve it (`unreachable`: connection errors, timeouts, gateway errors, rate limits to the end of its
    retries) did not fail: it is not recorded, uses none of its max_attempts, and a rerun tries it."""

    def __init__(self, message: str, *, retryable: bool, raw: str | None = None, unreachable: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.raw = raw
        self.unreachable = unreachable


class RunInProgressError(Arena10kError):
    """Another pipeline process works on the same data directory: two writers would interleave checkpoint lines."""


class AnalysisError(Arena10kError):
    """cje-eval could not be run on the Phase 2 files (its environment is broken, or it crashed): no estimate is
    reported, and the Phase 2 files stay as they are."""
