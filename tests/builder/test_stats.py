"""Error reasons are counted by kind, not by the host or address each row happened to hit."""

import json

import pytest

from builder.stats import RunStats, error_reason, format_stats, merge_stats

ALIKE = [
    ["DNS lookup of a.example.com failed: Name or service not known",
     "DNS lookup of img.cdn.example.org failed: Name or service not known"],
    ["cannot connect to a.example.com:443: Connection refused", "cannot connect to 10.0.0.7:8080: Connection refused"],
    ["169.254.169.254 is not a public address", "127.0.0.1 is not a public address", "::1 is not a public address",
     "fe80::1 is not a public address"],
    ["decompression bomb: 20000x20000 is over 89478485 pixels", "decompression bomb: 9000x12000 is over 89478485 pixels"],
]


@pytest.mark.parametrize("messages", ALIKE)
def test_messages_that_differ_only_by_host_address_or_size_count_together(messages):
    assert len({error_reason(m) for m in messages}) == 1
    assert not any(part in error_reason(messages[0]) for part in ("example", "169.254", "20000"))


def test_different_kinds_of_failure_stay_apart():
    kinds = [group[0] for group in ALIKE] + ["HTTP 404", "HTTP 500", "timed out after 10.0s", "empty body"]
    assert len({error_reason(m) for m in kinds}) == len(kinds)


def test_run_stats_counts_statuses_and_folded_reasons():
    stats = RunStats()
    stats.add({"status": ["ok", "fetch_error", "fetch_error", "blocked"],
               "error": [None, "cannot connect to a.com:443: Connection refused",
                         "cannot connect to b.net:80: Connection refused", "10.1.2.3 is not a public address"]})
    assert stats.statuses == {"ok": 1, "fetch_error": 2, "blocked": 1}
    assert sorted(stats.errors.values()) == [1, 2]


def test_stage_seconds_are_timed_per_stage_and_summed_across_tasks():
    import time

    first, second = RunStats(), RunStats()
    slow = first.timed("caption", lambda batch: time.sleep(0.05) or batch)
    assert slow({"x": [1]}) == {"x": [1]}
    slow({"x": [2]})
    second.timed("caption", lambda batch: time.sleep(0.02) or batch)({})
    second.timed("fetch", lambda batch: batch)({})
    assert 0.1 <= first.stage_seconds["caption"] < 1
    merged = merge_stats([first.to_dict(), second.to_dict()])
    assert merged["stage_seconds"]["caption"] >= 0.12 and set(merged["stage_seconds"]) == {"caption", "fetch"}
    assert "caption" in format_stats(merged)


def test_a_failing_stage_still_counts_its_time():
    stats = RunStats()

    def broken(batch):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        stats.timed("rank", broken)({})
    assert "rank" in stats.stage_seconds


def test_merged_stats_sum_the_tasks_working_seconds_and_reused_rows():
    parts = []
    for seconds, reused in [(10.0, 3), (25.0, 1)]:
        stats = RunStats()
        stats.add({"status": ["ok"] * 50, "error": [None] * 50})
        stats.active_seconds, stats.reused_rows = seconds, reused
        parts.append(stats.to_dict())
    merged = merge_stats(parts)
    assert merged["worker_seconds"] == 35.0 and merged["reused_rows"] == 4 and merged["rows"] == 100
    text = format_stats(merged)
    assert "2.86 rows per worker-second (35.0 worker-seconds in all)" in text and "4 ok rows repeated" in text
    resumed = RunStats(json.loads(json.dumps(parts[1])))  # a resumed task continues its counts
    assert resumed.active_seconds == 25.0 and resumed.statuses == {"ok": 50} and resumed.reused_rows == 1
