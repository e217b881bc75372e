"""The watchdog of a live MLflow run: marks it KILLED when its process dies without ending it.

Started by :meth:`emoexp.tracking.Study.start` in a session of its own (a ``kill -9`` of the
run's process group does not reach it)::

    python -m emoexp.tracking.watch <pid> <run_id> <attempt_token>

with the tracking URI in ``EMOEXP_WATCH_URI`` (never on the command line, where ``ps`` shows
it). It polls the pid every two seconds; once the process is gone it sets the run KILLED only
if the run is still RUNNING under the same attempt (a rerun that already resumed the parent
has a new token and is left alone). MLflow is imported only then.
"""

from __future__ import annotations

import os
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    pid, run_id, token = int(argv[0]), argv[1], argv[2]
    uri = os.environ.get("EMOEXP_WATCH_URI")
    if not uri:
        return 2
    while _alive(pid):
        time.sleep(2.0)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    if run.info.status == "RUNNING" and run.data.tags.get("emoexp.attempt_token") == token:
        client.set_terminated(run_id, "KILLED")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
