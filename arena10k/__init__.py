"""arena10k: off-policy-evaluation datasets for LLM policies (Phase 1 of the Arena 10K experiment)."""

import logging

# The pipeline logs to its run's log file (Workspace.start_log) and tells the user on the terminal itself;
# without this, a message logged before the log file opens would also reach the terminal, a second time.
logging.getLogger("arena10k").addHandler(logging.NullHandler())
