"""Memory per rank of the miniBERT multitask step with FSDP2-sharded shared parameters.

For 1, 2 and 4 processes (gloo on the CPU; one process per GPU with ``--device cuda``),
each rank builds the miniBERT encoder (the embedded all-MiniLM-L6-v2 weights, or a tiny
random one with ``--random-init``), shards the embeddings and every transformer layer
with ``fully_shard`` (one process: no sharding), and runs the one-batch-per-task PCGrad
step of the README through :class:`mtlkit.TaskGradients`. Per rank it records the size
of J (K x local shard size x 4 bytes), the memory before the first step and the peak
after the steps (CPU: the process's peak resident set; CUDA: peak allocated), and the
time per step. Writes a markdown table.

    python benchmarks/fsdp_memory.py --worlds 1,2,4 --steps 3 \
        --out benchmarks/results/fsdp-memory-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mtlkit  # noqa: E402

K = 3


def _rss_mib() -> float:
    """Peak resident set of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Heads(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.sst = nn.Linear(hidden, 5)
        self.pair = nn.Linear(3 * hidden, 1)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if world > 1:
        if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in os.environ:
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group(
            "gloo" if device.type == "cpu" else "nccl",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=300),
        )
    try:
        torch.manual_seed(0)
        if args.random_init:
            from examples.minbert.model import BertConfig, BertModel

            encoder = BertModel(BertConfig.tiny(vocab_size=1000, max_position_embeddings=64))
        else:
            from examples.minbert.weights import load_pretrained

            encoder, _, _ = load_pretrained(args.weights)
        encoder.to(device)
        heads = Heads(encoder.config.hidden_size).to(device)
        shared = [
            *encoder.embeddings.parameters(),
            *encoder.encoder.parameters(),
        ]  # the pooler is used by no head: not shared
        if world > 1:
            from torch.distributed.fsdp import fully_shard

            fully_shard(encoder.embeddings)
            for layer in encoder.encoder.layer:
                fully_shard(layer)
            for head in (heads.sst, heads.pair):  # each called on its own
                fully_shard(head)
            shared = [*encoder.embeddings.parameters(), *encoder.encoder.parameters()]
        engine = mtlkit.TaskGradients(shared, mtlkit.PCGrad(seed=0), num_tasks=K)
        params = shared + list(heads.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        vocab = encoder.config.vocab_size
        gen = torch.Generator().manual_seed(rank)

        def tokens(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            ids = torch.randint(vocab // 10, vocab, (n, args.seq), generator=gen).to(device)
            return ids, torch.ones_like(ids)

        def embed(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            hidden = encoder.hidden_states(ids, mask)
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

        def losses() -> list[torch.Tensor]:
            b = args.batch // world
            out = []
            u = embed(*tokens(b))
            out.append(F.cross_entropy(heads.sst(u), torch.randint(0, 5, (b,)).to(device)))
            a, c = embed(*tokens(b)), embed(*tokens(b))
            logit = heads.pair(torch.cat([a, c, (a - c).abs()], -1)).squeeze(-1)
            out.append(F.binary_cross_entropy_with_logits(logit, torch.ones(b, device=device)))
            a, c = embed(*tokens(b)), embed(*tokens(b))
            out.append(F.mse_loss(5 * F.cosine_similarity(a, c), torch.full((b,), 2.5)))
            return out

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        before = _rss_mib() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            for k in range(K):
                engine.backward(k, losses()[k])
            engine.write_grad()
            optimizer.step()
            times.append(time.perf_counter() - t0)
        peak = (
            _rss_mib() if device.type == "cpu" else torch.cuda.max_memory_allocated(device) / 2**20
        )
        jac = engine.jacobian
        assert jac is not None
        row = {
            "world": world,
            "rank": rank,
            "local_numel": jac.shape[1],
            "j_mib": jac.numel() * jac.element_size() / 2**20,
            "before_mib": before,
            "peak_mib": peak,
            "step_s": sorted(times)[len(times) // 2],
        }
        torch.save(row, Path(out) / f"w{world}-r{rank}.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="examples per task, all ranks")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--weights", default=None, help="checkpoint folder (default: embedded)")
    parser.add_argument("--random-init", action="store_true", help="tiny random encoder")
    parser.add_argument("--scratch", default=None, help="folder for per-rank results")
    parser.add_argument("--out", default=None, help="markdown file for the table")
    args = parser.parse_args(argv)
    import tempfile

    import torch.multiprocessing as mp

    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="fsdp-memory-"))
    scratch.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for world in [int(w) for w in args.worlds.split(",")]:
        mp.spawn(_worker, args=(world, _free_port(), args, str(scratch)), nprocs=world)
        rows += [torch.load(scratch / f"w{world}-r{r}.pt") for r in range(world)]
    lines = [
        "| processes | rank | J columns (local) | J MiB | memory before MiB | peak MiB | step s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['world']} | {r['rank']} | {r['local_numel']:,} | {r['j_mib']:.1f} | "
            f"{r['before_mib']:.0f} | {r['peak_mib']:.0f} | {r['step_s']:.2f} |"
        )
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    text = (
        "# FSDP2 memory per rank, miniBERT PCGrad step\n\n"
        f"Command: `python benchmarks/fsdp_memory.py {' '.join(argv or sys.argv[1:])}`\n\n"
        f"Machine: {machine}, torch {torch.__version__}, device {args.device}; K = {K}, "
        f"{args.batch} examples per task and step over all ranks, sequence length {args.seq}. "
        "CPU memory is each process's peak resident set (libraries, model, optimizer, "
        "activations, J); J MiB is K x local shard size x 4 bytes.\n\n" + "\n".join(lines) + "\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
