"""The framework integrations (mtlkit.integrations) against hand-written mtlkit loops.

Each framework's tests are skipped when it is not installed. Tiny models on the CPU: every
comparison runs the framework and a hand loop from the same initial weights on the same
batches and expects the same parameters.
"""

from __future__ import annotations

import copy
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtlkit

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6


def max_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        (x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters(), strict=True)
    )


def test_import_mtlkit_imports_no_framework() -> None:
    code = (
        "import sys, mtlkit, mtlkit.integrations; "
        "bad = [m for m in ('transformers', 'lightning', 'sentence_transformers', 'accelerate', "
        "'pytorch_lightning', 'datasets') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------- transformers
class Net(nn.Module):
    """A shared encoder and one head per task; the batch's ``task`` column picks the head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(3))

    def forward(self, x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> dict[str, Any]:
        k = int(task[0])
        return {"loss": F.mse_loss(self.heads[k](self.encoder(x)).squeeze(-1), y)}


class Rows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 48) -> None:
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=g)
        self.y = torch.randn(n, generator=g)
        self.task = torch.arange(n) % 3

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "task": self.task[i]}


def hf_args(out: Path, **kw: Any) -> Any:
    from transformers import TrainingArguments

    base: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=12,
        learning_rate=1e-2,
        optim="adamw_torch",
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
    )
    base.update(kw)
    return TrainingArguments(**base)


def hf_hand_loop(
    model: Net,
    data: Rows,
    strategy: mtlkit.Strategy,
    *,
    steps: int,
    batch: int,
    ga: int,
    scaler: Any = None,
) -> None:
    """What the Trainer does, written out: sequential batches, AdamW, linear decay, clip 1."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (steps - s) / steps))
    eng = mtlkit.TaskGradients(
        model.encoder.parameters(), strategy, num_tasks=3, accumulate=True, scaler=scaler
    )
    per_step = batch * ga
    for step in range(steps):
        start = (step * per_step) % len(data)
        rows = torch.arange(start, start + per_step)
        counts = torch.bincount(data.task[rows], minlength=3)
        for m in range(ga):
            r = rows[m * batch : (m + 1) * batch]
            for k in range(3):
                sel = r[data.task[r] == k]
                # accelerate's CPU autocast (the scaler test fakes fp16 on the CPU) is bfloat16
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=scaler is not None):
                    out = model.heads[k](model.encoder(data.x[sel])).squeeze(-1)
                    loss = F.mse_loss(out, data.y[sel])
                loss = loss.float() * len(sel) / int(counts[k])
                eng.backward(k, scaler.scale(loss) if scaler is not None else loss)
        eng.write_grad()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad()


@pytest.mark.parametrize("ga", [1, 2])
def test_transformers_trainer_matches_hand_loop(tmp_path: Path, ga: int) -> None:
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    from mtlkit.integrations.transformers import MultitaskTrainer

    torch.manual_seed(0)
    model = Net()
    ref, init = copy.deepcopy(model), copy.deepcopy(model)
    args = hf_args(tmp_path, gradient_accumulation_steps=ga, max_steps=4)
    args.train_sampling_strategy = "sequential"
    trainer = MultitaskTrainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        strategy=mtlkit.PCGrad(seed=0),
        tasks=["a", "b", "c"],
        shared_parameters="encoder",
    )
    trainer.train()
    hand = mtlkit.PCGrad(seed=0)
    hf_hand_loop(ref, Rows(), hand, steps=4, batch=12, ga=ga)
    assert max_diff(model, ref) <= TOL
    assert max_diff(model, init) > 1e-3
    logged = [h for h in trainer.state.log_history if "loss_a" in h]
    assert len(logged) == 4 and {"loss_b", "loss_c"} <= set(logged[0])


@pytest.mark.parametrize("name", ["pcgrad", "gradnorm"])
def test_transformers_trainer_resumes_exactly(tmp_path: Path, name: str) -> None:
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    from mtlkit.integrations.transformers import STATE_NAME, MultitaskTrainer

    torch.manual_seed(0)
    init = copy.deepcopy(Net().state_dict())

    def run(out: Path, resume: Path | None = None) -> Net:
        model = Net()
        model.load_state_dict(init)
        args = hf_args(out, per_device_train_batch_size=6, max_steps=6, save_strategy="steps")
        args.save_steps, args.logging_steps, args.seed = 3, 100, 3
        trainer = MultitaskTrainer(
            model=model,
            args=args,
            train_dataset=Rows(),
            strategy=name,
            tasks=3,
            shared_parameters="encoder",
        )
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        return model

    whole = run(tmp_path / "whole")
    checkpoint = tmp_path / "whole" / "checkpoint-3"
    assert (checkpoint / STATE_NAME).is_file()
    resumed = run(tmp_path / "resumed", checkpoint)
    assert max_diff(whole, resumed) == 0.0
    if name == "gradnorm":  # the test can tell: without the strategy's state, it drifts
        os.remove(checkpoint / STATE_NAME)
        drifted = run(tmp_path / "drifted", checkpoint)
        assert max_diff(whole, drifted) > 1e-5


def test_transformers_trainer_hands_the_scaler_to_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16: accelerate's autocast forward and its GradScaler go through the engine (a CPU
    scaler here, faked as fp16 mixed precision; accelerate makes a CUDA one for fp16=True)."""
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    from mtlkit.integrations.transformers import MultitaskTrainer

    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    args = hf_args(tmp_path, max_steps=3)
    args.train_sampling_strategy = "sequential"
    trainer = MultitaskTrainer(
        model=model,
        args=args,
        train_dataset=Rows(),
        strategy="gradnorm",
        tasks=3,
        shared_parameters="encoder",
    )
    accelerator = trainer.accelerator
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    accelerator.native_amp = True
    monkeypatch.setattr(type(accelerator), "mixed_precision", property(lambda self: "fp16"))
    trainer.train()
    assert trainer.engine is not None and trainer.engine.scaler is accelerator.scaler
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    hand = mtlkit.get_strategy("gradnorm", num_tasks=3)
    hf_hand_loop(ref, Rows(), hand, steps=3, batch=12, ga=1, scaler=scaler)
    assert max_diff(model, ref) <= TOL


def test_transformers_trainer_grouped_batches_and_zero_rows(tmp_path: Path) -> None:
    """Batches grouped by task ({task: sub_batch}) and a step missing a task (zero row)."""
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    from mtlkit.integrations.transformers import MultitaskTrainer

    class Grouped(torch.utils.data.Dataset[dict[int, dict[str, torch.Tensor]]]):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> dict[int, dict[str, torch.Tensor]]:
            g = torch.Generator().manual_seed(i)
            tasks = [0, 1] if i == 0 else [0, 1, 2]  # the first step has no task 2
            return {
                k: {"x": torch.randn(4, 6, generator=g), "y": torch.randn(4, generator=g)}
                for k in tasks
            }

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], task: int) -> torch.Tensor:
        assert isinstance(model, Net)
        return F.mse_loss(model.heads[task](model.encoder(batch["x"])).squeeze(-1), batch["y"])

    torch.manual_seed(0)
    model = Net()
    ref = copy.deepcopy(model)
    args = hf_args(tmp_path, per_device_train_batch_size=1, max_steps=4, max_grad_norm=0.0)
    args.remove_unused_columns = False  # grouped batches are not rows of model inputs
    args.train_sampling_strategy = "sequential"
    trainer = MultitaskTrainer(
        model=model,
        args=args,
        train_dataset=Grouped(),
        data_collator=lambda rows: rows[0],
        strategy=mtlkit.MGDA(),
        tasks=3,
        shared_parameters=model.encoder,
        task_loss_fn=loss_fn,
    )
    trainer.train()
    assert trainer.mtl.partial_steps == 1
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (4 - s) / 4))
    eng = mtlkit.TaskGradients(ref.encoder.parameters(), mtlkit.MGDA(), num_tasks=3)
    for i in range(4):
        groups = Grouped()[i]
        for k in range(3):
            loss = (
                loss_fn(ref, groups[k], k) if k in groups else torch.zeros((), requires_grad=True)
            )
            eng.backward(k, loss)
        eng.write_grad()
        opt.step()
        sched.step()
        opt.zero_grad()
    assert max_diff(model, ref) <= TOL


# ---------------------------------------------------------------------- sentence-transformers
def st_setup() -> tuple[Any, Any, Any]:
    """A tiny static-embedding SentenceTransformer and a DatasetDict of three tasks."""
    import random

    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = [f"w{i}" for i in range(40)]
    tok = Tokenizer(
        models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, "[UNK]")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = random.Random(0)

    def sents(n: int) -> list[str]:
        return [" ".join(rng.choice(words) for _ in range(rng.randint(2, 6))) for _ in range(n)]

    data = DatasetDict(
        {
            "nli": Dataset.from_dict({"anchor": sents(16), "positive": sents(16)}),
            "sts": Dataset.from_dict(
                {
                    "sentence1": sents(24),
                    "sentence2": sents(24),
                    "score": [rng.random() for _ in range(24)],
                }
            ),
            "pairs": Dataset.from_dict(
                {
                    "sentence1": sents(32),
                    "sentence2": sents(32),
                    "label": [rng.randint(0, 1) for _ in range(32)],
                }
            ),
        }
    )

    def make() -> Any:
        return SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=8)], device="cpu")

    return make, data, tok


def _sequential(dataset: Any, batch_size: int, drop_last: bool, **_: Any) -> Any:
    return torch.utils.data.BatchSampler(
        torch.utils.data.SequentialSampler(dataset), batch_size, drop_last
    )


def st_args(out: Path, sampler: str, ga: int, **kw: Any) -> Any:
    from sentence_transformers import SentenceTransformerTrainingArguments

    base: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=5e-2,
        optim="adamw_torch",
        batch_sampler=_sequential,
        multi_dataset_batch_sampler=sampler,
        gradient_accumulation_steps=ga,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    base.update(kw)
    return SentenceTransformerTrainingArguments(**base)


def st_losses(model: Any) -> dict[str, Any]:
    from mtlkit.integrations.sentence_transformers import MtlkitLoss

    return {
        "nli": MtlkitLoss(model, "mnrl", scale=20.0),
        "sts": MtlkitLoss(model, mtlkit.losses.CoSENTLoss()),
        "pairs": MtlkitLoss(model, "contrastive", margin=0.5),
    }


@pytest.mark.parametrize(
    ("sampler", "ga"), [("round_robin", 1), ("proportional", 1), ("proportional", 2)]
)
def test_sentence_transformers_trainer_matches_hand_loop(
    tmp_path: Path, sampler: str, ga: int
) -> None:
    pytest.importorskip("accelerate")
    pytest.importorskip("datasets")
    pytest.importorskip("sentence_transformers")
    from mtlkit.integrations.sentence_transformers import MultitaskSentenceTransformerTrainer

    make, data, _ = st_setup()
    torch.manual_seed(0)
    model = make()
    ref = make()
    ref.load_state_dict(model.state_dict())
    trainer = MultitaskSentenceTransformerTrainer(
        model=model,
        args=st_args(tmp_path, sampler, ga),
        train_dataset=data,
        loss=st_losses(model),
        strategy=mtlkit.PCGrad(seed=0),
    )
    trainer.train()

    # the hand loop: steps of every task's batches (sequential batches of 4 per task)
    names = list(data)
    per_task = [
        [list(range(i, min(i + 4, len(data[n])))) for i in range(0, len(data[n]), 4)] for n in names
    ]
    m = min(len(b) for b in per_task)
    if sampler == "round_robin":  # round-robin stops when the smallest task runs out
        per_task = [b[:m] for b in per_task]
    steps = [
        [
            (k, b)
            for k, bs in enumerate(per_task)
            for b in bs[j * len(bs) // m : (j + 1) * len(bs) // m]
        ]
        for j in range(m)
    ]
    total = (m + ga - 1) // ga
    assert trainer.state.global_step == total
    fns = {
        "nli": mtlkit.losses.MultipleNegativesRankingLoss(scale=20.0),
        "sts": mtlkit.losses.CoSENTLoss(),
        "pairs": mtlkit.losses.ContrastiveLoss(margin=0.5),
    }
    opt = torch.optim.AdamW(ref.parameters(), lr=5e-2, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (total - s) / total))
    eng = mtlkit.TaskGradients(ref, mtlkit.PCGrad(seed=0), num_tasks=3, accumulate=True)

    def embed(texts: list[str]) -> torch.Tensor:
        return ref(ref.preprocess(texts))["sentence_embedding"]

    for o in range(total):
        window = steps[o * ga : (o + 1) * ga]
        counts = [sum(len(b) for w in window for t, b in w if t == k) for k in range(3)]
        for w in window:
            for k, b in w:
                rows = data[names[k]][b]
                cols = list(rows)
                if names[k] == "nli":
                    loss = fns["nli"](embed(rows["anchor"]), embed(rows["positive"]))
                else:
                    u, v = embed(rows["sentence1"]), embed(rows["sentence2"])
                    loss = fns[names[k]](u, v, torch.tensor(rows[cols[2]]))
                eng.backward(k, loss * len(b) / counts[k])
        eng.write_grad()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    assert max_diff(model, ref) <= TOL


def test_sentence_transformers_trainer_resumes_exactly(tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    pytest.importorskip("datasets")
    pytest.importorskip("sentence_transformers")
    from mtlkit.integrations.sentence_transformers import MultitaskSentenceTransformerTrainer

    make, data, _ = st_setup()
    torch.manual_seed(0)
    init = copy.deepcopy(make().state_dict())

    def run(out: Path, resume: Path | None = None) -> Any:
        model = make()
        model.load_state_dict(init)
        args = st_args(
            out,
            "proportional",
            1,
            batch_sampler="batch_sampler",
            save_strategy="steps",
            save_steps=2,
        )
        trainer = MultitaskSentenceTransformerTrainer(
            model=model, args=args, train_dataset=data, loss=st_losses(model), strategy="gradnorm"
        )
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        return model

    whole = run(tmp_path / "whole")
    resumed = run(tmp_path / "resumed", tmp_path / "whole" / "checkpoint-2")
    assert max_diff(whole, resumed) == 0.0


def test_sentence_transformers_adapters_match_mtlkit_losses() -> None:
    pytest.importorskip("sentence_transformers")
    from mtlkit.integrations.sentence_transformers import MtlkitLoss

    make, _, _ = st_setup()
    torch.manual_seed(0)
    model = make()
    texts = [["w1 w2", "w3 w4 w5", "w6"], ["w7 w8", "w9", "w10 w11"], ["w12", "w13 w2", "w4 w4"]]
    features = [model.preprocess(t) for t in texts]
    emb = [model(model.preprocess(t))["sentence_embedding"] for t in texts]
    cases = [
        (mtlkit.losses.MultipleNegativesRankingLoss(), 3, None),
        (mtlkit.losses.TripletLoss(margin=0.3), 3, None),
        (mtlkit.losses.CoSENTLoss(), 2, torch.tensor([0.1, 0.9, 0.4])),
        (mtlkit.losses.CosineEmbeddingLoss(margin=0.2), 2, torch.tensor([1, -1, 1])),
        (mtlkit.losses.ContrastiveLoss(margin=0.5), 2, torch.tensor([1, 0, 1])),
    ]
    for loss, columns, labels in cases:
        adapted = MtlkitLoss(model, loss)(features[:columns], labels)
        direct = loss(*emb[:columns]) if labels is None else loss(*emb[:columns], labels)
        torch.testing.assert_close(adapted, direct)
    with pytest.raises(ValueError, match="label column"):
        MtlkitLoss(model, "cosent")(features[:2], None)
    margin = MtlkitLoss(model, "cosine_embedding", margin={"start": 0.2, "end": 0.6, "steps": 4})
    margin.step(2)
    assert margin.loss.margin == pytest.approx(0.4)


# ---------------------------------------------------------------------------- lightning
def pl_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(1)
    return [
        [(torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)) for _ in range(3)]
        for _ in range(4)
    ]


def pl_module(strategy: Any, *, manual: bool = False) -> Any:
    import lightning as L

    from mtlkit.integrations.lightning import MultitaskModule

    class Model(MultitaskModule, L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
            self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(3))
            self.configure_multitask(self.encoder, copy.deepcopy(strategy), tasks=3)
            self.automatic_optimization = not manual

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            losses = [
                F.mse_loss(self.heads[k](self.encoder(x)).float(), y)
                for k, (x, y) in enumerate(batch)
            ]
            if not manual:
                return self.multitask_loss(losses)
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.multitask_loss(losses))
            self.clip_gradients(opt, gradient_clip_val=1.0)
            opt.step()
            return None

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return Model()


def pl_trainer(epochs: int, **kw: Any) -> Any:
    import lightning as L

    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def pl_hand_loop(model: Any, strategy: Any, *, acc: int = 1, scaler: Any = None) -> None:
    data = pl_batches()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    eng = mtlkit.TaskGradients(
        model.encoder.parameters(), strategy, num_tasks=3, accumulate=True, scaler=scaler
    )
    for i, batch in enumerate(data):
        with torch.autocast(
            "cpu", dtype=torch.float16, enabled=scaler is not None, cache_enabled=False
        ):
            losses = [
                F.mse_loss(model.heads[k](model.encoder(x)).float(), y) / acc
                for k, (x, y) in enumerate(batch)
            ]
        eng.backward_all([scaler.scale(x) for x in losses] if scaler is not None else losses)
        if (i + 1) % acc == 0 or i == len(data) - 1:
            eng.write_grad()
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()


@pytest.mark.parametrize(("manual", "acc"), [(False, 1), (False, 2), (True, 1)])
def test_lightning_matches_hand_loop(manual: bool, acc: int) -> None:
    pytest.importorskip("lightning")
    torch.manual_seed(0)
    model = pl_module(mtlkit.PCGrad(seed=0), manual=manual)
    ref = copy.deepcopy(model)
    kw: dict[str, Any] = (
        {} if manual else {"gradient_clip_val": 1.0, "accumulate_grad_batches": acc}
    )
    loader = torch.utils.data.DataLoader(pl_batches(), batch_size=None)
    pl_trainer(1, **kw).fit(model, loader)
    pl_hand_loop(ref, mtlkit.PCGrad(seed=0), acc=acc)
    assert max_diff(model, ref) <= TOL


def test_lightning_fp16_goes_through_the_scaler() -> None:
    pytest.importorskip("lightning")
    from lightning.pytorch.plugins import MixedPrecision

    torch.manual_seed(0)
    strategy = mtlkit.get_strategy("gradnorm", num_tasks=3)
    model = pl_module(strategy)
    ref = copy.deepcopy(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    loader = torch.utils.data.DataLoader(pl_batches(), batch_size=None)
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    pl_trainer(1, plugins=[plugin], gradient_clip_val=1.0).fit(model, loader)
    assert model.engine.scaler is scaler
    pl_hand_loop(
        ref, copy.deepcopy(strategy), scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12)
    )
    assert max_diff(model, ref) <= TOL


def test_lightning_resumes_exactly(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    torch.manual_seed(0)
    strategy = mtlkit.get_strategy("gradnorm", num_tasks=3)
    init = copy.deepcopy(pl_module(strategy).state_dict())
    loader = torch.utils.data.DataLoader(pl_batches(), batch_size=None)

    def fresh() -> Any:
        model = pl_module(strategy)
        model.load_state_dict(init)
        return model

    whole = fresh()
    pl_trainer(2).fit(whole, loader)
    first = fresh()
    trainer = pl_trainer(1)
    trainer.fit(first, loader)
    path = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(path)
    resumed = fresh()
    pl_trainer(2).fit(resumed, loader, ckpt_path=path)
    assert max_diff(whole, resumed) == 0.0
    checkpoint = torch.load(path, weights_only=False)  # the control: no strategy state
    del checkpoint["mtlkit"]
    torch.save(checkpoint, tmp_path / "bare.ckpt")
    drifted = fresh()
    pl_trainer(2).fit(drifted, loader, ckpt_path=tmp_path / "bare.ckpt")
    assert max_diff(whole, drifted) > 1e-5


# ---------------------------------------------------------------------------- examples
@pytest.mark.parametrize(
    "script", ["hf_trainer.py", "sentence_transformers_trainer.py", "lightning_module.py"]
)
def test_integration_examples_run(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each example runs (in this process: the frameworks are imported once) and lands on
    its hand-written loop's parameters."""
    needs = {
        "hf_trainer.py": ["accelerate", "transformers"],
        "sentence_transformers_trainer.py": ["accelerate", "datasets", "sentence_transformers"],
        "lightning_module.py": ["lightning"],
    }
    for module in needs[script]:
        pytest.importorskip(module)
    monkeypatch.setenv("MTLKIT_EXAMPLE_OUT", str(tmp_path))
    runpy.run_path(str(ROOT / "examples" / "integrations" / script), run_name="__main__")
    out = capsys.readouterr().out
    assert "max |param - hand loop| = 0.00e+00" in out


DDP_SCRIPT = """
import sys, torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_integrations import Net, Rows, hf_args
from mtlkit.integrations.transformers import MultitaskTrainer
from pathlib import Path

torch.manual_seed(0)
model = Net()
args = hf_args(Path({out!r}), per_device_train_batch_size=6, max_steps=3, ddp_backend="gloo")
trainer = MultitaskTrainer(
    model=model, args=args, train_dataset=Rows(), strategy="pcgrad", tasks=3,
    shared_parameters="encoder",
)
trainer.train()
assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
assert trainer.engine._reduce is not None  # J is averaged over the ranks
flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
both = [torch.empty_like(flat) for _ in range(2)]
dist.all_gather(both, flat)
assert torch.equal(both[0], both[1]), "the ranks' parameters differ"
print("ranks agree", dist.get_rank())
# Leave without the interpreter's exit-time C++ destructors, where gloo's threads now and
# then abort a finished process ("terminate called without an active exception").
import os
dist.barrier()
sys.stdout.flush()
os._exit(0)
"""


def test_transformers_trainer_two_processes(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo, loopback): DDP-wrapped by the Trainer, J reduced by
    the engine, the ranks' parameters identical after training."""
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    from dist_utils import free_port

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(ROOT / "tests"), out=str(tmp_path / "out")))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert done.stdout.count("ranks agree") == 2
