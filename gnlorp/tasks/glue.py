"""GLUE tasks: read the classic ``glue_data`` TSV layout (or the ``nyu-mll/glue`` hub dataset),
tokenize, collate with dynamic padding and score with the official GLUE metrics.

Local layout (what the original ``download_glue_data.py`` writes)::

    <data_dir>/CoLA/{train,dev}.tsv      no header: source, label, original-label marker, sentence
    <data_dir>/SST-2/{train,dev}.tsv     sentence, label
    <data_dir>/MRPC/{train,dev}.tsv      Quality, #1 ID, #2 ID, #1 String, #2 String (UTF-8 BOM)
    <data_dir>/QQP/{train,dev}.tsv       id, qid1, qid2, question1, question2, is_duplicate
    <data_dir>/STS-B/{train,dev}.tsv     ... sentence1, sentence2, score (10 columns)
    <data_dir>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv   ... sentence1, sentence2, ..., gold_label
    <data_dir>/QNLI/{train,dev}.tsv      index, question, sentence, label
    <data_dir>/RTE/{train,dev}.tsv       index, sentence1, sentence2, label
    <data_dir>/WNLI/{train,dev}.tsv      index, sentence1, sentence2, label

Labels are mapped to the ``nyu-mll/glue`` ClassLabel ids, so a model trained on local files and one
trained on hub data see the same label ids. This module imports only the standard library at import
time; torch, ``datasets`` and the metrics (``evaluate``) are imported when first needed.
"""

from __future__ import annotations

import csv
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gnlorp.errors import UserError
from gnlorp.tasks import resolve_data_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")

HUB_DATASET = "nyu-mll/glue"
ENV_GLUE_DIR = "GNLORP_GLUE_DIR"

_NLI2 = {"entailment": 0, "not_entailment": 1}
_NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
_BINARY = {"0": 0, "1": 1}


@dataclass(frozen=True)
class _TaskSpec:
    name: str
    folder: str                        # folder inside glue_data
    text_fields: tuple[str, ...]       # hub feature names of the text inputs (the keys of raw rows)
    text_columns: tuple[str, ...]      # matching TSV header names (column indices for headerless CoLA)
    label_column: str                  # TSV header name of the label
    labels: dict[str, int] | None      # TSV label value -> hub ClassLabel id; None = regression (float)
    eval_files: dict[str, str]         # eval split name -> TSV file name
    metric_names: tuple[str, ...]
    main_metric: str
    headerless_columns: dict[str, int] | None = None  # CoLA: column name -> index, file has no header
    num_columns: int | None = None                    # CoLA: fixed column count

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(set(self.labels.values()))

    @property
    def splits(self) -> dict[str, str]:
        return {"train": "train.tsv", **self.eval_files}


_DEV = {"validation": "dev.tsv"}

_SPECS: dict[str, _TaskSpec] = {
    "cola": _TaskSpec(
        "cola", "CoLA", ("sentence",), ("sentence",), "label", _BINARY, _DEV,
        ("matthews_correlation",), "matthews_correlation",
        headerless_columns={"label": 1, "sentence": 3}, num_columns=4,
    ),
    "sst2": _TaskSpec("sst2", "SST-2", ("sentence",), ("sentence",), "label", _BINARY, _DEV, ("accuracy",), "accuracy"),
    "mrpc": _TaskSpec(
        "mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", _BINARY, _DEV,
        ("accuracy", "f1"), "f1",
    ),
    "qqp": _TaskSpec(
        "qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate", _BINARY, _DEV,
        ("accuracy", "f1"), "f1",
    ),
    "stsb": _TaskSpec(
        "stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None, _DEV,
        ("pearson", "spearmanr"), "pearson",
    ),
    "mnli": _TaskSpec(
        "mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label", _NLI3,
        {"validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv"},
        ("accuracy",), "accuracy",
    ),
    "qnli": _TaskSpec(
        "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label", _NLI2, _DEV,
        ("accuracy",), "accuracy",
    ),
    "rte": _TaskSpec(
        "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2, _DEV,
        ("accuracy",), "accuracy",
    ),
    "wnli": _TaskSpec(
        "wnli", "WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _BINARY, _DEV,
        ("accuracy",), "accuracy",
    ),
}
assert tuple(_SPECS) == GLUE_TASKS


@dataclass
class GlueData:
    """One GLUE task, tokenized. ``train`` and every ``eval_splits`` value are lists of examples
    ``{"input_ids", "attention_mask", ["token_type_ids"], "labels"}`` (plain Python lists/numbers)."""

    name: str
    num_labels: int
    is_regression: bool
    train: list[dict]
    eval_splits: dict[str, list[dict]]
    metric_names: tuple[str, ...]
    main_metric: str
    source: str
    tokenizer: Any = field(default=None, repr=False, compare=False)  # pads the batches (padding_tokenizer)

    def collate(self, features: list[dict]) -> dict[str, "torch.Tensor"]:
        """Pad a list of examples to the longest one in the list (not to max_length) and stack them, with
        transformers' DataCollatorWithPadding on the task's tokenizer (its pad id, pad token type and padding
        side); labels are float32 for a regression task (STS-B), int64 otherwise.
        Usable as ``DataLoader(..., collate_fn=data.collate)``."""
        import torch
        from transformers import DataCollatorWithPadding

        if not features:
            raise ValueError("collate() got an empty list of examples")
        batch = dict(DataCollatorWithPadding(self.tokenizer, return_tensors="pt")(features))
        if "labels" in batch:
            batch["labels"] = batch["labels"].to(torch.float32 if self.is_regression else torch.long)
        return batch

    def trivial_baseline(self) -> dict:
        """The best score a model that ignores its input can reach on each eval split: the best constant
        prediction for that split (for classification, the label whose constant prediction scores the
        highest main metric there, i.e. usually the split's majority class; for STS-B any constant, whose
        Pearson and Spearman correlations are undefined and reported as 0). A trained cell must clear it."""
        import numpy as np

        if self.is_regression:
            metrics = {split: {m: 0.0 for m in self.metric_names} for split in self.eval_splits}
            return {"kind": "a constant prediction", "metrics": metrics}
        metrics, predictions = {}, {}
        for split, rows in self.eval_splits.items():
            labels = np.array([ex["labels"] for ex in rows])
            scored = [(self.compute_metrics(np.full(len(labels), c), labels), c) for c in range(self.num_labels)]
            best, predictions[split] = max(scored, key=lambda mc: (mc[0][self.main_metric], -mc[1]))
            metrics[split] = best
        return {"kind": "the best constant prediction", "prediction": predictions, "metrics": metrics}

    def compute_metrics(self, predictions: Any, labels: Any) -> dict[str, float]:
        """Official GLUE metrics of this task. ``predictions`` are class ids (floats for stsb); logits of
        shape (n, num_labels) are also accepted and reduced with argmax."""
        from gnlorp.tasks.metrics import compute_glue_metrics

        return compute_glue_metrics(self.name, predictions, labels)


# ----------------------------------------------------------------------------------------------------
# task names and data_dir


def _spec(name: str) -> _TaskSpec:
    key = str(name).strip().lower().replace("-", "")
    if key not in _SPECS:
        raise UserError(
            f"Unknown GLUE task {name!r}; use one of: {', '.join(GLUE_TASKS)}."
        )
    return _SPECS[key]


def resolve_glue_dir(data_dir: str | None) -> str | None:
    """task.data_dir if given, else env var GNLORP_GLUE_DIR if set, else None (= use the hub)."""
    return resolve_data_dir(data_dir, ENV_GLUE_DIR)


def _check_data_dir(data_dir: str) -> None:
    hint = "pass task.data_dir=/path/to/glue_data (or set GNLORP_GLUE_DIR) pointing to a classic glue_data folder"
    if not os.path.exists(data_dir):
        raise UserError(f"GLUE data_dir {data_dir} does not exist; {hint}, or leave both unset to use the hub.")
    if not os.path.isdir(data_dir):
        raise UserError(f"GLUE data_dir {data_dir} is not a folder; {hint}.")
    if not os.access(data_dir, os.R_OK | os.X_OK):
        raise UserError(f"GLUE data_dir {data_dir} is not readable; fix its permissions or {hint}.")


def _task_file(spec: _TaskSpec, split: str, data_dir: str) -> str:
    if split not in spec.splits:
        raise UserError(
            f"GLUE task {spec.name} has no split {split!r}; use one of: {', '.join(spec.splits)}."
        )
    _check_data_dir(data_dir)
    folder = os.path.join(data_dir, spec.folder)
    if not os.path.isdir(folder):
        raise UserError(
            f"GLUE task folder {folder} is missing; put the {spec.folder} files of the classic glue_data "
            f"layout there, or leave task.data_dir and GNLORP_GLUE_DIR unset to load {spec.name} from the hub."
        )
    path = os.path.join(folder, spec.splits[split])
    if not os.access(folder, os.X_OK):  # its files cannot even be looked at: not "missing"
        raise UserError(f"GLUE task folder {folder} is not readable (permission denied); fix its permissions "
                        f"(chmod a+rx) or point task.data_dir at a readable glue_data folder.")
    if not os.path.isfile(path):
        raise UserError(
            f"GLUE file {path} ({spec.name} {split} split) is missing; use a complete glue_data folder, "
            f"or leave task.data_dir and GNLORP_GLUE_DIR unset to load {spec.name} from the hub"
            + (" (or set max_train_samples=0 to evaluate without a train split)." if split == "train" else ".")
        )
    return path


def _check_hub_copy_offline(spec: _TaskSpec) -> None:
    """Offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE), with nothing GLUE-like in either Hugging Face cache the hub
    load cannot work: say so before the tokenizer and model are loaded. Unsure means no error."""
    try:
        from datasets import config
        from huggingface_hub import constants

        if not config.HF_HUB_OFFLINE:  # the flag datasets goes by
            return
        caches = [str(config.HF_DATASETS_CACHE), str(constants.HF_HUB_CACHE)]
    except Exception:  # noqa: BLE001
        return
    for cache in caches:
        try:
            if any("glue" in entry.lower() for entry in os.listdir(cache)):
                return
        except OSError:
            continue
    raise UserError(
        f"GLUE task {spec.name} is not available offline: HF_DATASETS_OFFLINE (or HF_HUB_OFFLINE) is set and no copy "
        f"of {HUB_DATASET} is in {' or '.join(caches)}; pass task.data_dir=/path/to/glue_data or set {ENV_GLUE_DIR} "
        f"to a local classic glue_data folder."
    )


def check_glue_files(name: str, data_dir: str | None, train: bool = True) -> None:
    """UserError unless every TSV ``load_glue`` will read exists (only when a local folder is in use; nothing
    is parsed). Lets the runner fail fast on a bad data_dir, before loading a tokenizer and a model."""
    spec = _spec(name)
    root = resolve_glue_dir(data_dir)
    if root is None:
        _check_hub_copy_offline(spec)
        return
    glue_task_files(name, root, train)


def glue_task_files(name: str, root: str, train: bool = True) -> list[Path]:
    """The TSVs a run of task `name` reads from the local folder `root` (UserError if one is missing)."""
    spec = _spec(name)
    _check_data_dir(root)
    return [Path(_task_file(spec, split, root)) for split in (*(("train",) if train else ()), *spec.eval_files)]


# ----------------------------------------------------------------------------------------------------
# reading TSVs


STSB_RANGE = (0.0, 5.0)  # the STS-B similarity scale (Cer et al., 2017)


def _parse_label(spec: _TaskSpec, value: str, path: str, line: int, column: str) -> int | float:
    text = value.strip()
    if spec.labels is None:
        try:
            score = float(text)
        except ValueError:
            score = math.nan
        if not math.isfinite(score) or not STSB_RANGE[0] <= score <= STSB_RANGE[1]:
            raise UserError(
                f"{path}, line {line}: {column} {value!r} is not a number from {STSB_RANGE[0]} to {STSB_RANGE[1]}; "
                f"STS-B scores are similarities on that scale, so fix or remove this row."
            )
        return score
    if text not in spec.labels:
        raise UserError(
            f"{path}, line {line}: label {value!r} in column {column!r} is not one of "
            f"{', '.join(spec.labels)}; fix or remove this row (or check that this is the {spec.folder} file)."
        )
    return spec.labels[text]


def read_glue_tsv(name: str, split: str, data_dir: str) -> list[dict]:
    """Raw rows of one split of a local glue_data folder, without tokenization.

    ``split`` is ``train``, ``validation`` (``validation_matched`` / ``validation_mismatched`` for mnli).
    Each row is ``{<hub text fields>: str, "label": int | float, "idx": int}`` with the hub's field names
    (e.g. mrpc ``sentence1``/``sentence2``, mnli ``premise``/``hypothesis``) and ClassLabel ids; ``idx``
    is the 0-based row index in the file. Raises UserError for every problem with the file.
    """
    spec = _spec(name)
    path = _task_file(spec, split, data_dir)
    rows: list[dict] = []
    try:
        # utf-8-sig drops the BOM of MRPC; quoting off because sentences contain bare quote characters.
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if spec.headerless_columns is not None:
                ncols = spec.num_columns
                index = spec.headerless_columns
            else:
                header = next(reader, None)
                while header == []:  # blank lines before the header
                    header = next(reader, None)
                if header is None:
                    raise UserError(
                        f"{path} is empty; it needs a header line and at least one row "
                        f"(re-create it from a complete glue_data folder)."
                    )
                header = [h.strip() for h in header]
                required = (*spec.text_columns, spec.label_column)
                missing = [c for c in required if c not in header]
                if missing:
                    raise UserError(
                        f"{path} has the header {header!r} but the {spec.name} file needs the tab-separated "
                        f"columns {', '.join(required)} (missing: {', '.join(missing)}); use the file from "
                        f"the classic glue_data layout."
                    )
                ncols = len(header)
                index = {c: header.index(c) for c in required}
            text_index = [
                (field_name, index[col]) for field_name, col in zip(
                    spec.text_fields,
                    spec.text_fields if spec.headerless_columns is not None else spec.text_columns,
                )
            ]
            label_index = index["label" if spec.headerless_columns is not None else spec.label_column]
            label_name = "label" if spec.headerless_columns is not None else spec.label_column
            for row in reader:
                if not row:  # blank line (e.g. a trailing empty line)
                    continue
                line = reader.line_num
                if len(row) != ncols:
                    raise UserError(
                        f"{path}, line {line}: expected {ncols} tab-separated columns but found {len(row)}; "
                        f"fix or remove this row (a stray tab or line break inside a sentence causes this)."
                    )
                example: dict[str, Any] = {fname: row[i] for fname, i in text_index}
                example["label"] = _parse_label(spec, row[label_index], path, line, label_name)
                example["idx"] = len(rows)
                rows.append(example)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start}); re-save it as UTF-8.") from e
    except csv.Error as e:
        raise UserError(f"{path} could not be parsed as TSV ({e}); re-create it from the classic glue_data layout.") from e
    except PermissionError as e:
        raise UserError(f"{path} is not readable ({e.strerror}); fix its permissions.") from e
    if not rows:
        raise UserError(
            f"{path} has no data rows (the {spec.name} {split} split is empty); use a complete glue_data file."
        )
    return rows


# ----------------------------------------------------------------------------------------------------
# hub


def _load_hub(spec: _TaskSpec) -> tuple[Any, dict[str, Any]]:
    """(train Dataset, {eval split: Dataset}) from nyu-mll/glue; any failure is a UserError."""
    try:
        import datasets

        dd = datasets.load_dataset(HUB_DATASET, spec.name)
    except Exception as e:  # offline, unreachable, missing cache, ...
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        raise UserError(
            f"GLUE task {spec.name} could not be loaded from the Hugging Face hub ({HUB_DATASET}: {reason}); "
            f"pass task.data_dir=/path/to/glue_data or set {ENV_GLUE_DIR} to a local classic glue_data folder."
        ) from e
    wanted = ["train", *spec.eval_files]
    missing = [s for s in wanted if s not in dd]
    if missing:
        raise UserError(
            f"The hub dataset {HUB_DATASET}/{spec.name} has no split(s) {', '.join(missing)}; "
            f"pass task.data_dir=/path/to/glue_data to use local files instead."
        )
    return dd["train"], {s: dd[s] for s in spec.eval_files}


def _hub_rows(spec: _TaskSpec, ds: Any, indices: list[int] | None) -> list[dict]:
    if indices is not None:
        ds = ds.select(indices)
    columns = {f: ds[f] for f in (*spec.text_fields, "label")}
    rows = []
    for i in range(len(ds)):
        row = {f: columns[f][i] for f in spec.text_fields}
        label = columns["label"][i]
        row["label"] = float(label) if spec.labels is None else int(label)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------
# subsetting and tokenization


def _train_indices(n: int, max_samples: int | None, seed: int) -> list[int] | None:
    """None = all rows in file order; otherwise the first ``max_samples`` of a seeded shuffle."""
    if max_samples is None:
        return None
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[:max_samples]


SELECTION_SEED = 0x5E1EC7  # one held-out set per task, whatever the run's seed, method or learning rate


def _split_selection(n: int, selection_samples: int) -> tuple[list[int], list[int]]:
    """(selection rows, remaining train rows) of a train split of n rows: the first `selection_samples` of a
    shuffle with a fixed seed, so every run of the task holds out the same rows; the rest keep file order."""
    order = list(range(n))
    random.Random(SELECTION_SEED).shuffle(order)
    held = sorted(order[:selection_samples])
    held_set = set(held)
    return held, [i for i in range(n) if i not in held_set]


def _held_out(spec: _TaskSpec, n: int, selection_samples: int) -> tuple[list[int], list[int]]:
    _check_limit("selection_samples", selection_samples, 0)
    if selection_samples and selection_samples >= n:
        raise UserError(f"task.selection_samples={selection_samples} would hold out all {n} rows of the {spec.name} "
                        f"train split; use fewer (e.g. a tenth: {n // 10}).")
    return _split_selection(n, selection_samples or 0)


def _eval_indices(n: int, max_samples: int | None) -> list[int] | None:
    return None if max_samples is None or max_samples >= n else list(range(max_samples))


def _check_limit(name: str, value: int | None, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}={value!r} is invalid; use an integer >= {minimum}, or null for all rows.")


def _tokenize(spec: _TaskSpec, rows: list[dict], tokenizer: Any, max_length: int) -> list[dict]:
    out: list[dict] = []
    chunk_size = 1000
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start:start + chunk_size]
        texts = [[r[f] for r in chunk] for f in spec.text_fields]
        enc = tokenizer(*texts, truncation=True, max_length=max_length, return_attention_mask=True)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        for i, row in enumerate(chunk):
            example = {k: list(enc[k][i]) for k in keys}
            example["labels"] = row["label"]
            out.append(example)
    return out


def load_glue(
    name: str,
    tokenizer: Any,
    data_dir: str | None = None,
    max_length: int = 128,
    *,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    selection_samples: int = 0,
) -> GlueData:
    """Load, subset and tokenize one GLUE task.

    Data come from ``resolve_glue_dir(data_dir)`` (task.data_dir, else $GNLORP_GLUE_DIR) when set, else
    from the hub (``nyu-mll/glue``). ``max_train_samples``: the first N rows after a shuffle seeded by
    ``seed`` (0 = no train split needed, e.g. for evaluation only; it is then not read at all);
    ``max_eval_samples``: the first N rows of every eval split. ``selection_samples``: rows held out of the
    train split (the same rows for every seed: _split_selection) before ``max_train_samples`` subsets the rest,
    scored as the eval split "selection" after the reported ones: for choosing settings, never reported.
    Pairs are tokenized as (sentence1, sentence2) with truncation to ``max_length``.
    """
    spec = _spec(name)
    _check_limit("max_train_samples", max_train_samples, 0)
    _check_limit("max_eval_samples", max_eval_samples, 1)
    _check_limit("max_length", max_length, 1)
    root = resolve_glue_dir(data_dir)
    train_idx: list[int] | None
    if root is not None:
        _check_data_dir(root)
        source = f"local:{os.path.abspath(root)}"
        eval_raw = {split: read_glue_tsv(spec.name, split, root) for split in spec.eval_files}
        train_raw = [] if max_train_samples == 0 and not selection_samples else read_glue_tsv(spec.name, "train", root)
        held, rest = _held_out(spec, len(train_raw), selection_samples)
        train_idx = _train_indices(len(rest), max_train_samples, seed)
        train_rows = [train_raw[rest[i]] for i in (range(len(rest)) if train_idx is None else train_idx)]
        eval_rows = {s: rows[:max_eval_samples] if max_eval_samples else rows for s, rows in eval_raw.items()}
        selection_rows = [train_raw[i] for i in held]
    else:
        source = f"hub:{HUB_DATASET}"
        train_ds, eval_ds = _load_hub(spec)
        held, rest = _held_out(spec, len(train_ds), selection_samples)
        train_idx = _train_indices(len(rest), max_train_samples, seed)
        train_rows = _hub_rows(spec, train_ds, rest if train_idx is None else [rest[i] for i in train_idx])
        eval_rows = {s: _hub_rows(spec, ds, _eval_indices(len(ds), max_eval_samples)) for s, ds in eval_ds.items()}
        if not all(eval_rows.values()):
            raise UserError(f"The hub dataset {HUB_DATASET}/{spec.name} has an empty eval split; pass task.data_dir instead.")
        selection_rows = _hub_rows(spec, train_ds, held) if held else []
    if selection_rows:
        eval_rows["selection"] = selection_rows

    return GlueData(
        name=spec.name,
        num_labels=spec.num_labels,
        is_regression=spec.labels is None,
        train=_tokenize(spec, train_rows, tokenizer, max_length),
        eval_splits={s: _tokenize(spec, rows, tokenizer, max_length) for s, rows in eval_rows.items()},
        metric_names=spec.metric_names,
        main_metric=spec.main_metric,
        source=source,
        tokenizer=padding_tokenizer(tokenizer),
    )


def padding_tokenizer(tokenizer: Any) -> Any:
    """`tokenizer` if it has a pad token; else a copy whose pad token is its end-of-sequence token (id 0
    without one either), as causal LMs' tokenizers (LLaMA, GPT-2) are padded: the caller's stays untouched."""
    if getattr(tokenizer, "pad_token_id", None) is not None:
        return tokenizer
    import copy

    padded = copy.deepcopy(tokenizer)
    padded.pad_token = padded.eos_token if padded.eos_token_id is not None else padded.convert_ids_to_tokens(0)
    return padded
