"""A LightningModule on three tasks with PCGrad, automatic optimization (CPU, seconds).

    python examples/integrations/lightning_module.py

Each batch holds one (x, y) batch per task. The glue beyond choosing the strategy: the
``MultitaskModule`` base, one ``configure_multitask`` line, and ``return
self.multitask_loss(losses)`` instead of ``return sum(losses)``. Lightning accumulates (2
micro-batches), clips and steps; the strategy's state goes into the checkpoints. The end
compares with a hand-written mtlkit loop.
"""

from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

import mtlkit
from mtlkit.integrations.lightning import MultitaskModule


class Model(MultitaskModule, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(32, 1) for _ in range(3))
        self.configure_multitask(self.encoder, mtlkit.PCGrad(seed=0), tasks=["a", "b", "c"])

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        losses = [F.mse_loss(self.heads[k](self.encoder(x)), y) for k, (x, y) in enumerate(batch)]
        return self.multitask_loss(losses)

    def on_train_batch_end(self, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
        values = self.multitask_log_values()  # each task's mean loss per optimizer step
        if values:
            print(f"step {self.global_step}: {values}")

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    batches = [
        [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(3)]
        for _ in range(8)
    ]
    torch.manual_seed(0)
    model = Model()
    hand = copy.deepcopy(model)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
    )
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))

    opt = torch.optim.AdamW(hand.parameters(), lr=1e-2)
    engine = mtlkit.TaskGradients(
        hand.encoder.parameters(), mtlkit.PCGrad(seed=0), num_tasks=3, accumulate=True
    )
    for i, batch in enumerate(batches):
        for k, (x, y) in enumerate(batch):
            engine.backward(k, F.mse_loss(hand.heads[k](hand.encoder(x)), y) / 2)
        if i % 2 == 1:
            engine.write_grad()
            torch.nn.utils.clip_grad_norm_(hand.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), hand.parameters(), strict=True)
    )
    print(f"max |param - hand loop| = {diff:.2e}")


if __name__ == "__main__":
    main()
