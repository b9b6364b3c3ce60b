"""What a pipeline stage is: one declaration the run loop, the config, the card, tuning and the benchmark all read.

A stage is a batched map function `(batch: dict[str, list]) -> dict[str, list]` made once per process by its
loader, plus what it promises: the columns it reads and the columns it writes (their types, or internal
hand-offs whose names start with `_`, never written out). `map_fns.registry.STAGES` lists them in run order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from map_fns.status import ok_rows

MapFn = Callable[[dict[str, list]], dict[str, list]]
ROW_KEY = "_row_key"  # the source's internal column: what a row's samples and reused results are keyed by


@dataclass(frozen=True)
class Column:
    """A column a stage writes: `dtype` is "string", "int32", "float64", or "list<T>" of one of them; internal
    columns (name starting with `_`) hold Python objects for later stages and have no dtype."""

    name: str
    dtype: str | None = None

    @property
    def internal(self) -> bool:
        return self.name.startswith("_")


@dataclass(frozen=True)
class StageContext:
    """What a loader may need beyond its own config section: where it runs and the run's engine settings.

    `read_local_files`: image cells naming local files are read (a local source's own files; never for a Hub
    source, which must not make us read and publish this machine's files).
    """

    device: Any = "cpu"
    precision: str = "auto"
    model_batch_size: int = 0
    read_local_files: bool = False


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, declared once.

    name: its config section (`BuildConfig.<name>`), its key in timings, and its `--help` group.
    config: the dataclass whose fields are its flags (checked on construction, importing no torch).
    load: `(config, StageContext) -> MapFn`, loading its model once.
    reads / writes: the columns it needs from the source or earlier stages, and those it adds or changes.
    model / model_kind / role: the config field naming its model, "transformers" or "open_clip", and how the
      card names it; None for a stage without a model.
    recipe: its settings shape the captions (tuning may vary them; the card lists them; a resume must match).
    reuse: its results depend only on the row's key and its inputs, so a row repeating a key copies them.
    run_ahead: waiting-bound (downloads): runs in a background thread, batches ahead of the later stages.
    """

    name: str
    config: type
    load: Callable[[Any, StageContext], MapFn]
    reads: tuple[str, ...]
    writes: tuple[Column, ...]
    model: str | None = None
    model_kind: str | None = None
    role: str | None = None
    recipe: bool = True
    reuse: bool = True
    run_ahead: bool = False

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.writes)


def engine_loader(make: Callable[..., MapFn]) -> Callable[[Any, StageContext], MapFn]:
    """The loader of a model stage whose factory is `make(config, device, *, precision, model_batch_size)`; it also
    sets whether fp32 models may use TF32 on GPUs, which torch keeps process-wide (`map_fns.precision.set_tf32`)."""
    def load(config, context: StageContext) -> MapFn:
        from map_fns.precision import set_tf32

        set_tf32(context.precision)
        return make(config, context.device, precision=context.precision, model_batch_size=context.model_batch_size)

    return load


def on_ok_rows(compute: MapFn, writes: tuple[Column, ...]) -> MapFn:
    """A batched fn that hands `compute` only the ok rows (every column, those rows only) and fills its
    `writes` columns back in row order: rows not ok keep the value the column had (status, error), or None.

    `compute` is not called when no row is ok, so a model never sees an empty batch.
    """
    names = tuple(column.name for column in writes)

    def fill_back(batch: dict[str, list]) -> dict[str, list]:
        rows = ok_rows(batch)
        size = len(batch["status"])
        filled = {name: list(batch[name]) if name in batch else [None] * size for name in names}
        if rows:
            computed = compute({name: [values[i] for i in rows] for name, values in batch.items()})
            for name in names:
                for i, value in zip(rows, computed[name], strict=True):
                    filled[name][i] = value
        return filled

    return fill_back


def as_declared(stage: Stage, fn: MapFn) -> MapFn:
    """`fn`, raising when a call returns other columns than `stage` declares it writes (an undeclared column
    would reach the output, or a later stage, unchecked)."""
    declared = set(stage.written)

    def checked(batch: dict[str, list]) -> dict[str, list]:
        out = fn(batch)
        if set(out) != declared:
            raise RuntimeError(f"stage {stage.name!r} returned columns {sorted(out)}, but declares {sorted(declared)}")
        return out

    return checked
