"""Rows that repeat an earlier row's key reuse its results instead of running the models again.

LAION-scale sources repeat URLs a lot, and a row's results depend only on (seed, row key, image, models,
recipe): a repeated `_row_key` would get the same captions, so running the models on it again is wasted.
This trusts the key: a URL whose image changed between two fetches keeps the first fetch's captions.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

from map_fns.stage import ROW_KEY
from map_fns.status import OK


class ResultReuse:
    """Remembers the model stages' outputs for the last `max_keys` row keys whose result was `ok`.

    `on_reused(n)` hears, after each batch, how many of its rows got a copy instead of a model run.
    """

    def __init__(self, max_keys: int = 100_000, on_reused: Callable[[int], None] = lambda count: None):
        if max_keys < 0:
            raise ValueError(f"max_keys must be >= 0, got {max_keys}")
        self.max_keys = max_keys
        self.on_reused = on_reused
        self._results: OrderedDict[str, dict] = OrderedDict()  # key -> {column: value}, least recent first

    def wrap(self, stages: Callable[[dict], dict]) -> Callable[[dict], dict]:
        """`stages` (a batched fn returning the columns it adds or changes) run once per new key.

        `stages` sees the first ok row of every key not remembered, plus the non-ok rows (so they get its
        pass-through outputs, and a key that failed before is computed once it comes ok). Every other ok row
        gets a copy of its key's result. A batch where nothing needs computing takes its columns from the
        remembered results and does not call `stages`; an empty batch goes to `stages` as it is (the
        stages handle zero rows, like a batch with no ok row).
        """

        def reusing(batch: dict[str, list]) -> dict[str, list]:
            if not batch["status"]:
                return stages(batch)
            to_run: list[int] = []  # input rows given to `stages`
            first: dict[str, int] = {}  # key -> its position in `to_run`, for keys computed in this batch
            plan: list[tuple[int | dict, bool]] = []  # per row: (position in `to_run` or remembered result, reused)
            for i, (key, status) in enumerate(zip(batch[ROW_KEY], batch["status"])):
                if status == OK and key in first:
                    plan.append((first[key], True))
                elif status == OK and key in self._results:
                    self._results.move_to_end(key)
                    plan.append((self._results[key], True))
                else:
                    if status == OK:
                        first[key] = len(to_run)
                    plan.append((len(to_run), False))
                    to_run.append(i)
            computed = stages({name: [values[i] for i in to_run] for name, values in batch.items()}) if to_run else {}
            fresh = [{name: values[j] for name, values in computed.items()} for j in range(len(to_run))]
            for key, j in first.items():
                if fresh[j].get("status", OK) == OK:  # a stage that leaves status alone leaves it ok
                    self._remember(key, fresh[j])
            rows = []
            for source, reused in plan:
                row = fresh[source] if isinstance(source, int) else source
                rows.append(copy.deepcopy(row) if reused else row)
            self.on_reused(sum(reused for _, reused in plan))
            return {name: [row[name] for row in rows] for name in rows[0]}

        return reusing

    def _remember(self, key: str, result: dict) -> None:
        """Keep a private copy (later code may mutate the row's lists), dropping the least recent keys."""
        if self.max_keys == 0:
            return
        self._results[key] = copy.deepcopy(result)
        self._results.move_to_end(key)
        while len(self._results) > self.max_keys:
            self._results.popitem(last=False)
