"""Runs the pipeline (run_phase1_pipeline.py's arguments after POINT) and SIGKILLs it at one moment of a batch's life,
for tests/test_batches.py. POINT is one of:
  writing        halfway through writing a batch's input file (the ledger has the batch, the provider nothing);
  uploaded       the provider has the input file, the ledger not its id;
  before_submit  the ledger has the file's id, nothing is submitted;
  submitted      the provider has the batch, the ledger not its id;
  polling        while a batch runs, at the second look at its state;
  collecting     the results are downloaded and two of them written to the checkpoint."""

import os
import signal
import sys

from arena10k import batches
from arena10k.checkpoint import Checkpoint
from arena10k.pipeline import main
from arena10k.providers.batch_api import BatchAPI

POINT = sys.argv.pop(1)
calls = {"line": 0, "status": 0, "append": 0}
downloaded = False


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def after(original, then):
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        then(result)
        return result
    return wrapped


if POINT == "writing":
    record, line = batches.Ledger.record, BatchAPI.line

    def armed_record(self, event):
        record(self, event)
        if event["event"] == "prepared":
            BatchAPI.line = staticmethod(counted_line)

    def counted_line(*args):
        calls["line"] += 1
        if calls["line"] == 3:
            die()
        return line(*args)

    batches.Ledger.record = armed_record
elif POINT == "uploaded":
    BatchAPI.upload = after(BatchAPI.upload, lambda _: die())
elif POINT == "before_submit":
    BatchAPI.submit = lambda *args, **kwargs: die()
elif POINT == "submitted":
    BatchAPI.submit = after(BatchAPI.submit, lambda _: die())
elif POINT == "polling":
    def look(_):
        calls["status"] += 1
        if calls["status"] == 2:
            die()
    BatchAPI.status = after(BatchAPI.status, look)
elif POINT == "collecting":
    def arm(_):
        global downloaded
        downloaded = True
    BatchAPI.lines = after(BatchAPI.lines, arm)

    def count(_):
        calls["append"] += downloaded
        if calls["append"] == 2:
            die()
    Checkpoint.append = after(Checkpoint.append, count)
else:
    sys.exit(f"unknown kill point {POINT}")

sys.exit(main())
