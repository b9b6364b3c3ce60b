"""Publishing OUTPUT_DIR as a Hub dataset repo: data first, the card last, resumable.

The card goes in its own, last commit so that a repo never shows a card whose data is not there yet. Each
commit is atomic on the Hub, and the client sends only what the Hub lacks (files whose remote oid matches are
dropped from the commit; LFS objects already stored are not uploaded again), so re-running an interrupted
push picks up where it stopped and re-pushing an unchanged folder changes nothing.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Collection
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token

from builder.cli import is_main_process
from builder.config import ConfigError
from output.layout import CARD, PUSHED_DATA, PUSHED_FINAL
from output.viewer import chunk_files_problem

log = logging.getLogger(__name__)

FILES_PER_COMMIT = 100  # the Hub's recommended largest commit; bigger ones risk timing out


class PushError(RuntimeError):
    """A push that stopped part-way; its message names the repo and says that re-running resumes it."""


def check_can_push(repo_id: str) -> None:
    """Fail before any work when no token is available, instead of after hours of captioning."""
    if not get_token():
        raise ConfigError(f"--push_to_hub {repo_id} needs a Hub token: set HF_TOKEN or run `hf auth login`")


def check_chunk_files(cfg, tasks: list) -> None:
    """Before any work: a run whose chunks would overflow one Hub folder is refused if it is to be pushed, and
    warned about (once per launch) otherwise; a fallback task (rows unknown) cannot be checked."""
    rows = [task.rows for task in tasks]
    problem = None not in rows and chunk_files_problem(rows, cfg.run.rows_per_chunk, cfg.run.batch_size)
    if problem and cfg.publish.push_to_hub:
        raise ConfigError(problem)
    if problem and is_main_process():
        print(f"warning: {problem} (the output could not be pushed as it is)", file=sys.stderr)


def push_output(output_dir: Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                final: bool = True, files_per_commit: int = FILES_PER_COMMIT,
                skip: Collection[str] = ()) -> list[str]:
    """Upload the finished chunks of `output_dir` to the dataset repo `repo_id` (created if missing) on branch
    `revision` (created if missing; default main), `files_per_commit` files at most per commit. With `final`,
    also the config, stats, plots and gallery, then README.md in a commit of its own; without it (pushing
    chunks during a run), the data only. Paths in `skip` (ones an earlier push of this run sent) are not even
    read: the client hashes every file it is given, which repeated at each push of a long run would re-read
    the whole output again and again. Returns the paths pushed (sent, or found on the Hub already)."""
    output_dir = Path(output_dir)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
        patterns = PUSHED_DATA + PUSHED_FINAL if final else PUSHED_DATA
        pushed = _commit(api, output_dir, patterns, repo_id, revision,
                         "Add data files" if final else "Add finished chunks", files_per_commit, skip)
        if final:
            pushed += _commit(api, output_dir, (CARD,), repo_id, revision, "Update dataset card", files_per_commit,
                              skip)
    except Exception as err:
        raise PushError(f"pushing {output_dir} to the Hub dataset {repo_id}@{revision or 'main'} failed: "
                        f"{_reason(err)} -- re-run the same command to resume: files already on the Hub are not "
                        "sent again.") from err
    return pushed


def _commit(api: HfApi, output_dir: Path, patterns: tuple[str, ...], repo_id: str, revision: str | None,
            message: str, files_per_commit: int, skip: Collection[str]) -> list[str]:
    """The files matching `patterns` but not in `skip`, in commits of at most `files_per_commit` files; files
    the Hub already has are left out by the client (a commit left with nothing to change is skipped)."""
    paths = sorted({path.relative_to(output_dir).as_posix()
                    for pattern in patterns for path in output_dir.glob(pattern) if path.is_file()} - set(skip))
    batches = [paths[start:start + files_per_commit] for start in range(0, len(paths), files_per_commit)]
    for number, batch in enumerate(batches, 1):
        part = f" ({number}/{len(batches)})" if len(batches) > 1 else ""
        size_mb = sum((output_dir / path).stat().st_size for path in batch) / 2**20
        log.info("pushing %d files (%.1f MB: %s) to %s@%s%s; files the Hub already has are skipped",
                 len(batch), size_mb, _summary(batch), repo_id, revision or "main", part)
        info = api.create_commit(repo_id, [CommitOperationAdd(path, output_dir / path) for path in batch],
                                 commit_message=message + part, repo_type="dataset", revision=revision)
        log.info("%s@%s is at commit %s", repo_id, revision or "main", info.oid)
    return paths


def _summary(paths: list[str]) -> str:
    """'3 in data/, build_config.yaml': what a commit holds, short enough for one log line."""
    counts = Counter(path.split("/")[0] + "/" if "/" in path else path for path in paths)
    return ", ".join(f"{count} in {name}" if name.endswith("/") else name for name, count in counts.items())


def _reason(err: BaseException) -> str:
    """The error and what caused it ('Error while uploading X' says what, its cause says why), on one line."""
    causes = [err]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    messages = dict.fromkeys(" ".join(str(cause).split()) or type(cause).__name__ for cause in causes)
    return " <- ".join(messages)  # a library re-raising with the same words says it once
