"""Forward+backward speed of the miniBERT encoder against Hugging Face ``BertModel`` (SDPA).

Both models hold the same weights (the embedded all-MiniLM-L6-v2 by default) and see the same
padded batch; each timed step is ``zero_grad``, forward, a scalar loss on both outputs, and
backward. Steps of the two models are interleaved so that machine noise hits both alike.

Run from the repository root: ``python benchmarks/encoder_speed.py [--batch 16] [--seq 64]
[--runs 10] [--device cpu] [--dtype float32] [--eval]``; ``--config config.json`` times
random weights of that shape instead of a checkpoint. Needs ``transformers`` (a dev
dependency). Before timing, the eval-mode outputs of the two models are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

# The example is not installed: it is imported from the checkout this script is in.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.minbert.model import BertConfig, BertModel  # noqa: E402
from examples.minbert.weights import load_pretrained  # noqa: E402


def _batch(batch: int, seq: int, vocab: int, device: torch.device) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (batch, seq), generator=gen)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=gen)
    lengths[0] = seq  # at least one full row, so the batch really is seq long
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # [PAD] = 0 after each row's end
    types = torch.zeros_like(ids)
    return {
        "input_ids": ids.to(device),
        "attention_mask": mask.to(device),
        "token_type_ids": types.to(device),
    }


def _step_fn(model: nn.Module, inputs: dict[str, Tensor], hf: bool) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        if hf:
            out = model(**inputs)
            hidden, pooled = out.last_hidden_state, out.pooler_output
        else:
            hidden, pooled = model(**inputs)
        loss = hidden.square().mean() + pooled.mean()
        loss.backward()

    return step


def _time(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _models(args: argparse.Namespace) -> tuple[BertModel, nn.Module, BertConfig]:
    """Our model and Hugging Face's, holding the same weights."""
    import transformers

    if args.config is None:
        ours, config, vocab_path = load_pretrained(args.folder)
        theirs = transformers.BertModel.from_pretrained(
            str(vocab_path.parent), attn_implementation="sdpa"
        )
    else:  # random weights of the config's shapes: enough for timing, no checkpoint needed
        config = BertConfig.from_json(args.config)
        torch.manual_seed(0)
        ours = BertModel(config)
        hf_kwargs = {**config.to_dict(), "attn_implementation": "sdpa"}
        hf_config = transformers.BertConfig(**hf_kwargs)
        theirs = transformers.BertModel(hf_config)
        theirs.load_state_dict(ours.state_dict(), strict=False)
    return ours, theirs, config


def _max_differences(
    ours: nn.Module, theirs: nn.Module, inputs: dict[str, Tensor]
) -> tuple[float, float]:
    """Max abs differences of hidden states (real tokens) and pooled outputs, eval mode."""
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        hidden, pooled = ours(**inputs)
        out = theirs(**inputs)
    real = inputs["attention_mask"].bool()
    d_hidden = (hidden[real] - out.last_hidden_state[real]).abs().max().item()
    d_pooled = (pooled - out.pooler_output).abs().max().item()
    return float(d_hidden), float(d_pooled)


def main() -> None:
    """Parse arguments, time both models, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=None, help="checkpoint folder (default: all-MiniLM)")
    parser.add_argument(
        "--config", default=None, help="config.json: random weights instead of a checkpoint"
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--eval", action="store_true", help="eval mode (no dropout)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    ours, theirs, config = _models(args)
    models: dict[str, nn.Module] = {"minbert": ours, "transformers (sdpa)": theirs}
    for model in models.values():
        model.to(device=device, dtype=dtype)
    inputs = _batch(args.batch, args.seq, config.vocab_size, device)
    d_hidden, d_pooled = _max_differences(ours, theirs, inputs)
    for model in models.values():
        model.train(not args.eval)
    steps = {name: _step_fn(m, inputs, hf=name != "minbert") for name, m in models.items()}

    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.runs):
        for name, step in steps.items():
            elapsed = _time(step, device)
            if i >= args.warmup:
                times[name].append(elapsed)

    mode = "eval" if args.eval else "train (dropout on)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"forward+backward, batch {args.batch} x {args.seq} tokens, {args.dtype}, {name}, "
        f"{mode}, threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"{args.runs} runs"
    )
    print(f"max |diff| eval outputs: hidden {d_hidden:.2e}, pooled {d_pooled:.2e}")
    print(f"{'model':<22}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for name, values in times.items():
        print(
            f"{name:<22}{1e3 * statistics.median(values):>12.2f}"
            f"{1e3 * min(values):>10.2f}{1e3 * max(values):>10.2f}"
        )
    ratio = statistics.median(times["transformers (sdpa)"]) / statistics.median(times["minbert"])
    print(f"speed-up of minbert over transformers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
