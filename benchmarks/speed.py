"""Speed and memory of mtlkit against its peers, as ratios measured side by side.

Sections (each prints a table; all of it is written to ``--out``, a Markdown file):

1. **aggregation** — PCGrad of a K x P per-task gradient matrix (P = 22.7M, MiniLM-L6
   size, and optionally 110M, BERT-base size): mtlkit vs TorchJD vs a loop in the style of
   the popular PyTorch port, against one read pass over J (``torch.sum(J, 0, out=...)``);
   with each output's error relative to an exact float64 computation, and the operations
   (kernel launches on a GPU, views not counted) of one plain call of each library. With
   ``--aggregation-compile MODE``, also mtlkit's plain call compiled whole
   (``torch.compile(fullgraph=True, mode=MODE)``: inductor fuses the K x K surgery's
   small ops; ``reduce-overhead`` on CUDA replays the call as one CUDA graph).
2. **step** — one-batch-per-task loop on miniBERT (real weights, 3 tasks): a PCGrad step
   through ``TaskGradients`` vs the same loop with summed gradients (``loss.backward()``
   per task); and, when all tasks share one batch and graph, the summed one-graph step vs
   per-task backward through the encoder vs the representation-level ``SharedFeatures``.
3. **memory** — peak resident memory of the PCGrad loop minus the summed loop, each in a
   fresh process, against the budget 1.1 x K x P x 4 bytes.
4. **endtoend** — K task losses -> the combined gradient in the shared parameters' ``.grad``,
   each library on the same model (a Linear/tanh trunk of about P = ``--sizes`` shared
   parameters, K linear heads, one fixed batch of ``--batch`` rows): every timed call zeroes
   the grads, runs the forward pass and the K losses, backpropagates and leaves the
   combined update in ``.grad``. mtlkit: ``TaskGradients.backward_all`` (one backward per
   task, and ``mode="batched"``) + ``write_grad``; TorchJD: ``autojac.mtl_backward`` (heads
   get their task's gradient, as with mtlkit) + ``autojac.jac_to_grad``, and
   ``autojac.backward(losses, inputs=shared)`` + ``jac_to_grad`` (shared parameters only);
   and ``sum(losses).backward()``, the cost without a multitask method. Each library's
   ``.grad`` is checked against a float64 reference built from plain per-task autograd
   gradients, and against each other (``--aggregators``: PCGrad, UPGrad, IMTL-G). TorchJD's
   PCGrad draws its task orders from torch's global generator, so it is compared for K = 2
   only (one order); its UPGrad adds a ridge of 1e-4 to the trace-normalised Gramian by
   default, which moves its update by about 1e-4 to 1e-3 (relative) from the exact one.
   Columns: medians in ms, their ratios, ``min cos`` (the most negative cosine between two
   tasks' gradients: the tasks conflict by construction), and the ``err`` figures, each
   max |a - b| / max |b| over the flattened gradients (``mtlkit err``: the worse of its two
   modes, shared and head gradients; ``mtlkit vs torchjd``: the shared ``.grad``).

Run from the repository root::

    python benchmarks/speed.py --out benchmarks/results/speed-cpu.md

Needs the ``minbert`` and ``bench`` extras (TorchJD is skipped with a note if missing; its
UPGrad also needs ``torchjd[quadprog_projector]``). The end-to-end section alone::

    python benchmarks/speed.py --sections endtoend --out benchmarks/results/e2e-cpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import machine  # noqa: E402

import mtlkit  # noqa: E402
from mtlkit import PCGrad, SharedFeatures, TaskGradients  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict:
    """Median seconds of each function, runs interleaved so noise hits all alike."""
    for f in fns.values():  # warm-up
        f()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def count_ops(fn: Callable[[], object]) -> int:
    """The aten operations other than views one call of ``fn`` dispatches: on a GPU each
    is a kernel launch (or a host-side op) and a few microseconds of host time."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            Count.n += not func.is_view
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


# ----------------------------------------------------------------------------- aggregation
def port_style_pcgrad(matrix: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """PCGrad as the popular PyTorch port writes it: Python loops over task pairs in P-space."""
    grads = list(matrix)
    projected = [g.clone() for g in grads]
    k = len(grads)
    for i in range(k):
        order = torch.randperm(k, generator=gen).tolist()
        for j in order:
            if j == i:
                continue
            dot = torch.dot(projected[i], grads[j])
            if dot < 0:
                projected[i] -= dot * grads[j] / (grads[j].norm() ** 2)
    return torch.stack(projected).sum(dim=0)


def exact_pcgrad(matrix: torch.Tensor, seed: int) -> torch.Tensor:
    """Yu et al. 2020 Algorithm 1 in float64 P-space with mtlkit's documented orders."""
    k = matrix.shape[0]
    return pcgrad_with_orders(matrix, PCGrad(seed=seed).draw_orders(k).tolist())


def pcgrad_with_orders(matrix: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Yu et al. 2020 Algorithm 1 in float64 P-space; task i visits the others in orders[i]."""
    k = matrix.shape[0]
    j64 = matrix.double()
    total = torch.zeros_like(j64[0])
    for i in range(k):
        g = j64[i].clone()
        for j in orders[i]:
            dot = g @ j64[j]
            if dot < 0:
                g -= dot / (j64[j] @ j64[j]) * j64[j]
        total += g
    return total


def _torchjd_pcgrad() -> Callable[[torch.Tensor], torch.Tensor] | None:
    try:
        from torchjd.aggregation import PCGrad as TorchJDPCGrad
    except ImportError:
        print("torchjd not installed (pip install -e '.[bench]'): skipping it")
        return None
    return TorchJDPCGrad()  # type: ignore[no-any-return]


def _aggregate_one(
    p: int,
    k: int,
    repeats: int,
    device: torch.device,
    torchjd: Callable | None,
    compile_mode: str | None = None,
) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(k)
    matrix = torch.randn(k, p, generator=gen).to(device)
    # conflicting structure: the tasks share +/- one common direction
    common = torch.randn(p, generator=gen).to(device)
    signs = torch.tensor([(-1.0) ** i for i in range(k)], device=device)
    matrix += signs[:, None] * common
    out = torch.empty(p, device=device)
    ours = PCGrad(seed=0)
    fns: dict[str, Callable[[], object]] = {
        "read pass": lambda: torch.sum(matrix, dim=0, out=out),
        "mtlkit": lambda: ours.combine(matrix, out=out),  # into a preallocated update
        "mtlkit plain": lambda: ours.combine(matrix),  # allocates its output, as TorchJD
        "fresh output": lambda: torch.empty(p, device=device).fill_(0.0),  # alloc + touch
    }
    if torchjd is not None:
        fns["torchjd"] = lambda: torchjd(matrix)
    if p * k <= 8 * 23_000_000:
        pg = torch.Generator().manual_seed(0)
        fns["port loop"] = lambda: port_style_pcgrad(matrix, pg)
    if compile_mode is not None:
        # the plain call compiled whole: the K x K surgery's small ops fused by inductor,
        # and with mode="reduce-overhead" on CUDA the call is one CUDA graph (its output
        # comes from the graph's pool, so it is timed beside the plain call)
        compiled = PCGrad(seed=0)
        fn = torch.compile(
            lambda j: compiled.combine(j),
            fullgraph=True,
            mode=None if compile_mode == "default" else compile_mode,
        )
        fns["mtlkit compiled"] = lambda: fn(matrix)
    t = timed(fns, repeats, device)
    ref = exact_pcgrad(matrix.cpu(), seed=5)
    mine = PCGrad(seed=5).combine(matrix).double().cpu()
    row = {"P": p, "K": k, **{f"{n} ms": 1e3 * v for n, v in t.items()}}
    row["mtlkit err"] = ((mine - ref).norm() / ref.norm()).item()
    row["mtlkit ops"] = count_ops(fns["mtlkit plain"])
    if "torchjd" in fns:
        row["torchjd ops"] = count_ops(fns["torchjd"])
    if compile_mode is not None:
        # a fresh strategy of the same seed, compiled, must give what the eager one gave
        again = PCGrad(seed=5)
        got = torch.compile(lambda j: again.combine(j), fullgraph=True)(matrix)
        row["compiled err"] = ((got.double().cpu() - ref).norm() / ref.norm()).item()
        row["compiled / read"] = t["mtlkit compiled"] / t["read pass"]
        row["compiled / plain"] = t["mtlkit compiled"] / t["mtlkit plain"]
    row["mtlkit / read"] = t["mtlkit"] / t["read pass"]
    row["plain / (out + fresh output)"] = t["mtlkit plain"] / (t["mtlkit"] + t["fresh output"])
    if "torchjd" in t:
        row["mtlkit / torchjd"] = t["mtlkit"] / t["torchjd"]
        # like for like: both allocate their output
        row["mtlkit plain / torchjd"] = t["mtlkit plain"] / t["torchjd"]
    # Gramian drift (TorchJD forms G = J Jᵀ in float32; its PCGrad uses its own orders)
    exact_gram = (matrix.double() @ matrix.double().T).cpu()
    norms = exact_gram.diagonal().sqrt()
    scale = norms[:, None] * norms[None, :]
    f32_gram = (matrix @ matrix.T).double().cpu()
    row["float32 J@J.T err"] = ((f32_gram - exact_gram).abs() / scale).max().item()
    ours_gram = mtlkit._linalg.gramian(matrix).cpu()
    row["mtlkit gram err"] = ((ours_gram - exact_gram).abs() / scale).max().item()
    return row


def aggregation(
    sizes: list[int],
    ks: list[int],
    repeats: int,
    device: torch.device,
    compile_mode: str | None = None,
) -> list[dict]:
    """One row per (P, K); ``compile_mode`` adds mtlkit's combine compiled whole with
    ``torch.compile(fullgraph=True, mode=...)`` (``"default"``: inductor's default mode)."""
    torchjd = _torchjd_pcgrad()
    rows = []
    for p in sizes:
        for k in ks:
            row = _aggregate_one(p, k, repeats, device, torchjd, compile_mode)
            print(json.dumps(row))
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- end to end
#: The end-to-end model: a trunk of TRUNK_DEPTH Linear + tanh blocks of one width (the
#: shared parameters) and K Linear(width, HEAD_OUT) heads, each with a mean squared error.
TRUNK_DEPTH = 4
HEAD_OUT = 4
#: Aggregators of the end-to-end section: mtlkit's strategy name -> TorchJD's class name.
ENDTOEND_AGGREGATORS = {"pcgrad": "PCGrad", "upgrad": "UPGrad", "imtl-g": "IMTLG"}
#: Largest K for which the exact UPGrad reference (2^K active sets per task) is computed.
UPGRAD_REFERENCE_MAX_K = 12


def _flat(tensors: list[Tensor | None]) -> Tensor:
    """The tensors flattened and concatenated, float64 on the CPU (a missing one raises)."""
    if any(t is None for t in tensors):
        raise RuntimeError("a gradient was not written")
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors if t is not None])


def max_rel_diff(got: Tensor, ref: Tensor) -> float:
    """max |got - ref| / max |ref| (float64)."""
    return float((got.double() - ref.double()).abs().max() / ref.double().abs().max())


class EndToEndProblem:
    """A shared trunk of about ``p`` parameters, ``k`` task heads and one fixed batch.

    The heads share one weight direction and the targets of even and odd tasks have
    opposite signs, so tasks conflict (PCGrad and UPGrad then differ from the sum).
    """

    def __init__(self, p: int, k: int, batch: int, device: torch.device, seed: int = 0) -> None:
        width = max(2, round(math.sqrt(p / TRUNK_DEPTH)))
        with torch.random.fork_rng(devices=[]):  # seeded, leaving torch's generator alone
            torch.manual_seed(seed)
            blocks: list[nn.Module] = []
            for _ in range(TRUNK_DEPTH):
                blocks += [nn.Linear(width, width), nn.Tanh()]
            trunk = nn.Sequential(*blocks)
            heads = nn.ModuleList(nn.Linear(width, HEAD_OUT) for _ in range(k))
        with torch.no_grad():
            common = heads[0].weight.clone()
            for head in heads:
                head.weight.mul_(0.5).add_(common)
        self.trunk, self.heads = trunk.to(device), heads.to(device)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, width, generator=gen).to(device)
        shared_target = 2.0 * torch.randn(batch, HEAD_OUT, generator=gen)
        self.targets = [
            ((-1.0) ** t * shared_target + torch.randn(batch, HEAD_OUT, generator=gen)).to(device)
            for t in range(k)
        ]
        self.shared = list(self.trunk.parameters())
        self.head_params = [list(head.parameters()) for head in self.heads]
        self.params = [*self.shared, *(q for ps in self.head_params for q in ps)]
        self.numel = sum(q.numel() for q in self.shared)

    def zero_grad(self) -> None:
        for q in self.params:
            q.grad = None

    def forward(self) -> tuple[Tensor, list[Tensor]]:
        """The trunk's features and the K task losses."""
        z = self.trunk(self.x)
        losses = [
            nn.functional.mse_loss(head(z), y)
            for head, y in zip(self.heads, self.targets, strict=True)
        ]
        return z, losses

    def reference(self) -> tuple[Tensor, list[Tensor]]:
        """Per-task gradients by plain autograd, one task at a time: J (K x P) and each
        head's own gradient, flat, float64 on the CPU."""
        _, losses = self.forward()
        n, k = len(self.shared), len(losses)
        rows, heads = [], []
        for t, loss in enumerate(losses):
            grads = torch.autograd.grad(
                loss, [*self.shared, *self.head_params[t]], retain_graph=t < k - 1
            )
            rows.append(_flat(list(grads[:n])))
            heads.append(_flat(list(grads[n:])))
        return torch.stack(rows), heads


def dual_cone_weights(gram: Tensor, u: Tensor) -> Tensor:
    """argmin over v >= u of vᵀ G v, for a positive definite K x K ``gram`` (float64).

    Exact, by trying every set of free coordinates (2^K, small K): with the others held
    at u, the free ones solve (G v)_free = 0; the optimum is the one that meets the KKT
    conditions, v_free >= u_free and (G v)_held >= 0.
    """
    k = u.shape[0]
    scale = float(gram.diagonal().max())
    for mask in range(2**k):
        free = torch.tensor([i for i in range(k) if mask >> i & 1], dtype=torch.long)
        held = torch.tensor([i for i in range(k) if not mask >> i & 1], dtype=torch.long)
        v = u.clone()
        if len(free):
            rhs = -(gram[free][:, held] @ u[held])
            v[free] = torch.linalg.solve(gram[free][:, free], rhs)
        if bool((v[free] >= u[free] - 1e-9).all()) and bool(
            ((gram @ v)[held] >= -1e-9 * scale).all()
        ):
            return v
    raise RuntimeError("no active set satisfies the KKT conditions (is G singular?)")


def upgrad_reference(matrix: Tensor) -> Tensor:
    """UPGrad (Quinton & Rey 2024) in float64: the mean of the rows' projections onto the
    dual cone of the rows, the projection of g_i being vᵀJ with v = argmin_{v >= e_i} vᵀGv."""
    j64 = matrix.double()
    k = j64.shape[0]
    gram = j64 @ j64.T
    eye = torch.eye(k, dtype=torch.float64)
    weights = torch.stack([dual_cone_weights(gram, eye[i]) for i in range(k)]).sum(dim=0)
    return (weights / k) @ j64


def imtlg_reference(matrix: Tensor) -> Tensor:
    """IMTL-G (Liu et al. 2021, ICLR) in float64, the paper's closed form in P-space:
    α_{2:K} = g_1 Uᵀ (D Uᵀ)⁻¹, α_1 = 1 - Σ α_{2:K}, rows D_t = g_1 - g_t, U_t = u_1 - u_t
    (G invertible)."""
    j64 = matrix.double()
    units = j64 / j64.norm(dim=1, keepdim=True)
    d_rows, u_rows = j64[0] - j64[1:], units[0] - units[1:]
    tail = torch.linalg.solve((d_rows @ u_rows.T).T, u_rows @ j64[0])
    alpha = torch.cat([(1 - tail.sum()).reshape(1), tail])
    return alpha @ j64


def _mtlkit_strategy(name: str, k: int) -> mtlkit.Strategy:
    return mtlkit.get_strategy(name, context=mtlkit.Context(num_tasks=k, seed=0))


def _torchjd_endtoend() -> dict[str, Any] | None:
    try:
        import torchjd.aggregation
        from torchjd.autojac import backward, jac_to_grad, mtl_backward
    except ImportError:
        print("torchjd not installed (pip install -e '.[bench]'): skipping its columns")
        return None
    return {
        "aggregation": torchjd.aggregation,
        "backward": backward,
        "jac_to_grad": jac_to_grad,
        "mtl_backward": mtl_backward,
    }


def _torchjd_aggregator(tjd: dict[str, Any] | None, name: str) -> Any | None:
    if tjd is None:
        return None
    cls = ENDTOEND_AGGREGATORS[name]
    try:
        return getattr(tjd["aggregation"], cls)()
    except ImportError as err:  # e.g. UPGrad's quadprog projector without its extras
        print(f"torchjd {cls} unavailable ({err}): skipping its columns")
        return None


def _endtoend_one(
    name: str,
    p: int,
    k: int,
    batch: int,
    repeats: int,
    device: torch.device,
    tjd: dict[str, Any] | None,
) -> dict:
    prob = EndToEndProblem(p, k, batch, device)
    engines = {
        "mtlkit": TaskGradients(prob.shared, _mtlkit_strategy(name, k), num_tasks=k),
        "mtlkit batched": TaskGradients(prob.shared, _mtlkit_strategy(name, k), num_tasks=k),
    }

    def summed() -> None:
        prob.zero_grad()
        _, losses = prob.forward()
        sum(losses).backward()  # type: ignore[union-attr]

    def ours() -> None:
        prob.zero_grad()
        _, losses = prob.forward()
        engines["mtlkit"].backward_all(losses)  # one backward per task through the trunk
        engines["mtlkit"].write_grad()

    def ours_batched() -> None:
        prob.zero_grad()
        _, losses = prob.forward()
        engines["mtlkit batched"].backward_all(losses, mode="batched")
        engines["mtlkit batched"].write_grad()

    fns: dict[str, Callable[[], object]] = {
        "summed": summed,
        "mtlkit": ours,
        "mtlkit batched": ours_batched,
    }
    aggregator = _torchjd_aggregator(tjd, name)
    if tjd is not None and aggregator is not None:
        mtl_backward, backward, jac_to_grad = (
            tjd["mtl_backward"],
            tjd["backward"],
            tjd["jac_to_grad"],
        )

        def theirs() -> None:
            prob.zero_grad()
            z, losses = prob.forward()
            mtl_backward(
                losses, features=z, tasks_params=prob.head_params, shared_params=prob.shared
            )
            jac_to_grad(prob.shared, aggregator)

        def theirs_backward() -> None:  # the shared parameters only: no head gets a .grad
            prob.zero_grad()
            _, losses = prob.forward()
            backward(losses, inputs=prob.shared)
            jac_to_grad(prob.shared, aggregator)

        fns["torchjd"] = theirs
        fns["torchjd backward"] = theirs_backward
    t = timed(fns, repeats, device)

    # Agreement: one more call of each (after the timed ones, so a call that leaves stale
    # gradients behind shows), against float64 rules on plain per-task autograd gradients.
    ref_j, ref_heads = prob.reference()
    gram = ref_j @ ref_j.T
    norms = gram.diagonal().sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    # TorchJD's PCGrad draws its task orders from torch's global generator: its update is
    # comparable only when the order does not matter (K = 2)
    comparable = name != "pcgrad" or k == 2
    errs: dict[str, float] = {}
    grads: dict[str, Tensor] = {}
    for label, fn in fns.items():
        if label.startswith("torchjd") and not comparable:
            continue
        engine = engines.get(label)
        strategy = engine.strategy if engine is not None else None
        state = strategy.generator.get_state() if isinstance(strategy, PCGrad) else None
        fn()
        sync(device)
        grads[label] = _flat([q.grad for q in prob.shared])
        if label == "summed":
            ref = ref_j.sum(dim=0)
        elif name == "pcgrad":
            if state is None:  # TorchJD (K = 2): the only order
                orders = [[j for j in range(k) if j != i] for i in range(k)]
            else:  # the orders the engine's strategy drew in that call
                replay = PCGrad(seed=0)
                replay.generator.set_state(state)
                orders = replay.draw_orders(k).tolist()
            ref = pcgrad_with_orders(ref_j, orders)
        elif name == "imtl-g":
            ref = imtlg_reference(ref_j)
        elif k <= UPGRAD_REFERENCE_MAX_K:
            ref = upgrad_reference(ref_j)
        else:
            continue
        err = max_rel_diff(grads[label], ref)
        if label != "torchjd backward":  # every head gets its own task's gradient
            for params, ref_head in zip(prob.head_params, ref_heads, strict=True):
                err = max(err, max_rel_diff(_flat([q.grad for q in params]), ref_head))
        errs[label] = err

    row: dict[str, object] = {"aggregator": name, "P": prob.numel, "K": k}
    row["min cos"] = float(cos.masked_fill(torch.eye(k, dtype=torch.bool), 1.0).min())
    row.update({f"{n} ms": 1e3 * v for n, v in t.items()})
    if "torchjd" in t:
        row["mtlkit / torchjd"] = t["mtlkit"] / t["torchjd"]
        row["mtlkit batched / torchjd"] = t["mtlkit batched"] / t["torchjd"]
    for label in ("mtlkit", "mtlkit batched", "torchjd", "torchjd backward"):
        if label in t:
            row[f"{label} / summed"] = t[label] / t["summed"]
    row["summed err"] = errs["summed"]
    if "mtlkit" in errs:
        row["mtlkit err"] = max(errs["mtlkit"], errs["mtlkit batched"])
    if "torchjd" in errs:
        row["torchjd err"] = max(errs["torchjd"], errs["torchjd backward"])
    if "torchjd" in grads:
        row["mtlkit vs torchjd"] = max(
            max_rel_diff(grads[label], grads["torchjd"]) for label in ("mtlkit", "mtlkit batched")
        )
    return row


def endtoend(
    sizes: list[int],
    ks: list[int],
    repeats: int,
    device: torch.device,
    batch: int,
    aggregators: list[str],
) -> list[dict]:
    unknown = [a for a in aggregators if a not in ENDTOEND_AGGREGATORS]
    if unknown:
        raise ValueError(f"end-to-end aggregators are {list(ENDTOEND_AGGREGATORS)}, got {unknown}")
    tjd = _torchjd_endtoend()
    rows = []
    for name in aggregators:
        for p in sizes:
            for k in ks:
                row = _endtoend_one(name, p, k, batch, repeats, device, tjd)
                print(json.dumps(row))
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------- steps
#: Checkpoint folder for the miniBERT sections (None: the embedded all-MiniLM-L6-v2), and
#: whether to use random weights of its config (speed does not depend on the values; for a
#: machine without the weights package, a folder with config.json and vocab.txt will do).
WEIGHTS: dict[str, object] = {"folder": None, "random": False}


def minibert_setup(device: torch.device, batch: int, seed: int = 0):  # type: ignore[no-untyped-def]
    from examples.minbert.data import Collate, ExampleDataset, dataset_path
    from examples.minbert.model import BertConfig, BertModel
    from examples.minbert.multitask import MultitaskBert
    from examples.minbert.tasks import TASKS, make_tasks
    from examples.minbert.tokenizer import BertTokenizer
    from examples.minbert.weights import load_pretrained

    torch.manual_seed(seed)
    folder = WEIGHTS["folder"]
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if WEIGHTS["random"]:
        cfg = BertConfig.from_json(Path(str(folder)) / "config.json")
        encoder = BertModel(BertConfig.from_dict({**cfg.to_dict(), **no_dropout}))
    else:
        encoder, _, _ = load_pretrained(folder, config_overrides=no_dropout)  # type: ignore[arg-type]
    tasks = make_tasks(list(TASKS))  # the main job's tasks and structures (no head dropout)
    model = MultitaskBert(encoder, tasks).to(device)
    tok = BertTokenizer.from_folder(folder)  # type: ignore[arg-type]
    batches = []
    for task in tasks:
        data = ExampleDataset(task.read(dataset_path(task.name, "train"), limit=batch))
        batches.append(Collate(tok, pair_mode=task.pair_mode)(data.examples).to(device))
    return model, batches


def steps(device: torch.device, batch: int, repeats: int, compile_mode: str | None = None) -> dict:
    """The miniBERT step, PCGrad loop against the summed loop. ``compile_mode``: both loops
    run the model's task losses under ``torch.compile(mode=compile_mode)`` (on CUDA,
    ``"reduce-overhead"`` replays them as CUDA graphs) and the engine checks nothing on
    the host (``nonfinite="defer"``), so the PCGrad step never waits for the device."""
    model, batches = minibert_setup(device, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every step sees the same model
    shared = model.shared_parameters()
    k = len(batches)
    policy: Literal["raise", "defer"] = "defer" if compile_mode else "raise"
    engine = TaskGradients(shared, PCGrad(seed=0), num_tasks=k, nonfinite=policy)
    task_loss = model.task_loss
    if compile_mode:
        task_loss = torch.compile(model.task_loss, mode=compile_mode)

    def summed() -> None:
        if compile_mode and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        for t, b in enumerate(batches):
            task_loss(t, b).backward()
        opt.step()

    def pcgrad() -> None:
        if compile_mode and device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        for t, b in enumerate(batches):
            engine.backward(t, task_loss(t, b))
        engine.write_grad()
        opt.step()

    t = timed({"summed loop": summed, "pcgrad loop": pcgrad}, repeats, device)
    engine.check_nonfinite()
    res: dict[str, Any] = {"compile": compile_mode or "eager"}
    res.update({f"{k} s": v for k, v in t.items()})
    res["pcgrad / summed"] = t["pcgrad loop"] / t["summed loop"]
    if compile_mode:  # the one-graph variants below are eager-only
        res["P"] = sum(p.numel() for p in shared)
        print(json.dumps(res))
        return res
    if device.type == "cuda":  # peak memory of each loop, from the same starting point
        for name, fn in (("summed", summed), ("pcgrad", pcgrad)):
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            res[f"{name} peak growth MiB"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        p_numel = sum(p.numel() for p in shared)
        res["pcgrad extra / (K*P*4)"] = (
            (res["pcgrad peak growth MiB"] - res["summed peak growth MiB"])
            * 2**20
            / (k * p_numel * 4)
        )

    # one batch and one graph for all tasks: SST sentences feed three heads
    sst = batches[[task.name for task in model.tasks].index("sst")]
    sst_head = model.heads["sst"].linear
    y_q = (sst.labels % 2).float()
    y_s = sst.labels.float()

    def head_losses(z: torch.Tensor) -> list[torch.Tensor]:
        return [
            torch.nn.functional.cross_entropy(sst_head(z), sst.labels),
            torch.nn.functional.binary_cross_entropy_with_logits((z @ sst_head.weight[0]), y_q),
            torch.nn.functional.mse_loss(z.mean(-1), y_s),
        ]

    def one_graph_sum() -> None:
        opt.zero_grad(set_to_none=True)
        torch.stack(head_losses(model.embed(sst.inputs))).sum().backward()
        opt.step()

    def one_graph_param_level() -> None:
        opt.zero_grad(set_to_none=True)
        mtlkit.backward(head_losses(model.embed(sst.inputs)), shared, PCGrad(seed=0))
        opt.step()

    def one_graph_features() -> None:
        opt.zero_grad(set_to_none=True)
        feats = SharedFeatures(model.embed(sst.inputs))
        feats.backward(head_losses(feats.value), PCGrad(seed=0))
        opt.step()

    t2 = timed(
        {"sum": one_graph_sum, "param": one_graph_param_level, "features": one_graph_features},
        repeats,
        device,
    )
    res["one-graph summed s"] = t2["sum"]
    res["one-graph per-task backward / summed"] = t2["param"] / t2["sum"]
    res["one-graph SharedFeatures / summed"] = t2["features"] / t2["sum"]
    res["P"] = sum(p.numel() for p in shared)
    print(json.dumps(res))
    return res


# ----------------------------------------------------------------------------- memory
def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _peak_child(kind: str, batch: int, n: int) -> None:
    """Peak RSS of n training steps, counted from after the set-up (Linux clear_refs)."""
    import gc

    model, batches = minibert_setup(torch.device("cpu"), batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    engine = TaskGradients(model.shared_parameters(), PCGrad(seed=0), num_tasks=len(batches))
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    base = _vm_hwm()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        for t, b in enumerate(batches):
            loss = model.task_loss(t, b)
            if kind == "pcgrad":
                engine.backward(t, loss)
            else:
                loss.backward()
        if kind == "pcgrad":
            engine.write_grad()
        opt.step()
    print(_vm_hwm() - base)


def memory(batch: int) -> dict:
    peaks = {}
    for kind in ("summed", "pcgrad"):
        out = subprocess.run(
            [sys.executable, __file__, "--_child", kind, "--batch", str(batch)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        peaks[kind] = int(out.stdout.strip().splitlines()[-1])
    from examples.minbert.multitask import MultitaskBert
    from examples.minbert.tasks import TASKS, make_tasks
    from examples.minbert.weights import load_pretrained

    enc, _, _ = load_pretrained(None)
    tasks = make_tasks(list(TASKS))
    k = len(tasks)
    p = sum(x.numel() for x in MultitaskBert(enc, tasks).shared_parameters())
    res = {
        "summed loop peak growth MiB": peaks["summed"] / 2**20,
        "pcgrad loop peak growth MiB": peaks["pcgrad"] / 2**20,
        "extra MiB": (peaks["pcgrad"] - peaks["summed"]) / 2**20,
        "budget 1.1*K*P*4 MiB": 1.1 * k * p * 4 / 2**20,
    }
    print(json.dumps(res))
    return res


def table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k, "")
            if isinstance(v, float):
                v = f"{v:.3g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.3f}"
            cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sizes", default="22700000", help="comma-separated P values")
    ap.add_argument("--ks", default="2,3,8")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sections", default="aggregation,endtoend,step,memory")
    ap.add_argument(
        "--aggregators",
        default="pcgrad,upgrad",
        help="end-to-end section: the aggregators compared (pcgrad, upgrad, imtl-g)",
    )
    ap.add_argument(
        "--aggregation-compile",
        default=None,
        help="aggregation section: also time mtlkit's PCGrad combine compiled whole "
        "(torch.compile fullgraph=True) in this mode ('default', 'max-autotune', ...)",
    )
    ap.add_argument(
        "--step-compile",
        default=None,
        help="step section: compile the task losses with this torch.compile mode (e.g. "
        "reduce-overhead: CUDA graphs on a GPU) in both loops, engine nonfinite='defer'",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--weights", default=None, help="checkpoint folder (default: embedded)")
    ap.add_argument(
        "--random-init",
        action="store_true",
        help="random weights of --weights' config.json (timing only)",
    )
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        _peak_child(args._child, args.batch, 3)
        return
    WEIGHTS.update(folder=args.weights, random=args.random_init)
    device = torch.device(args.device)
    sections = args.sections.split(",")
    report = [
        f"# mtlkit speed benchmark\n\nCommand: `python benchmarks/{Path(__file__).name} "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + f"`\n\nMachine: {machine()}\n"
    ]
    if "aggregation" in sections:
        rows = aggregation(
            [int(s) for s in args.sizes.split(",")],
            [int(k) for k in args.ks.split(",")],
            args.repeats,
            device,
            args.aggregation_compile,
        )
        report.append("## PCGrad aggregation (medians, interleaved)\n\n" + table(rows) + "\n")
    if "endtoend" in sections:
        rows = endtoend(
            [int(s) for s in args.sizes.split(",")],
            [int(k) for k in args.ks.split(",")],
            args.repeats,
            device,
            args.batch,
            args.aggregators.split(","),
        )
        report.append(
            f"## End to end: K losses -> combined .grad, batch {args.batch} "
            "(medians, interleaved; err: max relative difference)\n\n" + table(rows) + "\n"
        )
    if "step" in sections:
        res = steps(device, args.batch, args.repeats, args.step_compile)
        title = "## miniBERT step, 3 tasks (medians, interleaved"
        title += f"; task losses compiled, mode={args.step_compile})" if args.step_compile else ")"
        report.append(title + "\n\n" + table([res]) + "\n")
    if "memory" in sections and device.type == "cpu":
        res = memory(args.batch)
        report.append(
            "## Peak memory (growth of max RSS over 3 steps after set-up, fresh process each)\n\n"
            + table([res])
            + "\n"
        )
    text = "\n".join(report)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
