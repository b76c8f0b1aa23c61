"""gnlorp.jobs.glue_job: what the runner trains on and how it scores (a random tiny BERT on real RTE rows)."""

import pytest
import torch

from conftest import GLUE_DIR, compose, needs_shared
from gnlorp.jobs import glue_job
from gnlorp.models import load_encoder_tokenizer
from gnlorp.tasks.glue import load_glue


def _job(*extra: str, eval_batch_size: int = 16):
    cfg = compose(["task=glue/stsb", "model=bert_tiny", f"task.data_dir={GLUE_DIR}", "task.max_train_samples=48",
                   "task.max_eval_samples=40", "task.selection_samples=30", *extra])
    torch.manual_seed(0)
    return cfg, glue_job(cfg, torch.device("cpu"), None, eval_batch_size=eval_batch_size)


@needs_shared
def test_group_by_length_hands_the_loop_each_train_rows_token_count():
    cfg, job = _job("train.group_by_length=true")
    data = load_glue("stsb", load_encoder_tokenizer(cfg.model), str(GLUE_DIR), max_train_samples=48,
                     max_eval_samples=40, selection_samples=30)
    assert job.data.lengths == [len(row["input_ids"]) for row in data.train] and len(set(job.data.lengths)) > 5
    assert _job()[1].data.lengths is None  # the default: plain shuffled batches


@needs_shared
def test_evaluation_in_length_sorted_batches_scores_as_one_row_at_a_time(monkeypatch):
    """Reference: every dev and selection row through the model alone (no padding at all). The
    predictions are compared, not the metrics: an untrained STS-B head predicts nearly one value, and a Pearson
    correlation of near-constant vectors turns rounding into visible differences."""
    from gnlorp.tasks.glue import GlueData

    seen = []
    scorer = GlueData.compute_metrics
    monkeypatch.setattr(GlueData, "compute_metrics", lambda self, p, y: seen.append((p, y)) or scorer(self, p, y))
    cfg, job = _job()
    data = load_glue("stsb", load_encoder_tokenizer(cfg.model), str(GLUE_DIR), max_train_samples=48,
                     max_eval_samples=40, selection_samples=30)
    scored = job.evaluate(job.model)
    assert list(scored) == list(data.eval_splits) == ["validation", "selection"] and len(seen) == 2
    with torch.no_grad():
        for (got_preds, got_labels), (split, rows) in zip(seen, data.eval_splits.items()):
            rows = sorted(rows, key=lambda row: len(row["input_ids"]), reverse=True)  # the job's order (a stable sort)
            preds = torch.stack([job.model(**{k: v for k, v in data.collate([row]).items() if k != "labels"}).logits
                                 .squeeze() for row in rows])
            labels = torch.tensor([r["labels"] for r in rows])
            assert torch.equal(torch.as_tensor(got_labels), labels), split
            torch.testing.assert_close(torch.as_tensor(got_preds), preds, rtol=0, atol=1e-5)
            assert scored[split] == data.compute_metrics(got_preds, got_labels)


def test_c4_evaluation_is_the_token_weighted_mean_loss_and_reports_its_progress(monkeypatch):
    """Reference: each block through the model alone under no_grad, its mean loss weighted by its 63 predicted
    tokens; with the report period at 0 every batch but the last prints its count and the time left."""
    import math

    from gnlorp import jobs
    from gnlorp.models import build_llama, llama_model_cfg

    model = build_llama(llama_model_cfg("llama_tiny"), seed=0).eval()
    blocks = torch.randint(0, model.config.vocab_size, (5, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = sum(model(input_ids=b[None], labels=b[None]).loss.item() for b in blocks) / len(blocks)
    lines = []
    monkeypatch.setattr(jobs, "PROGRESS_EVERY_S", 0.0)
    got = jobs.c4_mean_loss(model, blocks, torch.device("cpu"), autocast_dtype=None, batch_size=2, split="selection",
                              report=lines.append)
    assert got["loss"] == pytest.approx(want, rel=1e-5) and got["tokens"] == 5 * 63
    assert got["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert [line.split(",")[0] for line in lines] == ["evaluating selection: 2/5 blocks", "evaluating selection: 4/5 blocks"]
    assert all(line.endswith("min left") for line in lines)
