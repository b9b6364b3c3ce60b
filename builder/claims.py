"""Who works on what, agreed through the output location alone: leases, heartbeats and done markers.

There is no tracker service: every worker reads and writes small JSON files beside the data (`output.layout`),
through `output.store`, so the same rules hold on a local disk, NFS or an object store.
- A worker takes a task by writing its lease (its id and an expiry `--lease_seconds` ahead), waiting a moment
  for a concurrent claimer's write to land, and reading it back: the last writer holds the task. A heartbeat
  thread pushes the expiry forward while the task runs.
- A task whose lease expired (its worker was killed, lost its node, or hangs) is free again: a live worker takes
  it over and resumes it from its progress record.
- A finished task gets its done marker, written after its last chunk.
Correctness never rests on the leases: two workers that do end up on one task (a race, a stalled worker that
comes back) write the same chunk names with the same rows, so the output stays exact; leases only keep such
duplicated work rare. Expiry compares the writer's clock with the reader's: keep the workers' clocks in sync
(NTP) to within a small part of `--lease_seconds`.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable

from output.layout import DONE_GLOB, LEASE_GLOB, PROGRESS_GLOB, done_name, lease_name, progress_name, task_of
from output.store import OutputStore

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 0.5  # between writing a lease and reading it back: lets a concurrent claimer's write land
CLAIM_WINDOW = 64  # a new task is picked at random among this many lowest free ones: fewer collisions, roughly
# in order. A task some worker started (it has a progress record) goes first, so stopped work is finished first.


def worker_id() -> str:
    """Unique per process and readable in a lease: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Board:
    """The tasks' leases and done markers in `store`, as seen by the worker `worker`."""

    def __init__(self, store: OutputStore, worker: str, lease_seconds: float,
                 clock: Callable[[], float] = time.time, settle_seconds: float = SETTLE_SECONDS):
        self.store, self.worker, self.lease_seconds = store, worker, lease_seconds
        self.clock, self.settle_seconds = clock, settle_seconds

    def done(self) -> set[int]:
        return {task_of(name) for name in self.store.glob(DONE_GLOB)}

    def started(self) -> set[int]:
        """Tasks with a progress record: a stopped worker's task is taken up before any new one."""
        return {task_of(name) for name in self.store.glob(PROGRESS_GLOB)}

    def live_leases(self) -> dict[int, str]:
        """Task -> worker, for every lease not yet expired."""
        held = {}
        for name in self.store.glob(LEASE_GLOB):
            lease = self.store.read_json(name)
            if lease and lease["expires"] > self.clock():
                held[task_of(name)] = lease["worker"]
        return held

    def claim(self, tasks: list[int], done: set[int] | None = None) -> int | None:
        """Take a task among `tasks` that is neither done nor held by another live worker; None when there is
        none right now (all done, or the rest held by live workers)."""
        done = self.done() if done is None else done
        while True:
            held = self.live_leases()
            free = [task for task in tasks if task not in done and held.get(task, self.worker) == self.worker]
            if not free:
                return None
            started = sorted(self.started().intersection(free))
            task = started[0] if started else random.choice(free[:CLAIM_WINDOW])
            if self._won(lease_name(task)):
                return task
            logger.info("task %d was claimed by another worker at the same moment; trying another", task)

    def take(self, name: str) -> bool:
        """Take the lease `name` (finishing the run, say) unless another live worker holds it."""
        lease = self.store.read_json(name)
        if lease and lease["worker"] != self.worker and lease["expires"] > self.clock():
            return False
        return self._won(name)

    def _won(self, name: str) -> bool:
        """Write our lease, let a concurrent claimer's write land, and see whose stayed."""
        self.write_lease(name)
        time.sleep(self.settle_seconds)
        return self.holder(name) == self.worker

    def write_lease(self, name: str) -> None:
        self.store.write_json(name, {"worker": self.worker, "expires": self.clock() + self.lease_seconds})

    def holder(self, name: str) -> str | None:
        lease = self.store.read_json(name)
        return lease["worker"] if lease else None

    def renew(self, name: str) -> bool:
        """Push our lease's expiry forward; False (and no write) if another worker holds it now."""
        if self.holder(name) not in (None, self.worker):
            return False
        self.write_lease(name)
        return True

    def release(self, name: str) -> None:
        if self.holder(name) == self.worker:
            self.store.delete(name)

    def mark_done(self, task: int, record: dict) -> None:
        """The task's done marker (after its data, holding its final record), then its progress record (so that
        a claim's listing of started tasks stays short however many are done) and its lease go."""
        self.store.write_json(done_name(task), record)
        self.store.delete(progress_name(task))
        self.release(lease_name(task))


class Heartbeat:
    """Renews the lease `name` every third of its length on a daemon thread while its work runs (`with
    Heartbeat(...)`); warns once if another worker took it over (the work goes on: a duplicated task is still
    exact)."""

    def __init__(self, board: Board, name: str):
        self.board, self.name = board, name
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat {name}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _beat(self) -> None:
        while not self.stopped.wait(self.board.lease_seconds / 3):
            try:
                if not self.board.renew(self.name):
                    logger.warning("%s was taken over by %s (this worker was too slow to renew it); both finish "
                                   "the work, with the same result", self.name, self.board.holder(self.name))
                    return
            except Exception as err:  # a storage hiccup must not end the work; the next beat retries
                logger.warning("renewing %s failed: %s", self.name, err)
