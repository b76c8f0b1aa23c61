"""gnlorp.jobs.glue_job: what the runner trains on and how it scores (a random tiny BERT on real RTE rows)."""

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
def test_evaluation_in_length_sorted_batches_scores_as_one_row_at_a_time():
    """Reference: every dev and selection row through the model alone (no padding at all), in file order."""
    cfg, job = _job()
    data = load_glue("stsb", load_encoder_tokenizer(cfg.model), str(GLUE_DIR), max_train_samples=48,
                     max_eval_samples=40, selection_samples=30)
    scored = job.evaluate(job.model)
    assert set(scored) == {"validation", "selection"}
    with torch.no_grad():
        for split, rows in data.eval_splits.items():
            preds = [job.model(**{k: v for k, v in data.collate([row]).items() if k != "labels"}).logits.squeeze()
                     for row in rows]
            ref = data.compute_metrics(torch.stack(preds).numpy(), torch.tensor([r["labels"] for r in rows]).numpy())
            got = scored[split]
            assert set(got) == set(ref)
            for k in ref:
                assert abs(got[k] - ref[k]) < 1e-5, (split, k, got[k], ref[k])
