"""Data: every source gives the same rows and the seed's split; every bad input gets a clear message. Encoding."""
import time

import pandas as pd
import pytest
from datasets import Dataset

from conftest import make_reviews
from kdapp import hub
from kdapp.data import DataError, load_eval_rows, load_splits, load_transfer_texts, read_source, seed_split
from kdapp.encoding import clean_text, encode, tokenize_dataset


def reference_frame(n=60, seed=0):
    """Unique reviews (some with commas, quotes, HTML, unicode and a newline), negatives first, ids ascending:
    the order in which an aclImdb folder is read, so every format holds the same rows in the same order."""
    df = make_reviews(n, seed)
    df["text"] = [f"{t} review{i}" for i, t in enumerate(df["text"])]
    df.loc[0, "text"] = 'the plot, "awful" and boring review0'
    df.loc[1, "text"] = "great<br /><br />film, café review1"
    df.loc[2, "text"] = "bad acting\nand a dull story review2"
    df = df.sort_values(["label", "id"], kind="stable").reset_index(drop=True)
    return df[["id", "rating", "text", "label"]]


def write_aclimdb(root, train, test):
    for split, df in (("train", train), ("test", test)):
        for row in df.itertuples():
            folder = root / split / ("pos" if row.label else "neg")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{row.id}_{row.rating}.txt").write_text(row.text, encoding="utf-8")
    return root


def rows(ds):
    return list(zip(ds["text"], ds["label"]))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same 60 training rows (and 20 test rows) as parquet, CSV, JSON lines and an aclImdb folder."""
    tmp = tmp_path_factory.mktemp("sources")
    train, test = reference_frame(60), reference_frame(20, seed=1)
    test["id"] += 1000
    out = {"frame": train, "test_frame": test}
    train.to_parquet(out.setdefault("parquet", tmp / "train.parquet"))
    train.to_csv(out.setdefault("csv", tmp / "train.csv"), index=False)
    train.to_json(out.setdefault("jsonl", tmp / "train.jsonl"), orient="records", lines=True)
    test.to_csv(out.setdefault("test_csv", tmp / "test.csv"), index=False)
    out["aclimdb"] = write_aclimdb(tmp / "aclImdb", train, test)
    return out


# ---------------------------------------------------------------- formats and the split
def test_split_is_the_seeds(sources):
    by_hand = Dataset.from_pandas(sources["frame"], preserve_index=False).shuffle(seed=42)
    by_hand = by_hand.train_test_split(test_size=0.1, seed=42)
    splits = load_splits(str(sources["parquet"]))
    assert set(splits) == {"train", "validation"}
    assert rows(splits["train"]) == rows(by_hand["train"])
    assert rows(splits["validation"]) == rows(by_hand["test"])
    assert (len(splits["train"]), len(splits["validation"])) == (54, 6)
    assert splits["train"].column_names == ["text", "label"]  # id and rating dropped


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "aclimdb"])
def test_every_format_gives_the_same_rows(sources, fmt):
    reference = load_splits(str(sources["parquet"]))
    other = load_splits(str(sources[fmt]))
    for split in ("train", "validation"):
        assert rows(other[split]) == rows(reference[split])
    assert read_source(str(sources[fmt]))["train"]["text"] == list(sources["frame"]["text"])


def test_aclimdb_test_split_equals_a_separate_test_file(sources):
    folder = load_splits(str(sources["aclimdb"]))
    with_file = load_splits(str(sources["parquet"]), test_data=str(sources["test_csv"]))
    assert rows(folder["test"]) == rows(with_file["test"]) == list(zip(sources["test_frame"]["text"],
                                                                      sources["test_frame"]["label"]))


def test_aclimdb_files_are_read_in_numeric_id_order(tmp_path):
    for i in (10, 2, 1):
        (tmp_path / "train" / "neg").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "neg" / f"{i}_3.txt").write_text(f"review {i}")
    (tmp_path / "train" / "pos").mkdir()
    (tmp_path / "train" / "pos" / "0_9.txt").write_text("review pos")
    ds = read_source(str(tmp_path))["train"]
    assert rows(ds) == [("review 1", 0), ("review 2", 0), ("review 10", 0), ("review pos", 1)]


def test_max_samples_take_the_first_rows(sources):
    full = load_splits(str(sources["parquet"]), test_data=str(sources["test_csv"]))
    small = load_splits(str(sources["parquet"]), test_data=str(sources["test_csv"]), max_train_samples=10,
                        max_eval_samples=4)
    assert rows(small["train"]) == rows(full["train"])[:10]
    assert rows(small["validation"]) == rows(full["validation"])[:4]
    assert rows(small["test"]) == rows(full["test"])[:4]
    assert len(load_splits(str(sources["parquet"]), max_train_samples=10_000)["train"]) == 54


def test_evaluate_rows_are_every_row_of_a_file_or_the_test_split(sources):
    assert rows(load_eval_rows(str(sources["csv"]))) == list(zip(sources["frame"]["text"], sources["frame"]["label"]))
    assert len(load_eval_rows(str(sources["csv"]), max_samples=7)) == 7
    assert rows(load_eval_rows(str(sources["aclimdb"]))) == rows(load_splits(str(sources["aclimdb"]))["test"])


def test_float_and_bool_labels_are_accepted_as_ints(tmp_path):
    path = tmp_path / "f.parquet"
    pd.DataFrame({"text": ["a", "b"], "label": [1.0, 0.0]}).to_parquet(path)
    assert read_source(str(path))["train"]["label"] == [1, 0]


# ---------------------------------------------------------------- transfer set
def test_transfer_rest_never_includes_validation_rows(sources):
    data = str(sources["parquet"])
    splits = load_splits(data, max_train_samples=20)
    full_train, validation = seed_split(read_source(data)["train"])
    rest = load_transfer_texts("rest", data, used_train=20, limit=None)
    assert rest == full_train["text"][20:]
    assert not set(rest) & set(validation["text"])
    assert not set(rest) & set(splits["train"]["text"])  # nor the labelled rows
    assert load_transfer_texts("rest", data, used_train=20, limit=5) == rest[:5]
    with pytest.raises(DataError, match="max_train_samples"):
        load_transfer_texts("rest", data, used_train=None, limit=None)


def test_transfer_from_a_text_file(tmp_path, sources):
    path = tmp_path / "unlabelled.txt"
    path.write_text("first review\n\n  second one  \nthird\n")
    assert load_transfer_texts(str(path), str(sources["parquet"]), None, None) == ["first review", "second one", "third"]
    assert load_transfer_texts(str(path), str(sources["parquet"]), None, 2) == ["first review", "second one"]


# ---------------------------------------------------------------- bad inputs
def _frame_to(path, **cols):
    df = pd.DataFrame(cols)
    {".parquet": lambda: df.to_parquet(path), ".csv": lambda: df.to_csv(path, index=False),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True)}[path.suffix]()
    return str(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found.*parquet") as e:
        load_splits(str(tmp_path / "nope.parquet"))
    assert "--data" in str(e.value)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_wrong_columns(tmp_path, suffix):
    path = _frame_to(tmp_path / f"x{suffix}", review=["good", "bad"], sentiment=[1, 0])
    with pytest.raises(DataError, match=r"'text' column.*found columns \['review', 'sentiment'\]"):
        load_splits(path)
    path = _frame_to(tmp_path / f"y{suffix}", text=["good", "bad"], sentiment=[1, 0])
    with pytest.raises(DataError, match=r"'label' column"):
        load_splits(path)


@pytest.mark.parametrize("labels, shown", [([1, 10, 2, 0], "10"), (["pos", "neg", "pos", "neg"], "'pos'"),
                                           ([0, 1, -1, 1], "-1")])
def test_labels_not_0_1(tmp_path, labels, shown):
    path = _frame_to(tmp_path / "x.parquet", text=["a", "b", "c", "d"], label=labels)
    with pytest.raises(DataError, match="labels must be 0 .* or 1") as e:
        load_splits(path)
    assert shown in str(e.value) and "Map your labels" in str(e.value)


def test_null_text(tmp_path):
    path = _frame_to(tmp_path / "x.parquet", text=["a", None], label=[0, 1])
    with pytest.raises(DataError, match="no text"):
        load_splits(path)


@pytest.mark.parametrize("content, message", [("", "is empty"), ("text,label\n", "has no rows")])
def test_empty_file(tmp_path, content, message):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=f"{message}: expected .*text,label"):
        load_splits(str(path))


def test_empty_parquet(tmp_path):
    path = _frame_to(tmp_path / "x.parquet", text=pd.Series([], dtype=str), label=pd.Series([], dtype="int64"))
    with pytest.raises(DataError, match="no rows"):
        load_splits(path)


def test_unreadable_formats(tmp_path):
    xlsx = tmp_path / "reviews.xlsx"
    xlsx.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match=r"expected a \.parquet.*found '\.xlsx'"):
        load_splits(str(xlsx))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"this is not parquet at all" * 10)
    with pytest.raises(DataError, match="Cannot read .*broken.parquet as parquet"):
        load_splits(str(broken))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok", "label": 1}\n{"text": oops\n')
    with pytest.raises(DataError, match="Cannot read .*bad.jsonl as json: .*JSON parse error"):
        load_splits(str(bad_json))


def test_folder_that_is_not_aclimdb(tmp_path):
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "a.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="not an aclImdb layout.*train/pos"):
        load_splits(str(tmp_path / "reviews"))


def test_hub_imdb_offline_fails_fast_and_points_at_a_local_parquet():
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"unreachable.*--data .*\.parquet"):
        load_splits("imdb")
    assert time.perf_counter() - start < 5  # not the 23 s of hub retries


def test_hub_unreachable_without_offline_env_fails_fast(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    hub.hub_reachable.cache_clear()
    try:
        start = time.perf_counter()
        with pytest.raises(DataError, match="unreachable"):
            load_splits("imdb")
        assert time.perf_counter() - start < 10
    finally:
        hub.hub_reachable.cache_clear()


# ---------------------------------------------------------------- encoding
LONG = "great " + " ".join(["movie", "was", "the", "plot"] * 10) + " awful"


def _tok_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_head_truncation(tokenizer):
    words = _tok_ids(tokenizer, LONG)
    ids = encode(tokenizer, [LONG], max_length=16)[0]
    assert len(ids) == 16
    assert ids == [tokenizer.cls_token_id] + words[:14] + [tokenizer.sep_token_id]


def test_head_tail_keeps_first_and_last_tokens(tokenizer):
    words = _tok_ids(tokenizer, LONG)
    ids = encode(tokenizer, [LONG], max_length=16, truncation="head_tail", head_tokens=4)[0]
    assert len(ids) == 16
    assert ids == [tokenizer.cls_token_id] + words[:4] + words[-10:] + [tokenizer.sep_token_id]
    assert ids[-2] == tokenizer.convert_tokens_to_ids("awful") and ids[1] == tokenizer.convert_tokens_to_ids("great")
    head_only = encode(tokenizer, [LONG], max_length=16, truncation="head")[0]
    assert tokenizer.convert_tokens_to_ids("awful") not in head_only


def test_short_reviews_are_not_changed_by_truncation(tokenizer):
    text = "the movie was great"
    expected = tokenizer(text)["input_ids"]
    assert encode(tokenizer, [text], 32)[0] == expected
    assert encode(tokenizer, [text], 32, truncation="head_tail", head_tokens=3)[0] == expected


def test_html_line_breaks_are_removed(tokenizer):
    assert clean_text("great<br /><br />movie<BR>was<br/>good").split() == ["great", "movie", "was", "good"]
    assert "<" not in clean_text("a<br />b<BR/>c<br>d")
    assert encode(tokenizer, ["great<br /><br />movie"], 32) == encode(tokenizer, ["great movie"], 32)


def test_tokenized_dataset_has_no_token_type_ids_and_no_padding(tokenizer):
    ds = Dataset.from_dict({"text": ["great", "the movie was really awful", LONG], "label": [1, 0, 0]})
    out = tokenize_dataset(ds, tokenizer, max_length=16)
    assert sorted(out.column_names) == ["attention_mask", "idx", "input_ids", "label"]
    assert [len(x) for x in out["input_ids"]] == [3, 7, 16]  # padded later, per batch
    assert out["idx"] == [0, 1, 2] and out["label"] == [1, 0, 0]
    assert all(m == [1] * len(i) for m, i in zip(out["attention_mask"], out["input_ids"]))
