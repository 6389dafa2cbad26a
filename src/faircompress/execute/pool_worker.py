"""A local worker process (`python -m faircompress.execute.pool_worker ADDRESS`): connects to its
pool, gets the study once, then executes the runs it is handed until told to stop. Started as a
fresh interpreter running this module, so the script that started the study is never imported again
(unlike multiprocessing's spawn, which re-runs an unguarded script)."""
from __future__ import annotations

import os
import sys
from multiprocessing.connection import Client

KEY_VARIABLE = "FAIRCOMPRESS_POOL_KEY"


def main(address: str) -> None:
    from . import quiet
    from .worker import RelayHooks, execute, torch_threads, worker_name

    conn = Client(address, family="AF_UNIX", authkey=bytes.fromhex(os.environ.pop(KEY_VARIABLE)))
    cfg, data, out = conn.recv()
    quiet.install(quiet.QuietLock())
    send = conn.send
    while (job := conn.recv()) is not None:
        run, threads = job
        send((run.run_id, "started", worker_name()))
        with torch_threads(threads):
            outcome = execute(cfg, run, data, out, RelayHooks(run.run_id, send))
        send((run.run_id, "outcome", outcome))


if __name__ == "__main__":
    main(sys.argv[1])
