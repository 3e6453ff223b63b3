"""IMDb reviews from the hub, a local file or an aclImdb folder -> DatasetDict(train, validation[, test]).

The seed's split: train shuffled with seed 42, then train_test_split(test_size=0.1, seed=42).
"""
from __future__ import annotations

import codecs
import logging
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Value, load_dataset

from .hub import hub_reachable, looks_like_hub_id

log = logging.getLogger(__name__)

SPLIT_SEED = 42  # the seed's shuffle and split; fixed so every run is scored on the same validation rows
HUB_DATASETS = {"imdb": "stanfordnlp/imdb", "stanfordnlp/imdb": "stanfordnlp/imdb"}
FILE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}


class DataError(ValueError):
    """A data source that cannot be used; the message says what was expected, found, and what to do."""


LOCAL_HINT = "Point --data at a local file, e.g. --data ../shared/data/imdb/train.parquet"


# ---------------------------------------------------------------- reading sources
def read_source(source: str, require_labels: bool = True) -> DatasetDict:
    """Read `source` as it is: hub 'imdb' -> train/test/unsupervised; a file -> train; aclImdb -> its splits."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_aclimdb(path, require_labels)
    if path.is_file():
        return DatasetDict(train=_read_file(path, require_labels))
    if source in HUB_DATASETS or (looks_like_hub_id(source) and not Path(source).suffix):
        if source not in HUB_DATASETS and not hub_reachable():
            raise DataError(f"Data source {source!r} is not a local file or folder, and the hub is unreachable to "
                            f"look it up as a dataset id. {LOCAL_HINT}")
        return _read_hub(HUB_DATASETS.get(source, source))
    raise DataError(f"Data source {source!r} not found: expected 'imdb' (the hub), a .parquet/.csv/.jsonl file "
                    f"with columns text,label, or an aclImdb folder (train/pos, train/neg, ...). {LOCAL_HINT}")


def _read_hub(name: str) -> DatasetDict:
    if not hub_reachable():
        raise DataError(f"Cannot load {name!r}: the Hugging Face hub is unreachable (offline, or HF_HUB_OFFLINE=1). "
                        f"{LOCAL_HINT} (or an aclImdb folder).")
    try:
        raw = load_dataset(name)
    except (ConnectionError, OSError, ValueError) as e:
        raise DataError(f"Cannot load {name!r} from the hub: {e}. {LOCAL_HINT}") from e
    return DatasetDict({k: _check(v, f"{name}[{k}]", require_labels=k != "unsupervised") for k, v in raw.items()})


def _read_file(path: Path, require_labels: bool) -> Dataset:
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None and path.suffix.lower() == ".txt":  # one review per line, unlabelled (transfer sets)
        return _from_lines(path)
    if fmt is None:
        raise DataError(f"Cannot read {path}: expected a .parquet, .csv, .tsv, .jsonl or .json file, found "
                        f"{path.suffix or 'no extension'!r}. Convert it to one of these with columns text,label.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty: expected rows with columns text,label.")
    if fmt in ("csv", "json"):
        _check_utf8(path)  # pyarrow's JSON reader keeps invalid bytes and fails later, far from the file's name
    kwargs = {"keep_default_na": False} if fmt == "csv" else {}  # a review reading "NA" or "null" is text
    if path.suffix.lower() == ".tsv":
        kwargs["delimiter"] = "\t"
    try:
        ds = load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:  # arrow/pandas raise many types on malformed files
        if "corresponds to no data" in str(e) or _parquet_rows(path) == 0:  # a header, or a zero-row parquet
            raise DataError(f"{path} has no rows: expected labelled reviews with columns text,label.") from e
        cause = e.__cause__ or e  # datasets wraps the reader's own error in a vague DatasetGenerationError
        raise DataError(f"Cannot read {path} as {fmt}: {type(cause).__name__}: {str(cause)[:300]}. "
                        "Expected a well-formed file with columns text,label (UTF-8).") from e
    return _check(ds, str(path), require_labels)


def _check_utf8(path: Path, chunk_bytes: int = 1 << 20) -> None:
    """Refuse a text file that is not UTF-8, naming the line of the first bad byte."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 1
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = offset + e.start
                line = lines + chunk[:e.start].count(b"\n")
                raise DataError(f"{path} is not valid UTF-8: byte 0x{e.object[e.start]:02x} at offset {bad} (line "
                                f"{line}). Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).") from e
            offset, lines = offset + len(chunk), lines + chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8: it ends inside a multi-byte character. Save it as UTF-8.") from e


def _parquet_rows(path: Path) -> int | None:
    if path.suffix.lower() != ".parquet":
        return None
    try:
        import pyarrow.parquet as pq

        return pq.read_metadata(path).num_rows
    except Exception:  # not a parquet file at all: reported by the caller
        return None


def _from_lines(path: Path) -> Dataset:
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _check(Dataset.from_dict({"text": lines}), str(path), require_labels=False)


def _read_aclimdb(root: Path, require_labels: bool) -> DatasetDict:
    """The original release: <root>/{train,test}/{pos,neg}/*.txt (and train/unsup)."""
    splits = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, sub in ((0, "neg"), (1, "pos")):
            for f in sorted((root / split / sub).glob("*.txt"), key=_file_order):
                texts.append(f.read_bytes().decode("utf-8", errors="replace"))
                labels.append(label)
        if texts:
            splits[split] = _check(Dataset.from_dict({"text": texts, "label": labels}), f"{root}/{split}")
    unsup = sorted((root / "train" / "unsup").glob("*.txt"), key=_file_order)
    if unsup:
        splits["unsupervised"] = Dataset.from_dict({"text": [f.read_bytes().decode("utf-8", errors="replace") for f in unsup]})
    if "train" not in splits:
        raise DataError(f"{root} is a folder but not an aclImdb layout: expected text files under train/pos and "
                        f"train/neg (and test/pos, test/neg); found {sorted(p.name for p in root.iterdir())[:10]}.")
    return DatasetDict(splits)


def _file_order(path: Path):
    stem = path.stem.split("_")[0]  # aclImdb names files <id>_<rating>.txt
    return (int(stem), path.name) if stem.isdigit() else (10**12, path.name)


def _check(ds: Dataset, where: str, require_labels: bool = True) -> Dataset:
    """Keep text (and label) columns; refuse missing columns, bad labels and empty data with a clear message."""
    cols = ds.column_names
    if "text" not in cols:
        raise DataError(f"{where}: expected a 'text' column (and 'label' with 0 = negative, 1 = positive); "
                        f"found columns {cols}. Rename the review column to 'text'.")
    if len(ds) == 0:
        raise DataError(f"{where} has no rows: expected labelled reviews with columns text,label.")
    if not require_labels:
        return ds.select_columns(["text"])
    if "label" not in cols:
        raise DataError(f"{where}: expected a 'label' column (0 = negative, 1 = positive); found columns {cols}.")
    ds = ds.select_columns(["text", "label"])
    labels = ds["label"]
    bad = sorted({repr(v) for v in labels if v not in (0, 1) or isinstance(v, float) and v != int(v)})[:5]
    if bad:
        raise DataError(f"{where}: labels must be 0 (negative) or 1 (positive); found {', '.join(bad)}. "
                        "Map your labels to 0/1 first.")
    if any(t is None for t in ds["text"]):
        raise DataError(f"{where}: some rows have no text (null); drop them first.")
    if not isinstance(ds.features["label"], ClassLabel) and ds.features["label"] != Value("int64"):
        ds = ds.cast_column("label", Value("int64"))
    return ds


# ---------------------------------------------------------------- the seed's splits
def load_splits(data: str, test_data: str | None = None, max_train_samples: int | None = None,
                max_eval_samples: int | None = None) -> DatasetDict:
    """train/validation from `data` (seed-42 shuffle, 90/10), plus test from `test_data` or `data`'s test split."""
    raw = read_source(data)
    train, validation = seed_split(raw["train"])
    splits = {"train": _head(train, max_train_samples), "validation": _head(validation, max_eval_samples)}
    test = read_source(test_data)["train"] if test_data else raw.get("test")
    if test is not None:
        splits["test"] = _head(test, max_eval_samples)
    return DatasetDict(splits)


def seed_split(train: Dataset, seed: int = SPLIT_SEED) -> tuple[Dataset, Dataset]:
    parts = train.shuffle(seed=seed).train_test_split(test_size=0.1, seed=seed)
    return parts["train"], parts["test"]


def load_eval_rows(data: str, max_samples: int | None = None) -> Dataset:
    """Rows to score: every row of a file; the test split of 'imdb' or an aclImdb folder."""
    raw = read_source(data)
    ds = raw["train"] if Path(data).expanduser().is_file() else raw.get("test", raw["train"])
    return _head(ds, max_samples)


def load_transfer_texts(spec: str, data: str, used_train: int | None, limit: int | None) -> list[str]:
    """Unlabelled reviews for the KD-only transfer set.

    'rest': training rows (seed split) after the first `used_train` labelled ones, so never validation rows;
    'imdb:unsupervised': the hub's 50,000 unlabelled reviews; anything else: a file or folder read as text.
    """
    if spec == "rest":
        train, _ = seed_split(read_source(data)["train"])
        start = used_train or len(train)
        if start >= len(train):
            raise DataError(f"transfer_data='rest' needs training rows beyond the {start} labelled ones, "
                            f"but the training split has only {len(train)}. Lower --max_train_samples.")
        texts = train.select(range(start, len(train)))["text"]
    elif spec in ("imdb:unsupervised", "unsupervised"):
        raw = read_source("imdb" if spec == "imdb:unsupervised" else data, require_labels=False)
        if "unsupervised" not in raw:
            raise DataError(f"{data!r} has no unsupervised split; use transfer_data='rest' or a file.")
        texts = raw["unsupervised"]["text"]
    else:
        raw = read_source(spec, require_labels=False)
        texts = raw.get("unsupervised", raw["train"])["text"]
    return list(texts[:limit] if limit else texts)


def _head(ds: Dataset, n: int | None) -> Dataset:
    return ds.select(range(min(n, len(ds)))) if n else ds
