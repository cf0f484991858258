"""A Hugging Face ``Trainer`` on three tasks with PCGrad (tiny random BERT, CPU, seconds).

    python examples/integrations/hf_trainer.py

The model is a BERT encoder (shared) with one head per task; every training example has a
``task`` column, and the model's ``forward(..., task)`` picks the head. The glue beyond
choosing the strategy: ``MultitaskTrainer`` instead of ``Trainer``, and ``tasks=``.
At the end the same steps run as a hand-written mtlkit loop, for comparison.
"""

from __future__ import annotations

import copy
import os
import tempfile

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, TrainingArguments

import mtlkit
from mtlkit.integrations.transformers import MultitaskTrainer

TASKS = ["sentiment", "paraphrase", "similarity"]


class MultitaskBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        config = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,  # deterministic comparison
        )
        self.bert = BertModel(config, add_pooling_layer=False)
        self.heads = nn.ModuleList([nn.Linear(16, 5), nn.Linear(16, 2), nn.Linear(16, 1)])

    def forward(self, input_ids, attention_mask, labels, task):  # type: ignore[no-untyped-def]
        k = int(task[0])  # the Trainer hands one task's examples at a time
        pooled = self.bert(input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        out = self.heads[k](pooled)
        if k == 2:
            return {"loss": F.mse_loss(out.squeeze(-1), labels.float())}
        return {"loss": F.cross_entropy(out, labels.long())}


class Examples(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (n, 12), generator=g)
        self.task = torch.arange(n) % 3
        self.labels = torch.stack(
            [
                torch.randint(0, 5 if t == 0 else 2, (), generator=g).float()
                if t < 2
                else torch.rand((), generator=g) * 5
                for t in self.task.tolist()
            ]
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(12, dtype=torch.long),
            "labels": self.labels[i],
            "task": self.task[i],
        }


def main() -> None:
    out = os.environ.get("MTLKIT_EXAMPLE_OUT") or tempfile.mkdtemp()
    torch.manual_seed(0)
    model = MultitaskBert()
    hand = copy.deepcopy(model)
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=24,
        max_steps=6,
        learning_rate=1e-3,
        optim="adamw_torch",
        train_sampling_strategy="sequential",
        use_cpu=True,
        report_to=[],
        logging_steps=2,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = MultitaskTrainer(
        model=model,
        args=args,
        train_dataset=Examples(),
        strategy=mtlkit.PCGrad(seed=0),
        tasks=TASKS,
        shared_parameters="bert",
    )
    trainer.train()
    for record in trainer.state.log_history:
        if "loss_sentiment" in record:
            print({k: v for k, v in record.items() if k.startswith("loss")})

    # the same six steps by hand: sequential batches, AdamW, linear decay, clipping at 1
    data = Examples()
    opt = torch.optim.AdamW(hand.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (6 - s) / 6))
    engine = mtlkit.TaskGradients(hand.bert, mtlkit.PCGrad(seed=0), num_tasks=3)
    for step in range(6):
        rows = torch.arange(24 * step, 24 * step + 24) % len(data)
        for k in range(3):
            sel = rows[data.task[rows] == k]
            batch = {name: torch.stack([data[int(i)][name] for i in sel]) for name in data[0]}
            engine.backward(k, hand(**batch)["loss"])
        engine.write_grad()
        torch.nn.utils.clip_grad_norm_(hand.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), hand.parameters(), strict=True)
    )
    print(f"max |param - hand loop| = {diff:.2e}")


if __name__ == "__main__":
    main()
