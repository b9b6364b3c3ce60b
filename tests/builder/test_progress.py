"""Progress: each process's share of a known total, the bar's rates, and a periodic log line per process."""

import logging

from builder.progress import RankProgress, rank_share


def test_shares_of_a_known_total_add_up_and_follow_the_row_deal():
    assert [rank_share(10, rank, 3) for rank in range(3)] == [4, 3, 3]
    assert sum(rank_share(7, rank, 4) for rank in range(4)) == 7
    assert rank_share(1, 1, 2) == 0  # a process with nothing to do
    assert rank_share(None, 0, 2) is None


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_bar_shows_ok_rate_and_a_line_is_logged_per_interval(caplog):
    clock = _Clock()
    progress = RankProgress(1, 2, total=9, show_bar=True, log_every=60, clock=clock)
    assert progress.bar.total == 4
    with caplog.at_level(logging.INFO, logger="builder.progress"):
        clock.now = 10
        progress.update(["ok", "fetch_error"])
        assert "50% ok" in progress.bar.postfix and "0.1 ok images/s" in progress.bar.postfix
        assert not caplog.records  # not yet a minute
        clock.now = 61
        progress.update(["ok", "ok"])
    progress.close()
    assert [r.getMessage() for r in caplog.records] == ["rank 1: 4 rows (0.1 rows/s), 3 ok (75%)"]
