"""Official GLUE metrics through the ``evaluate`` API, without the hub.

``evaluate.load("glue", task)`` downloads the metric script from the Hugging Face hub. This module
defines the same metric locally as an ``evaluate.Metric`` subclass, with the definitions of evaluate's
``glue`` module (same features, same formulas, same output names):

- accuracy             = mean(predictions == references)
- f1                   = sklearn.metrics.f1_score(references, predictions)          (positive class 1)
- matthews_correlation = sklearn.metrics.matthews_corrcoef(references, predictions)
- pearson              = scipy.stats.pearsonr(predictions, references)[0]
- spearmanr            = scipy.stats.spearmanr(predictions, references)[0]

cola -> matthews_correlation; stsb -> pearson, spearmanr; mrpc/qqp -> accuracy, f1; others -> accuracy.
As in evaluate's glue module, inputs are stored as int64 (float32 for stsb) before scoring.

Instances keep their inputs in memory (``keep_in_memory=True``): no cache file, no lock file and no
cache folder is written, and nothing touches the network.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from gnlorp.errors import UserError

# Metric config names accepted (evaluate's glue configs, minus hans) and the metrics each returns.
GLUE_METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}

_DESCRIPTION = "GLUE metric (official definitions of evaluate's glue module), computed locally without the hub."
_CITATION = """\
@inproceedings{wang2019glue,
  title={{GLUE}: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding},
  author={Wang, Alex and Singh, Amanpreet and Michael, Julian and Hill, Felix and Levy, Omer and Bowman, Samuel R.},
  booktitle={International Conference on Learning Representations},
  year={2019}
}
"""
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (floats for stsb).
    references: gold class ids (floats for stsb).
Returns: a dict with the metrics of the task (see GLUE_METRIC_NAMES).
"""


def _simple_accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float((preds == labels).mean())


def _acc_and_f1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": _simple_accuracy(preds, labels), "f1": float(f1_score(y_true=labels, y_pred=preds))}


def _pearson_and_spearman(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}


def _config_name(task_name: str) -> str:
    key = str(task_name).strip().lower().replace("-", "")
    if key not in GLUE_METRIC_NAMES:
        raise UserError(
            f"No GLUE metric for task {task_name!r}; use one of: {', '.join(GLUE_METRIC_NAMES)}."
        )
    return key


class GlueMetric(evaluate.Metric):
    """evaluate's ``glue`` metric, defined locally (``config_name`` = the GLUE task)."""

    def _info(self) -> evaluate.MetricInfo:
        if self.config_name not in GLUE_METRIC_NAMES:
            raise UserError(
                f"No GLUE metric for task {self.config_name!r}; use one of: {', '.join(GLUE_METRIC_NAMES)}."
            )
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value(dtype), "references": datasets.Value(dtype)}
            ),
            codebase_urls=[],
            reference_urls=[],
            format="numpy",
        )

    def _build_data_dir(self) -> str:
        # evaluate creates <HF_METRICS_CACHE>/<name>/<config> even when everything stays in memory.
        if self.keep_in_memory:
            return os.path.join(self._data_dir_root, self.name, self.config_name)
        return super()._build_data_dir()

    def _compute(self, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        if self.config_name == "cola":
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        if self.config_name == "stsb":
            return _pearson_and_spearman(predictions, references)
        if self.config_name in ("mrpc", "qqp"):
            return _acc_and_f1(predictions, references)
        return {"accuracy": _simple_accuracy(predictions, references)}


def glue_metric(task_name: str) -> evaluate.Metric:
    """A fresh in-memory ``evaluate.Metric`` for one GLUE task (use ``add_batch`` / ``compute``)."""
    return GlueMetric(config_name=_config_name(task_name), keep_in_memory=True)


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    return np.asarray(values)


def compute_glue_metrics(task_name: str, predictions: Any, labels: Any) -> dict[str, float]:
    """GLUE metrics of ``task_name`` as plain floats. ``predictions``: class ids (floats for stsb), as
    lists, numpy arrays or tensors; logits of shape (n, num_labels) are reduced with argmax."""
    config = _config_name(task_name)
    preds, refs = _as_array(predictions), _as_array(labels)
    if config == "stsb":
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
    elif preds.ndim == 2:
        preds = preds.argmax(axis=-1)
    if preds.ndim != 1 or refs.ndim != 1 or len(preds) != len(refs) or len(preds) == 0:
        raise ValueError(
            f"GLUE {config} metrics need two non-empty 1-D sequences of equal length, "
            f"got predictions of shape {preds.shape} and labels of shape {refs.shape}"
        )
    result = glue_metric(config).compute(predictions=preds, references=refs)
    return {k: float(v) for k, v in result.items()}
