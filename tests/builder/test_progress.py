"""Progress: the run's rows on one worker's bar, the bar's rates, and a periodic log line per worker."""

import logging

from builder.progress import WorkerProgress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_bar_shows_ok_rate_and_a_line_is_logged_per_interval(caplog):
    clock = _Clock()
    progress = WorkerProgress("w1", total=9, show_bar=True, done=3, log_every=60, clock=clock)
    assert progress.bar.total == 9 and progress.bar.n == 3  # the run's rows, from those of tasks done before
    with caplog.at_level(logging.INFO, logger="builder.progress"):
        clock.now = 10
        progress.update(["ok", "fetch_error"])
        assert "50% ok" in progress.bar.postfix and "0.1 ok images/s" in progress.bar.postfix
        assert not caplog.records  # not yet a minute
        clock.now = 61
        progress.update(["ok", "ok"])
    progress.close()
    assert [r.getMessage() for r in caplog.records] == ["worker w1: 4 rows (0.1 rows/s), 3 ok (75%)"]
