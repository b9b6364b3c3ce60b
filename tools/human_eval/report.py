"""The LAION-COCO blog's table from the answers: mean rating and spread of human and machine captions and of
the captions believed human or machine, with and without the ratings 0-1, and how often each kind was taken
for human; and a plot of the two kinds' rating distributions. Only answers sent through a rater's link count."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never look for a display

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tools.human_eval.errors import HumanEvalError  # noqa: E402
from tools.human_eval.store import HUMAN, MACHINE, Answer, open_existing  # noqa: E402

RATINGS = range(6)
LOWEST_KEPT = 2  # the second half of the table leaves out ratings 0-1, as the blog did
GROUPS: tuple[tuple[str, Callable[[Answer], bool]], ...] = (
    ("human captions", lambda answer: answer.kind == HUMAN),
    ("machine captions", lambda answer: answer.kind == MACHINE),
    ("captions believed human", lambda answer: answer.guess == HUMAN),
    ("captions believed machine", lambda answer: answer.guess == MACHINE),
)


def read_answers(db: Path) -> tuple[list[Answer], int]:
    """The answers of invited raters, and how many answers an older version stored without a rater link."""
    store = open_existing(db)
    try:
        answers, unlinked = store.answers(), store.unlinked_answers()
    finally:
        store.close()
    if not answers:
        raise HumanEvalError("; ".join([f"{db} holds no answers from a rater's link yet", *_not_counted(unlinked)]))
    return answers, unlinked


def format_report(answers: list[Answer], unlinked: int = 0) -> str:
    """The table (markdown), then the taken-for-human shares, the answers per rater and what was not counted."""
    lines = ["| group | answers | mean rating | stdev |", "|---|---:|---:|---:|"]
    for suffix, kept in (("", lambda rating: True), (f", ratings {LOWEST_KEPT}-5", lambda r: r >= LOWEST_KEPT)):
        for name, belongs in GROUPS:
            ratings = [answer.rating for answer in answers if belongs(answer) and kept(answer.rating)]
            mean = f"{statistics.mean(ratings):.2f}" if ratings else "—"
            stdev = f"{statistics.stdev(ratings):.2f}" if len(ratings) >= 2 else "—"
            lines.append(f"| {name}{suffix} | {len(ratings)} | {mean} | {stdev} |")
    lines += ["", "stdev is the sample standard deviation (n - 1 in the denominator); — where under 2 answers.", ""]
    for kind in (MACHINE, HUMAN):
        guesses = [answer.guess for answer in answers if answer.kind == kind]
        taken = guesses.count(HUMAN)
        share = f"{100 * taken / len(guesses):.1f}%" if guesses else "—"
        lines.append(f"{kind} captions taken for human: {share} ({taken} of {len(guesses)})")
    per_rater = sorted(Counter(answer.rater for answer in answers).items())
    lines.append("answers per rater: " + ", ".join(f"{rater} {count}" for rater, count in per_rater))
    return "\n".join(lines + _not_counted(unlinked))


def _not_counted(unlinked: int) -> list[str]:
    """The line naming what the report leaves out, if anything."""
    return [f"not counted: {unlinked} answers an older version stored under typed rater names, without a link "
            "(anyone could have sent them)"] if unlinked else []


def plot_ratings(answers: list[Answer], path: Path) -> None:
    """Bars of how many answers gave each rating, human and machine captions side by side."""
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    try:
        for offset, kind, color in ((-0.2, HUMAN, "#4c72b0"), (0.2, MACHINE, "#dd8452")):
            ratings = Counter(answer.rating for answer in answers if answer.kind == kind)
            ax.bar([rating + offset for rating in RATINGS], [ratings[rating] for rating in RATINGS], width=0.4,
                   color=color, label=f"{kind} captions ({ratings.total()} answers)")
        ax.set(title="Ratings of human and machine captions", xlabel="rating", ylabel="answers",
               xticks=list(RATINGS))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # answers are whole
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
