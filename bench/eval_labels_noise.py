"""How noisy is ``eval-labels``' ground truth as a function of ``--n``?

    .venv/bin/python bench/eval_labels_noise.py --db data/demo.db [--seeds 4] [--per-seed 100]
        [--n 30 90 150] [--reps 5] [--threads 2]

Renders ``--seeds`` × ``--per-seed`` held-out renderings per concept and modality of the demo world
(seeds other than training's and eval's), captures the index's layers (spatial max, the index's
own measure) and, for each ``n`` and ``--reps`` random splits, prints:

* ``two draws agree``: share of units selective in one draw of ``n`` per class (best d′ ≥ 1.5) whose
  most selective concept is the same in another, disjoint draw of ``n``;
* ``truth-knowing labeller``: the ``label accuracy`` (eval-labels' definition) of a labeller that
  names each unit's most selective concept measured on all the other renderings of the pool: what
  a near-perfect labeller can score against a ground truth of ``n`` per class.

Medians and spread over the splits. The baseline in the same run is ``n`` = the first ``--n``.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.models import ModelSpec, load_model  # noqa: E402
from app.neurons.capture import layer_maps  # noqa: E402
from app.neurons.multimodality import text_tag  # noqa: E402
from app.neurons.zeroshot import preprocess_batch  # noqa: E402
from precompute.demo_eval import KINDS, dprime, eval_set  # noqa: E402
from precompute.eval_labels import SELECTIVE, _concept  # noqa: E402

FIRST_SEED = 5_000_011


def capture(db: str, seeds: int, per_seed: int) -> tuple[list[str], dict, dict]:
    """Candidates, ``(modality, kind) -> labels`` and ``(modality, kind) -> layer -> values``."""
    con = sqlite3.connect(db)
    name, pretrained = con.execute("select name, pretrained from models order by id limit 1").fetchone()
    layers = [r[0] for r in con.execute("select name from layers order by position")]
    con.close()
    loaded = load_model(ModelSpec(name, pretrained), "cpu")
    infos = [loaded.layer(n) for n in layers]
    candidates, labels, values = [], {}, {}
    for modality in ("object", "text"):
        for kind, classes in KINDS.items():
            candidates += [c if modality == "object" else text_tag(c) for c in classes]
            acts: dict[str, list[np.ndarray]] = {n: [] for n in layers}
            labs = []
            for s in range(seeds):
                images, lab = eval_set(modality, kind, per_seed, FIRST_SEED + 1_000_000 * s)
                labs.append(lab)
                with torch.inference_mode():
                    for start in range(0, len(images), 64):
                        x = preprocess_batch(loaded, images[start : start + 64])
                        for n, m in layer_maps(loaded, x, infos).items():
                            acts[n].append(m.amax(dim=(2, 3)).float().cpu().numpy())
            labels[(modality, kind)] = np.concatenate(labs)
            values[(modality, kind)] = {n: np.concatenate(v) for n, v in acts.items()}
    return candidates, labels, values


def dprimes(labels: dict, values: dict, rows: dict) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for key, lab in labels.items():
        r = rows[key]
        for n, v in values[key].items():
            for ci in range(int(lab.max()) + 1):
                out.setdefault(n, []).append(dprime(v[r], lab[r] == ci))
    return {n: np.stack(v) for n, v in out.items()}


def split(rng: np.random.Generator, labels: dict, sizes: list[int | None]) -> list[dict]:
    outs: list[dict] = [{} for _ in sizes]
    for key, lab in labels.items():
        parts: list[list[np.ndarray]] = [[] for _ in sizes]
        for c in np.unique(lab):
            ix, start = rng.permutation(np.flatnonzero(lab == c)), 0
            for k, n in enumerate(sizes):
                take = ix[start:] if n is None else ix[start : start + n]
                start += len(take)
                parts[k].append(take)
        for k in range(len(sizes)):
            outs[k][key] = np.concatenate(parts[k])
    return outs


def agreement(cands: list[str], truth: dict, other: dict) -> float:
    hit = total = 0
    for n, d in truth.items():
        for u in range(d.shape[1]):
            col = np.nan_to_num(d[:, u], nan=-np.inf)
            if col.max() < SELECTIVE:
                continue
            total += 1
            best = np.nan_to_num(other[n][:, u], nan=-np.inf).argmax()
            hit += _concept(cands[int(col.argmax())]) == _concept(cands[int(best)])
    return hit / total if total else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--per-seed", type=int, default=100)
    parser.add_argument("--n", type=int, nargs="+", default=[30, 90, 150])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cands, labels, values = capture(args.db, args.seeds, args.per_seed)
    pool = args.seeds * args.per_seed
    print(f"pool: {pool} renderings per concept and modality")
    base = None
    for n in args.n:
        two, ceiling = [], []
        for rep in range(args.reps):
            rng = np.random.default_rng(rep)
            if 2 * n <= pool:
                a, b = split(rng, labels, [n, n])
                two.append(agreement(cands, dprimes(labels, values, a), dprimes(labels, values, b)))
            a, rest = split(rng, labels, [n, None])
            ceiling.append(agreement(cands, dprimes(labels, values, a), dprimes(labels, values, rest)))
        med = float(np.median(ceiling))
        base = med if base is None else base
        print(f"n={n}: two draws agree {np.median(two) if two else float('nan'):.3f} "
              f"(min {min(two, default=float('nan')):.3f}, max {max(two, default=float('nan')):.3f}); "
              f"truth-knowing labeller (other {pool - n}/class) {med:.3f} "
              f"(min {min(ceiling):.3f}, max {max(ceiling):.3f}); ratio to n={args.n[0]}: {med / base:.3f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
