"""Leases, heartbeats and done markers: two workers sharing one output location agree on who runs what."""

import logging
import threading
import time

import pytest

from builder.claims import Board, Heartbeat
from output.layout import FINISHING_FILE, done_name, lease_name
from output.store import OutputStore

LEASE = 60.0
TRIES = 50  # a claim picks at random among the free tasks: repeat it so that any wrong pick would show


class Clock:
    """A clock the test moves by hand: leases expire without anyone sleeping."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path) -> OutputStore:
    return OutputStore(str(tmp_path / "out"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def boards(store, clock) -> tuple[Board, Board]:
    """Two workers, "a" and "b", on one output location and one clock."""
    return (Board(store, "a", LEASE, clock=clock, settle_seconds=0),
            Board(store, "b", LEASE, clock=clock, settle_seconds=0))


def test_a_claim_takes_a_free_task_and_writes_its_lease(boards, store, clock):
    a, _ = boards
    task = a.claim([0, 1, 2])
    assert task in (0, 1, 2)
    assert store.read_json(lease_name(task)) == {"worker": "a", "expires": 1_000_060.0}
    assert store.glob("tasks/leases/*.json") == [lease_name(task)]


def test_a_task_held_by_a_live_lease_is_never_claimed_by_another_worker(boards, store):
    a, b = boards
    assert a.claim([0]) == 0 and a.claim([1]) == 1
    assert {b.claim([0, 1, 2]) for _ in range(TRIES)} == {2}
    assert b.claim([0, 1]) is None
    assert store.read_json(lease_name(0))["worker"] == store.read_json(lease_name(1))["worker"] == "a"


def test_an_expired_lease_is_taken_over_by_another_worker(boards, store, clock):
    a, b = boards
    assert a.claim([0]) == 0
    clock.now += LEASE - 0.001
    assert b.claim([0]) is None
    clock.now += 0.002  # a stopped renewing: its lease ran out
    assert b.claim([0]) == 0
    assert store.read_json(lease_name(0)) == {"worker": "b", "expires": clock.now + LEASE}
    assert a.claim([0]) is None  # and now it is b's, live


def test_a_done_task_is_never_claimed(boards, store, clock):
    a, b = boards
    a.mark_done(1, {"rows": 5})
    b.mark_done(3, {"rows": 5})
    assert {a.claim([0, 1, 2, 3]) for _ in range(TRIES)} <= {0, 2}
    assert {b.claim([1, 3]) for _ in range(TRIES)} == {None}
    clock.now += 10 * LEASE  # done stays done when nobody holds anything any more
    assert {b.claim([1, 3]) for _ in range(TRIES)} == {None}
    assert b.claim([1, 3], done={1, 3}) is None  # the caller's own view of what is done


def test_a_claim_is_none_when_every_task_is_done_or_held(boards):
    a, b = boards
    a.mark_done(0, {})
    assert a.claim([1]) == 1
    b.mark_done(2, {})
    assert b.claim([0, 1, 2]) is None


def test_only_one_of_two_workers_takes_a_live_named_lease(boards, store, clock):
    a, b = boards
    assert a.take(FINISHING_FILE)
    assert not b.take(FINISHING_FILE)
    assert a.take(FINISHING_FILE)  # its own: taking it again renews it
    assert store.read_json(FINISHING_FILE)["worker"] == "a"
    clock.now += LEASE + 1
    assert b.take(FINISHING_FILE)
    assert not a.take(FINISHING_FILE)
    assert store.read_json(FINISHING_FILE) == {"worker": "b", "expires": clock.now + LEASE}


def test_renew_refuses_and_writes_nothing_when_another_worker_holds_the_lease(boards, store, clock):
    a, b = boards
    assert a.claim([0]) == 0
    before = store.read_bytes(lease_name(0))
    clock.now += 5
    assert b.renew(lease_name(0)) is False
    assert store.read_bytes(lease_name(0)) == before
    assert a.renew(lease_name(0)) is True
    assert store.read_json(lease_name(0)) == {"worker": "a", "expires": clock.now + LEASE}


def test_mark_done_writes_the_marker_and_drops_only_its_own_lease(boards, store, clock):
    a, b = boards
    assert a.claim([0]) == 0 and b.claim([1]) == 1
    a.mark_done(0, {"rows": 7, "chunks": 1})
    assert store.read_json(done_name(0)) == {"rows": 7, "chunks": 1}
    assert not store.exists(lease_name(0))
    assert store.read_json(lease_name(1))["worker"] == "b"

    # a stalled worker finishing a task another worker took over leaves the new holder's lease alone
    assert a.claim([2]) == 2
    clock.now += LEASE + 1
    assert b.claim([2]) == 2
    a.mark_done(2, {"rows": 3})
    assert store.read_json(done_name(2)) == {"rows": 3}
    assert store.read_json(lease_name(2))["worker"] == "b"


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_a_heartbeat_renews_its_lease_and_stops_on_exit(store):
    board = Board(store, "a", lease_seconds=0.3, settle_seconds=0)  # a beat every 0.1 s
    name = lease_name(0)
    assert board.claim([0]) == 0
    first = store.read_json(name)["expires"]
    heartbeat = Heartbeat(board, name).__enter__()
    assert _wait_for(lambda: store.read_json(name)["expires"] > first), "the lease was never renewed"
    leaving = threading.Thread(target=heartbeat.__exit__, args=(None, None, None), daemon=True)
    leaving.start()  # the end of a `with` block, watched from outside so that a heartbeat that never stops fails
    leaving.join(timeout=5)
    assert not leaving.is_alive() and not heartbeat.thread.is_alive(), "leaving the heartbeat did not stop it"
    last = store.read_json(name)
    time.sleep(0.35)  # more than three beats
    assert store.read_json(name) == last


def test_a_heartbeat_stops_when_another_worker_took_its_lease_over(store, caplog):
    board = Board(store, "a", lease_seconds=0.3, settle_seconds=0)
    other = Board(store, "b", lease_seconds=60, settle_seconds=0)
    name = lease_name(0)
    assert board.claim([0]) == 0
    with caplog.at_level(logging.WARNING, logger="builder.claims"), Heartbeat(board, name) as heartbeat:
        other.write_lease(name)
        assert _wait_for(lambda: not heartbeat.thread.is_alive()), "the heartbeat went on beating"
        assert store.read_json(name)["worker"] == "b"
    assert "taken over by b" in caplog.text


def test_a_lease_written_by_another_worker_while_settling_wins(store):
    """The last writer holds the task: a write that lands while the claimer waits makes its claim fail."""
    slow = Board(store, "a", LEASE, settle_seconds=0.5)
    other = Board(store, "b", LEASE, settle_seconds=0)
    name = lease_name(0)
    result = []
    claimer = threading.Thread(target=lambda: result.append(slow.claim([0])))
    claimer.start()
    assert _wait_for(lambda: store.exists(name))
    other.write_lease(name)
    claimer.join()
    assert result == [None]
    assert store.read_json(name)["worker"] == "b"


def test_two_workers_racing_for_one_task(store):
    """Both start at the same moment with a real settling wait. What the design promises: each claim returns the
    task or None, the last writer wins (so someone always does), and the lease left names a worker whose claim
    returned the task. Two winners are possible (a write landing after the other's wait) and are harmless."""
    for attempt in range(3):
        name = lease_name(attempt)
        boards = [Board(store, worker, LEASE, settle_seconds=0.2) for worker in ("a", "b")]
        start = threading.Barrier(2)
        won: dict[str, int | None] = {}
        errors: list[BaseException] = []

        def race(board: Board) -> None:
            start.wait()
            try:
                won[board.worker] = board.claim([attempt])
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=race, args=(board,)) for board in boards]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, f"a claim failed instead of winning or losing: {errors!r}"
        assert set(won.values()) <= {attempt, None}
        winners = {worker for worker, task in won.items() if task == attempt}
        assert winners, "nobody won, yet the last writer always reads its own lease back"
        assert store.read_json(name)["worker"] in winners


def test_a_started_task_is_taken_up_before_any_new_one(boards, store, clock):
    """A stopped worker's task (it has a progress record, its lease expired) goes first: a restart resumes it
    instead of leaving it half done while new tasks start."""
    from builder.resume import TaskProgress, save_progress

    a, b = boards
    save_progress(store, 37, TaskProgress(chunks=1, rows=16))
    save_progress(store, 12, TaskProgress(chunks=2, rows=32))
    tasks = list(range(100))
    assert a.claim(tasks) == 12  # the lowest started one, never a random new one
    assert b.claim(tasks) == 37  # 12 is held
    clock.now += LEASE + 1
    a.mark_done(12, {})
    assert store.glob("tasks/progress/*.json") == ["tasks/progress/000037.json"]  # its record is in the marker now
    for worker in range(TRIES):  # b stopped: whoever comes next resumes 37
        clock.now += LEASE + 1
        assert Board(store, f"w{worker}", LEASE, clock=clock, settle_seconds=0).claim(tasks) == 37
