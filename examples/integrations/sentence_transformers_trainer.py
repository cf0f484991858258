"""sentence-transformers' trainer on a DatasetDict of three tasks with GradNorm (CPU, seconds).

    python examples/integrations/sentence_transformers_trainer.py

A tiny static-embedding model (its own word-level tokenizer, no download); three tasks
with mtlkit's losses passed as sentence-transformers losses (``MtlkitLoss``); the default
proportional multi-dataset sampler and gradient accumulation 2. The glue beyond choosing
the strategy: ``MultitaskSentenceTransformerTrainer`` instead of
``SentenceTransformerTrainer``. Every step holds a batch of every task; the end compares
with a hand-written mtlkit loop over the same batches.
"""

from __future__ import annotations

import copy
import os
import random
import tempfile

import torch
from datasets import Dataset, DatasetDict
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.modules import StaticEmbedding
from tokenizers import Tokenizer, models, pre_tokenizers

import mtlkit
from mtlkit.integrations.sentence_transformers import (
    MtlkitLoss,
    MultitaskSentenceTransformerTrainer,
)

WORDS = [f"w{i}" for i in range(60)]


def sentences(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def sequential(dataset, batch_size, drop_last, **_):  # type: ignore[no-untyped-def]
    """Batches in dataset order (so the hand loop below can draw the same ones)."""
    return torch.utils.data.BatchSampler(
        torch.utils.data.SequentialSampler(dataset), batch_size, drop_last
    )


def main() -> None:
    rng = random.Random(0)
    data = DatasetDict(
        {
            "nli": Dataset.from_dict(
                {"anchor": sentences(rng, 32), "positive": sentences(rng, 32)}
            ),
            "sts": Dataset.from_dict(
                {
                    "sentence1": sentences(rng, 48),
                    "sentence2": sentences(rng, 48),
                    "score": [rng.random() * 5 for _ in range(48)],
                }
            ),
            "quora": Dataset.from_dict(
                {
                    "sentence1": sentences(rng, 64),
                    "sentence2": sentences(rng, 64),
                    "label": [rng.choice([1, -1]) for _ in range(64)],
                }
            ),
        }
    )
    tokenizer = Tokenizer(
        models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}, "[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    model = SentenceTransformer(
        modules=[StaticEmbedding(tokenizer, embedding_dim=16)], device="cpu"
    )
    hand = copy.deepcopy(model)

    losses = {
        "nli": MtlkitLoss(model, "mnrl", scale=20.0),
        "sts": MtlkitLoss(model, "cosent"),
        "quora": MtlkitLoss(
            model, "cosine_embedding", margin={"start": 0.0, "end": 0.4, "steps": 4}
        ),
    }
    args = SentenceTransformerTrainingArguments(
        output_dir=os.environ.get("MTLKIT_EXAMPLE_OUT") or tempfile.mkdtemp(),
        per_device_train_batch_size=8,
        num_train_epochs=2,
        learning_rate=5e-2,
        optim="adamw_torch",
        batch_sampler=sequential,
        gradient_accumulation_steps=2,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = MultitaskSentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=data,
        loss=losses,
        strategy="gradnorm",
    )
    trainer.train()
    for record in trainer.state.log_history:
        if "loss_nli" in record:
            print({k: v for k, v in record.items() if k.startswith("loss")})

    # by hand: every step takes the next slice of every task's batches (4 steps an epoch:
    # nli has 4 batches, sts 6, quora 8), two steps per optimizer step
    names = list(data)
    per_task = [[list(range(i, i + 8)) for i in range(0, len(data[n]), 8)] for n in names]
    steps = [
        [
            (k, b)
            for k, bs in enumerate(per_task)
            for b in bs[j * len(bs) // 4 : (j + 1) * len(bs) // 4]
        ]
        for j in range(4)
    ] * 2
    fns = {
        "nli": mtlkit.losses.MultipleNegativesRankingLoss(scale=20.0),
        "sts": mtlkit.losses.CoSENTLoss(),
        "quora": mtlkit.losses.CosineEmbeddingLoss(margin={"start": 0.0, "end": 0.4, "steps": 4}),
    }
    opt = torch.optim.AdamW(hand.parameters(), lr=5e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (4 - s) / 4))
    engine = mtlkit.TaskGradients(
        hand, mtlkit.get_strategy("gradnorm", num_tasks=3), num_tasks=3, accumulate=True
    )

    def embed(texts: list[str]) -> torch.Tensor:
        return hand(hand.preprocess(texts))["sentence_embedding"]

    for o in range(4):
        window = steps[2 * o : 2 * o + 2]
        counts = [sum(len(b) for w in window for t, b in w if t == k) for k in range(3)]
        for w in window:
            for k, b in w:
                rows = data[names[k]][b]
                if names[k] == "nli":
                    loss = fns["nli"](embed(rows["anchor"]), embed(rows["positive"]))
                else:
                    labels = torch.tensor(rows["score" if names[k] == "sts" else "label"])
                    loss = fns[names[k]](embed(rows["sentence1"]), embed(rows["sentence2"]), labels)
                engine.backward(k, loss * len(b) / counts[k])
        engine.write_grad()
        torch.nn.utils.clip_grad_norm_(hand.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        fns["quora"].step()
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(model.parameters(), hand.parameters(), strict=True)
    )
    print(f"max |param - hand loop| = {diff:.2e}")


if __name__ == "__main__":
    main()
