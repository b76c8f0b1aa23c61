"""svd_signs="lapack" reproduces GaLore as its users run it, on one script: a tiny LLaMA trained for 30 steps
(five projector refreshes) by gnlorp's Trainer integration, by galore-torch's GaLoreAdamW in a plain loop, and
by transformers' own `optim="galore_adamw"`; the losses and the final weights of the three agree to 1e-5
(on CPU they are bit-identical). transformers passes GaLoreAdamW only the lr, so the other two runs take
galore-torch's eps=1e-6 and weight_decay=0; all three clip gradients at Trainer's max_grad_norm=1.0."""

import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from gnlorp.integrations.transformers import galore

galore_torch = pytest.importorskip("galore_torch")

STEPS, BATCH, RANK, GAP, SCALE, LR, CLIP = 30, 4, 8, 7, 0.25, 3e-3, 1.0  # gap 7: refreshes at 0, 7, 14, 21, 28
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # gnlorp's default set
IDS = torch.randint(0, 128, (STEPS * BATCH, 12), generator=torch.Generator().manual_seed(1))


def tiny():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=64))


class RecordingTrainer(Trainer):
    """Trainer that keeps each step's loss unrounded (its logs round to 4 digits)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.losses.append((out[0] if return_outputs else out).item())
        return out


def train_with_trainer(tmp_path, name, model, pair=None, **kw):
    args = TrainingArguments(
        output_dir=str(tmp_path / name), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LR,
        lr_scheduler_type="constant", max_grad_norm=CLIP, train_sampling_strategy="sequential", report_to=[],
        use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, **kw)
    extra = {} if pair is None else {"optimizer_cls_and_kwargs": pair(model, args)}
    trainer = RecordingTrainer(model=model, args=args, train_dataset=[{"input_ids": i, "labels": i} for i in IDS],
                               **extra)
    trainer.losses = []
    trainer.train()
    return trainer.losses, model


def train_galore_torch(model):
    """galore-torch's README loop: its param groups, clipping as Trainer clips, batches in order."""
    names = {f"{n}.weight" for n, m in model.named_modules() if n.split(".")[-1] in TARGETS}
    targets = [p for n, p in model.named_parameters() if n in names]
    rest = [p for n, p in model.named_parameters() if n not in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        opt = galore_torch.GaLoreAdamW([{"params": rest}, {"params": targets, "rank": RANK, "update_proj_gap": GAP,
                                                          "scale": SCALE, "proj_type": "std"}], lr=LR)
    model.train()
    losses = []
    for step in range(STEPS):
        batch = IDS[step * BATCH:(step + 1) * BATCH]
        loss = model(input_ids=batch, labels=batch).loss
        losses.append(loss.item())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
    return losses, model


@pytest.mark.slow
def test_lapack_signs_reproduce_galore_torch_and_transformers_galore_adamw(tmp_path):
    ours = train_with_trainer(
        tmp_path, "gnlorp", tiny(), adam_epsilon=1e-6, weight_decay=0.0,
        pair=lambda m, a: galore(m, a, rank=RANK, update_proj_gap=GAP, scale=SCALE, proj_type="std", svd_signs="lapack"))
    reference = train_galore_torch(tiny())
    hf = train_with_trainer(tmp_path, "hf", tiny(), optim="galore_adamw", optim_target_modules=TARGETS,
                            optim_args=f"rank={RANK},update_proj_gap={GAP},scale={SCALE},proj_type=std")
    start = tiny()
    moved = max((a - b).abs().max().item() for a, b in zip(ours[1].parameters(), start.parameters()))
    assert moved > 1e-2, "the comparison would be vacuous if nothing moved"
    for (la, ma), (lb, mb) in ((ours, reference), (ours, hf), (reference, hf)):
        assert len(la) == len(lb) == STEPS
        assert max(abs(a - b) for a, b in zip(la, lb)) <= 1e-5
        assert max((a - b).abs().max().item() for a, b in zip(ma.parameters(), mb.parameters())) <= 1e-5
    # and the default (canonical) signs do leave this trajectory: the option is not a no-op
    canonical = train_with_trainer(tmp_path, "canonical", tiny(), adam_epsilon=1e-6, weight_decay=0.0,
                                   pair=lambda m, a: galore(m, a, rank=RANK, update_proj_gap=GAP, scale=SCALE))
    assert max((a - b).abs().max().item() for a, b in zip(canonical[1].parameters(), reference[1].parameters())) > 1e-4
