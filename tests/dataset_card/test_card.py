"""The card of a real tiny build: YAML that round-trips and that `load_dataset` follows, and a body whose
numbers match the parquet."""

import hashlib
import re
from collections import Counter

import datasets
import pytest
import yaml
from datasets.data_files import DataFilesDict, get_data_patterns
from huggingface_hub import DatasetCard
from PIL import Image

from builder.stats import error_reason
from dataset_card.card import captioner_used, markdown_text, write_card
from tests.dataset_card.conftest import LOOPBACK_GALLERY, run_inputs, url_row, write_output
from dataset_card.metadata import size_category
from map_fns.blocklist import shared_blocklist
from map_fns.captioners import family_of

PLOTS = ("caption_words", "first_ranker", "second_ranker")


@pytest.fixture(scope="module")
def card(built):
    """The card write_card makes of the build (over the one the run wrote)."""
    write_card(built.path, built.chunks, built.inputs, built.stats)
    return DatasetCard.load(built.path / "README.md")


def section(card: DatasetCard, title: str) -> str:
    return card.text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the markdown table rows in `text`, header and rule left out (cells split on unescaped |)."""
    rows = [re.split(r"(?<!\\)\|", line.strip()[1:-1]) for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def test_the_run_itself_wrote_the_full_card(built):
    card = DatasetCard.load(built.path / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.pretty_name == "Tiny sample captions"
    assert "## Statistics" in card.text and (built.path / "plots" / "caption_words.png").is_file()


def test_yaml_round_trips_with_the_fields_the_hub_and_load_dataset_read(card, built):
    data = card.data
    assert data.license == "cc-by-4.0"
    assert data.pretty_name == "Tiny sample captions"
    assert data.task_categories == ["image-to-text"]
    assert data.size_categories == ["n<1K"]
    assert data.get("configs") is None  # see test_the_file_names_alone_make_every_chunk_the_train_split
    assert data.get("source_datasets") is None  # the bundled sample is no Hub dataset
    parquet_features = datasets.Features.from_arrow_schema(built.table().schema)
    assert data.dataset_info["features"] == parquet_features._to_yaml_list()
    assert datasets.Features._from_yaml_list(data.dataset_info["features"]) == parquet_features


def test_the_source_is_named_by_the_run_and_the_bundled_sample_by_its_file_name(card, url_output):
    assert "8 source rows from `sample.parquet`, re-captioned" in card.text  # no path of the building machine
    write_card(url_output.path, url_output.chunks, url_output.inputs, url_output.stats)
    linked = "[`someone/some-dataset`](https://huggingface.co/datasets/someone/some-dataset)"
    assert f"5 source rows from {linked}, re-captioned" in (url_output.path / "README.md").read_text()


def test_the_file_names_alone_make_every_chunk_the_train_split(card, built):
    """What the Hub and `datasets` do without `configs`: split by file name, over everything in the folder."""
    patterns = get_data_patterns(built.path.as_posix())
    found = DataFilesDict.from_patterns(patterns, base_path=built.path.as_posix())
    assert list(found) == ["train"]
    assert sorted(found["train"]) == [path.as_posix() for path in sorted(built.path.glob("data/*.parquet"))]
    assert any(built.path.glob("plots/*.png")) and any(built.path.glob("tasks/done/*.json"))  # there, and left out


def test_load_dataset_still_reads_the_output(card, built, tmp_path):
    loaded = datasets.load_dataset(str(built.path), split="train", cache_dir=str(tmp_path))
    assert loaded.num_rows == built.table().num_rows == 8
    assert loaded.features == datasets.Features.from_arrow_schema(built.table().schema)
    assert loaded[0]["image"].size[0] > 0  # the Image feature from the card's dataset_info decodes


def test_status_counts_and_ok_rate_match_the_parquet(card, built):
    statuses = Counter(built.table(["status"])["status"].to_pylist())
    stats = section(card, "Statistics")
    assert f"rows: **{sum(statuses.values())}**, captioned (`ok`): **{statuses['ok']}**" in stats
    shown = {status.strip("`"): int(count) for status, count, _ in table_rows(stats.split("\n\n**")[0])}
    assert shown == dict(statuses)
    assert f"({statuses['ok'] / sum(statuses.values()):.1%})" in stats
    throughput = built.stats["rows"] / built.stats["worker_seconds"]
    assert f"throughput: {throughput:.2f} rows per worker-second ({built.stats['worker_seconds']:.1f} " in stats


def test_distributions_match_the_parquet_and_their_plots_are_linked_pngs(card, built):
    ok = [row for row in built.table(["status", "top_caption", "all_similarities"]).to_pylist()
          if row["status"] == "ok"]
    words = [len(row["top_caption"].split()) for row in ok]
    firsts = [row["all_similarities"][0] for row in ok]
    stats = section(card, "Statistics")
    median, mean = sorted(words)[len(words) // 2], sum(words) / len(words)  # median: the bin holding the middle row
    assert (f"**Caption length in words** ({len(ok)} ok rows): min {min(words):.4g}, median {median:.4g}, "
            f"mean {mean:.4g}, max {max(words):.4g}\n") in stats
    assert f"({len(ok)} ok rows): min {min(firsts):.4f}" in stats and f"max {max(firsts):.4f}" in stats
    for name in PLOTS:
        assert f"](plots/{name}.png)" in stats
        with Image.open(built.path / "plots" / f"{name}.png") as png:
            assert png.format == "PNG" and png.size[0] > 100
            png.verify()


def test_examples_are_real_rows_alt_text_beside_their_caption(card, built):
    ok = [row for row in built.table(["status", "TEXT", "top_caption", "all_similarities"]).to_pylist()
          if row["status"] == "ok"]
    shown = table_rows(section(card, "Examples"))
    assert len(shown) == built.config["publish"]["card_examples"] == 3
    real = {(markdown_text(row["TEXT"]), markdown_text(row["top_caption"])): row for row in ok}
    assert all((text, caption) in real for text, caption, _, _ in shown)
    assert (shown[0][0], shown[-1][0]) == (markdown_text(ok[0]["TEXT"]), markdown_text(ok[-1]["TEXT"]))  # spread


def test_method_names_models_recipe_seed_and_the_full_config(card, built):
    method = section(card, "Method")
    for role, key in (("captioner", ("caption", "captioner")), ("first ranker", ("rank", "ranker")),
                      ("second ranker", ("rerank", "reranker")), ("repairer", ("repair", "repairer"))):
        assert f"| {role} | `{built.config[key[0]][key[1]]}` | — | not recorded |" in method  # local tiny models
    assert "| `top_p` | `0.2427084604681384` |" in method
    assert "| `caption_prompt` | `'a picture of '` |" in method  # auto, resolved to the family's own
    assert built.config["caption"]["caption_prompt"] == "auto"
    candidates = built.config["caption"]["num_candidates"]
    assert (f"was made: a BLIP\ncaptioner sampled {candidates}\ncandidate captions per image (after the prompt "
            "`'a picture of '`), a CLIP model") in card.text
    assert f"| `resize_min_side` | `{built.config['fetch']['resize_min_side']}` |" in method  # shapes model inputs
    assert f"| `precision` | `{built.config['run']['precision']!r}` |" in method
    assert f"the seed (`{built.config['caption']['seed']}`)" in method
    block = section(card, "Configuration").split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert yaml.safe_load(block) == built.config
    assert "--preset tiny" in card.text  # the noise warning


def test_schema_lists_every_column_with_its_type(card, built):
    shown = {column.strip("`"): kind for column, kind, _ in table_rows(section(card, "Schema"))}
    assert list(shown) == built.table().schema.names
    assert shown["all_similarities"] == "list<float64>" and shown["image"] == "image"


def test_error_reasons_counted_and_untrusted_text_inert(url_output):
    write_card(url_output.path, url_output.chunks, url_output.inputs, url_output.stats)
    card = DatasetCard.load(url_output.path / "README.md")
    assert card.data.source_datasets == ["someone/some-dataset"]
    table = url_output.table(["status", "error"]).to_pylist()
    reasons = Counter(f"{row['status']}: {error_reason(row['error'])}" for row in table if row["error"])
    errors_table = "| error |" + section(card, "Statistics").split("| error |")[1]
    shown = {reason: int(count) for reason, count in table_rows(errors_table)}
    assert shown == {markdown_text(reason): count for reason, count in reasons.items()}
    assert "<script>" not in card.text and "<img" not in card.text


def test_markdown_text_cannot_break_a_table_or_inject_html():
    cell = markdown_text("<b>x</b> | y\n*z* [a](b)")
    assert "<" not in cell and re.search(r"(?<!\\)\|", cell) is None and "\n" not in cell
    assert cell == r"&lt;b&gt;x&lt;/b&gt; \| y \*z\* \[a\](b)"


@pytest.mark.parametrize("rows, category", [(0, "n<1K"), (999, "n<1K"), (1_000, "1K<n<10K"),
                                            (600_000_000, "100M<n<1B"), (10**13, "n>1T")])
def test_size_category(rows, category):
    assert size_category(rows) == category


def test_an_output_without_rows_still_gets_a_card(built, tmp_path):
    stats = {"rows": 0, "statuses": {}, "errors": {}, "stage_seconds": {}, "reused_rows": 0, "worker_seconds": 0.0}
    write_card(tmp_path, [], built.inputs, stats)
    card = DatasetCard.load(tmp_path / "README.md")
    assert card.data.get("dataset_info") is None and "rows: **0**" in card.text


def test_a_captioner_whose_config_is_not_on_this_machine_is_not_named(tmp_path, tiny_models):
    """A card re-rendered where the captioner is neither a folder nor in the Hub cache cannot name its family, so
    it names no prompt either (`auto` is not a prompt)."""
    gone = {"caption": {"captioner": str(tmp_path / "gone"), "caption_prompt": "auto"}}
    uncached = {"caption": {"captioner": "org/never-downloaded", "caption_prompt": "auto"}}
    assert captioner_used(gone) == captioner_used(uncached) == (None, "auto")
    here = {"caption": {"captioner": tiny_models.captioner, "caption_prompt": "auto"}}
    assert captioner_used(here) == (family_of("blip"), "a picture of ")


def test_the_card_says_what_was_kept_out_which_lists_and_which_filters(tmp_path, image_server):
    listed = tmp_path / "hashes.txt"
    listed.write_text("# two entries, one twice\nhttps://example.invalid/x.jpg\n" + "ab" * 16 + "\n" + "AB" * 16 + "\n")
    rows = [url_row(image_server.url("/img/jpeg_rgb?kept-in"), "kept"),
            url_row("https://example.invalid/x.jpg", "listed", "blocked_by_list", "URL listed in hashes.txt"),
            url_row("https://example.invalid/y.jpg", "over", "filtered", "punsafe 0.91 fails filter punsafe<=0.5"),
            url_row("https://example.invalid/z.jpg", "over too", "filtered", "punsafe 0.7 fails filter punsafe<=0.5")]
    output = write_output(tmp_path / "out", rows, *LOOPBACK_GALLERY, "--blocklist", str(listed), "--max_punsafe",
                          "0.5", "--filter", "WIDTH>=64")
    write_card(output.path, output.chunks, output.inputs, output.stats)
    kept_out = section(DatasetCard.load(output.path / "README.md"), "What was kept out")
    tables = kept_out.split("\n\n")
    statuses = {row[0]: row[1] for row in table_rows(next(t for t in tables if "| status |" in t))}
    assert statuses == {"`blocked_by_list`": "1", "`filtered`": "2", "`blocked`": "0", "`opted_out`": "0"}
    reasons = table_rows(next(t for t in tables if "| reason |" in t))
    assert reasons == [[markdown_text("filtered: punsafe <value> fails filter punsafe<=0.5"), "2"],
                       [markdown_text("blocked_by_list: URL listed in hashes.txt"), "1"]]
    checksum = hashlib.sha256(listed.read_bytes()).hexdigest()
    assert table_rows(next(t for t in tables if "| list |" in t)) == [["`hashes.txt`", "2", f"`{checksum}`"]]
    assert "`WIDTH>=64`, `punsafe<=0.5`." in kept_out

    listed.unlink()  # finished elsewhere, or the list moved: the card says so instead of failing the run
    shared_blocklist.cache_clear()  # another process: the lists this one read are not at hand
    again = run_inputs(output.path, "--blocklist", str(listed))
    assert again.blocklists == () and again.blocklists_unread == f"--blocklist {listed}: no such file"
    write_card(output.path, output.chunks, again, output.stats)
    assert "could not be read again when this card was made" in DatasetCard.load(output.path / "README.md").text
