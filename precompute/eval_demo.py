"""``conceptscope eval-demo``: zero-shot accuracy, typographic attacks and multimodal neurons of
the demo model, measured on held-out renderings (the measures are :mod:`precompute.demo_eval`,
which ``train-demo`` uses for its model card too)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.models.demo import load_demo_model
from precompute import demo_world as world
from precompute.demo_eval import evaluate, format_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope eval-demo``."""
    parser.add_argument("--weights", type=Path, default=None, help="safetensors (default: shipped)")
    parser.add_argument("--n", type=int, default=50, help="held-out images per class and modality")
    parser.add_argument("--seed", type=int, default=world.HELDOUT_SEED, help="held-out seed")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope eval-demo``."""
    torch.set_num_threads(args.threads)
    model, tokenizer = load_demo_model(args.weights)
    print(format_report(evaluate(model, None, tokenizer, n_per_class=args.n, seed=args.seed)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m precompute.eval_demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
