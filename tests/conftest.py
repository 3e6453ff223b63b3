"""Tiny models built from configs and synthetic reviews: the whole suite runs offline in minutes on 2 CPUs."""
import os

# env first: huggingface_hub and wandb read these at import time
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (AutoModelForSequenceClassification, BertConfig, BertTokenizerFast,  # noqa: E402
                          DistilBertConfig)

torch.set_num_threads(1)

POS = ["great", "good", "wonderful", "superb", "loved", "brilliant"]
NEG = ["awful", "bad", "terrible", "boring", "hated", "dull"]
FILLER = ["the", "movie", "was", "film", "plot", "acting", "and", "a", "it", "this", "story", "really"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + FILLER + POS + NEG


def make_reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """Balanced synthetic reviews: filler words plus one or two sentiment words (label 1 = positive)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 20))]
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
        rows.append({"id": i, "rating": 8 if label else 2, "label": label, "text": " ".join(words)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer(vocab_file):
    # transformers 5: BertTokenizerFast(vocab_file=...) silently ignores the file (5-token vocabulary);
    # from_pretrained on the folder reads it.
    tok = BertTokenizerFast.from_pretrained(str(vocab_file.parent), do_lower_case=True)
    assert len(tok) == len(VOCAB)
    return tok


def tiny_bert(layers: int = 2, seed: int = 0, hidden: int = 64):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=64, num_labels=2))


def tiny_distilbert(seed: int = 1, layers: int = 1):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(DistilBertConfig(
        vocab_size=len(VOCAB), dim=64, n_layers=layers, n_heads=2, hidden_dim=128, max_position_embeddings=64,
        num_labels=2))


@pytest.fixture
def tiny_teacher():
    return tiny_bert(layers=4)


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, tokenizer):
    """A saved 4-layer tiny BERT (untrained) with its tokenizer: a valid model folder."""
    path = tmp_path_factory.mktemp("models") / "tiny-teacher"
    tiny_bert(layers=4).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("models") / "tiny-distilbert"
    tiny_distilbert().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def reviews_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.parquet"
    make_reviews(240).to_parquet(path)
    return path


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """Run inside an empty folder so checkpoints/ and wandb/ land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, reviews_parquet):
    """(checkpoints root, {'teacher', 'kd', ...: run folder}): tiny finished runs for the app's tests, per module."""
    from app_fixtures import make_runs

    root = tmp_path_factory.mktemp("checkpoints")
    return root, make_runs(root, tokenizer, reviews_parquet, tiny_bert)
