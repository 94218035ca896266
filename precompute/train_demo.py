"""``conceptscope train-demo``: train the bundled demo CLIP on the synthetic shapes-and-words world.

open_clip ``CLIP`` (ModifiedResNet vision tower, config ``conceptscope-demo``, built by
:func:`app.models.demo.create_demo_model`), open_clip's
``ClipLoss``, AdamW, linear warm-up then cosine decay, a fixed seed. Batches are rendered on the
fly from :mod:`precompute.demo_world` (training seed) with no caption content repeated more
than a few times in one batch, and a curriculum on written words (large, plain words first).
Writes fp16 safetensors weights, ``loss_curve.png`` and ``MODEL_CARD.md`` (evaluated with
:mod:`precompute.demo_eval`, the measures ``eval-demo`` prints too).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import re
import shutil
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.models import load_state_file
from app.models.demo import create_demo_model, last_block, load_demo_model, save_weights, to_tensor
from app.models.hooks import hooks
from app.models.registry import DEMO_MODEL_NAME, DEMO_WEIGHTS_NAME, WEIGHTS_DIR, demo_config
from precompute import demo_world as world
from precompute.demo_eval import REGRESSION, evaluate, format_report, zero_shot_accuracy

CURRICULUM: tuple[tuple[float, dict[str, Any]], ...] = (
    # (until this fraction of steps, world overrides)
    (0.25, {"word_size": (30, 60), "easy": True,
            "modality_weights": {"object": 0.2, "drawing": 0.1, "text": 0.5, "labelled_object": 0.2}}),
    (0.5, {"word_size": (26, 58),
           "modality_weights": {"object": 0.2, "drawing": 0.12, "text": 0.43, "labelled_object": 0.25}}),
    (1.0, {"word_size": world.DEFAULT_WORD_SIZE,
           "modality_weights": {"object": 0.22, "drawing": 0.13, "text": 0.4, "labelled_object": 0.25}}),
)  # fmt: skip
"""Large, plain (black/white ink, one font) words and more text first; the world's default
distribution at the end."""

TEXT_FIRST_STAGE: dict[str, Any] = {
    "word_size": (30, 60), "easy": True,
    "modality_weights": {"text": 0.75, "labelled_object": 0.25},
}  # fmt: skip
"""Optional first stage (``--text-first F``): written words and labelled objects only, so the
units that read a concept exist before plain objects and drawings of it are seen."""


def curriculum(text_first: float = 0.0) -> tuple[tuple[float, dict[str, Any]], ...]:
    """``CURRICULUM``, preceded by ``TEXT_FIRST_STAGE`` until ``text_first`` of the steps."""
    return ((text_first, TEXT_FIRST_STAGE),) + CURRICULUM if text_first > 0 else CURRICULUM

MAX_SAME_KEY = 5
"""At most this many captions with the same content per batch. With only 14 words, a stricter
limit would starve the batch of text images; a few same-content pairs only raise the loss floor."""

FINETUNE_OFFSET = 100_000
"""A fine-tune (``--init``) reads batches from here on: images no earlier run of ``--steps`` below
this has seen."""

MIN_TIMED_STEPS = 1000
"""Smallest step count ``--minutes`` may choose (keeps the run reproducible with ``--steps``)."""

_STRIP = re.compile(
    r"^(a photo of|a drawing of|a sketch of|the words?|a sign that says|something)\s+|"
    r"\s+written in text$|^(an?)\s+"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``conceptscope train-demo``."""
    parser.add_argument("--steps", type=int, default=4000, help="optimisation steps")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory")
    parser.add_argument(
        "--minutes", type=float, default=None,
        help="fit --steps to this time budget (measured during warm-up; reproduce with --steps N)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=128, help="batch size")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (data: TRAIN_SEED)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument(
        "--bare-captions", type=float, default=0.0,
        help="share of object/drawing/text captions that are the concept name alone",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=150, help="warm-up steps")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy CPU)"
    )
    parser.add_argument("--workers", type=int, default=1, help="DataLoader rendering workers")
    parser.add_argument("--eval-every", type=int, default=250, help="quick zero-shot check period")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="bfloat16 autocast on CPU (faster where AVX512-BF16/AMX exist)",
    )
    parser.add_argument("--no-card", action="store_true", help="skip the full eval + model card")
    parser.add_argument(
        "--card-only",
        action="store_true",
        help="only evaluate the weights in --out and rewrite MODEL_CARD.md",
    )
    parser.add_argument("--notes", type=Path, default=None, help="markdown appended to the card")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="model config JSON to train instead of the shipped one (copied next to the weights)",
    )  # fmt: skip
    parser.add_argument(
        "--matched-labels", type=float, default=None,
        help="share of labelled objects that carry their own colour/shape word (default: the world's)",
    )  # fmt: skip
    parser.add_argument(
        "--distractors", type=float, default=0.0,
        help="share of text images that write a non-concept word (BPE ranks 10k-30k) instead",
    )
    parser.add_argument(
        "--text-first", type=float, default=0.0,
        help="fraction of steps at the start with written words and labelled objects only",
    )  # fmt: skip
    parser.add_argument(
        "--sparsity", type=float, default=0.0,
        help="weight of the activation-sparsity penalty on the last block (L1/L2 over channels)",
    )  # fmt: skip
    parser.add_argument("--eval-n", type=int, default=50, help="eval images per class for the card")
    parser.add_argument(
        "--init", type=Path, default=None,
        help="fine-tune: start from these weights, on the world's final stage, with fresh images",
    )  # fmt: skip


def caption_key(caption: str) -> str:
    """A caption with its template words removed ("a photo of a red star" → "red star")."""
    prev = None
    key = caption
    while prev != key:
        prev, key = key, _STRIP.sub("", key).strip()
    return key


def stage(progress: float, text_first: float = 0.0) -> dict[str, Any]:
    """World overrides (word sizes, modality mix, easy text) at ``progress`` ∈ [0, 1]."""
    stages = curriculum(text_first)
    for until, overrides in stages:
        if progress < until:
            return overrides
    return stages[-1][1]


class BatchStream(torch.utils.data.Dataset):
    """Batch ``b`` of the training stream: at most ``MAX_SAME_KEY`` captions per content."""

    def __init__(
        self,
        steps: int,
        batch: int,
        seed: int = world.TRAIN_SEED,
        bare_captions: float = 0.0,
        matched_labels: float | None = None,
        text_first: float = 0.0,
        distractors: float = 0.0,
        finetune: bool = False,
    ) -> None:
        self._steps = multiprocessing.Value("i", steps)  # shared with DataLoader workers
        self.finetune = finetune
        self.batch, self.seed, self.bare_captions = batch, seed, bare_captions
        self.matched_labels, self.text_first = matched_labels, text_first
        self.distractors = distractors

    @property
    def steps(self) -> int:
        """Planned number of steps (the curriculum is defined on the fraction done)."""
        return int(self._steps.value)

    @steps.setter
    def steps(self, value: int) -> None:
        self._steps.value = value

    def __len__(self) -> int:
        return 10**8  # the training loop stops at ``steps``

    def captions(self, b: int) -> list[tuple[int, dict[str, Any]]]:
        """(index, plan) of the samples of batch ``b``."""
        overrides = stage(1.0 if self.finetune else b / max(1, self.steps), self.text_first)
        if self.bare_captions:
            overrides = {**overrides, "bare_captions": self.bare_captions}
        if self.matched_labels is not None:
            overrides = {**overrides, "matched_labels": self.matched_labels}
        if self.distractors:
            overrides = {**overrides, "distractors": self.distractors}
        seen: dict[str, int] = {}
        out: list[tuple[int, dict[str, Any]]] = []
        j = 0
        while len(out) < self.batch:
            index = (b + (FINETUNE_OFFSET if self.finetune else 0)) * 4 * self.batch + j
            j += 1
            p = world.plan(self.seed, index, **overrides)
            key = caption_key(p["caption"])
            if seen.get(key, 0) >= MAX_SAME_KEY and j < 4 * self.batch:
                continue
            seen[key] = seen.get(key, 0) + 1
            out.append((index, p))
        return out

    def __getitem__(self, b: int) -> tuple[torch.Tensor, list[str]]:
        items = self.captions(b)
        images = [world.draw(p, self.seed, index) for index, p in items]
        return to_tensor(images, world.IMAGE_SIZE), [p["caption"] for _, p in items]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def quick_eval(model: torch.nn.Module, tokenizer: Any, n: int = 8) -> dict[str, float]:
    """Zero-shot accuracy on a small fixed held-out set (used during training)."""
    return zero_shot_accuracy(model, tokenizer, n_per_class=n, seed=world.HELDOUT_SEED + 7)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 2 % of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))


def plot_loss(losses: list[float], path: Path, evals: list[dict[str, Any]] | None = None) -> None:
    """Loss curve (raw and smoothed) as a PNG, with quick zero-shot checks if given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(losses, color="#bbb", lw=0.6, label="loss")
    k = 50
    if len(losses) > k:
        sm = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(range(k - 1, len(losses)), sm, color="#1f77b4", lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("CLIP loss")
    ax.set_title("conceptscope-demo training")
    if evals:
        ax2 = ax.twinx()
        for name, colour in (("object", "#2ca02c"), ("text", "#d62728"), ("drawing", "#9467bd")):
            ax2.plot([e["step"] for e in evals], [e[name] for e in evals], "o-", ms=3,
                     color=colour, label=f"zero-shot {name}")  # fmt: skip
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("quick zero-shot accuracy")
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class _LastBlockSparsity:
    """Penalty pushing the last block's post-ReLU units towards sparse codes.

    Per position, the L1/L2 ratio over channels divided by √channels (1 for a flat code,
    1/√channels for a single active unit); scale-free, so it cannot be met by shrinking
    activations. Averaged over positions and images. Read at hook name ``layer4.N.act3`` of the
    vision tower (:mod:`app.models.hooks`) until :meth:`remove`.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._name = f"{last_block(model)}.act3"
        self._hooks = ExitStack()
        self._store = self._hooks.enter_context(
            hooks(model.visual, [self._name], detach=False, transform=self._ratio)
        )

    @staticmethod
    def _ratio(out: torch.Tensor) -> torch.Tensor:
        a = out.float()
        ratio = a.sum(1) / (a.pow(2).sum(1).sqrt() + 1e-6) / math.sqrt(a.shape[1])
        return ratio.mean()

    @property
    def _value(self) -> torch.Tensor | None:
        return self._store.get(self._name)

    def pop(self) -> torch.Tensor:
        """The penalty of the last forward pass."""
        value = self._store.pop(self._name, None)
        assert value is not None, "no forward pass since the last pop"
        return value

    def remove(self) -> None:
        """Remove the hook."""
        self._hooks.close()


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train; returns the model, tokenizer, per-step losses, quick evals and timings."""
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tokenizer = create_demo_model(Path(args.out) / DEMO_WEIGHTS_NAME)
    if args.init:
        load_state_file(model, Path(args.init))
    model.train()
    sparse = _LastBlockSparsity(model) if args.sparsity else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    loss_fn = ClipLoss()
    stream = BatchStream(
        args.steps, args.batch, bare_captions=args.bare_captions,
        matched_labels=args.matched_labels, text_first=args.text_first,
        distractors=args.distractors, finetune=bool(args.init),
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, shuffle=False, num_workers=args.workers,
        worker_init_fn=_worker_init if args.workers else None,
        prefetch_factor=4 if args.workers else None, persistent_workers=bool(args.workers),
    )  # fmt: skip
    token_cache: dict[str, torch.Tensor] = {}
    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    t0 = time.time()
    bar = tqdm(loader, total=args.steps, desc="train-demo", mininterval=5)
    t_cal = t0
    for step, (images, captions) in enumerate(bar):
        if step == 10:
            t_cal = time.time()
        if args.minutes and step in (60, 140):
            # Fix the step count to the time budget before the cosine decay and the first
            # curriculum switch start, so that `--steps N` reproduces the run exactly.
            rate = (time.time() - t_cal) / (step - 10)
            left = t0 + args.minutes * 60 - time.time()
            args.steps = max(MIN_TIMED_STEPS, step + int(0.97 * left / rate))
            stream.steps = args.steps
            bar.total = args.steps
            tqdm.write(f"step {step}: {rate:.2f} s/step → training for {args.steps} steps")
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        missing = [c for c in captions if c not in token_cache]
        if missing:
            for c, t in zip(missing, tokenizer(missing), strict=True):
                token_cache[c] = t
        tokens = torch.stack([token_cache[c] for c in captions])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            img_f, txt_f, scale = model(images, tokens)
        loss = loss_fn(img_f.float(), txt_f.float(), scale.float())
        if sparse is not None:
            loss = loss + args.sparsity * sparse.pop()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            model.eval()
            acc = quick_eval(model, tokenizer)
            model.train()
            acc.update(step=step + 1, loss=float(np.mean(losses[-50:])), t=time.time() - t0)
            evals.append(acc)
            tqdm.write(json.dumps(acc), file=None)
            if getattr(args, "checkpoint", None):
                save_weights(model, Path(args.checkpoint))
        if step + 1 >= args.steps:
            break
    model.eval()
    if sparse is not None:
        sparse.remove()
    return {"model": model, "tokenizer": tokenizer, "losses": losses, "evals": evals,
            "seconds": time.time() - t0}  # fmt: skip


def write_model_card(
    out: Path, log: dict[str, Any], report: str, result: Any, facts: str, notes: str = ""
) -> Path:
    """Write ``MODEL_CARD.md`` from the training log and the evaluation."""
    args = log["args"]
    config = demo_config(out / DEMO_WEIGHTS_NAME)
    cfg = json.dumps(config, indent=2)
    weights = out / DEMO_WEIGHTS_NAME
    size_mb = weights.stat().st_size / 1e6 if weights.exists() else float("nan")
    stages = "\n".join(
        f"| until {until:.0%} of steps | {o['word_size'][0]}–{o['word_size'][1]} px | "
        + ", ".join(f"{m} {w:.0%}" for m, w in o["modality_weights"].items())
        + (" | single lower-case words, one font, black/white/grey ink |" if o.get("easy") else " | all |")
        for until, o in curriculum(float(args.get("text_first", 0.0)))
    )
    evals = "\n".join(
        f"| {e['step']} | {e['loss']:.3f} | {e['object']:.1%} | {e['drawing']:.1%} | "
        f"{e['text']:.1%} | {e['t'] / 60:.1f} |"
        for e in log["evals"]
    )
    acc = result.accuracy
    lam = float(args.get("sparsity", 0.0))
    matched = args.get("matched_labels")
    matched = world.MATCHED_LABELS if matched in (None, "None") else float(matched)
    sparsity_text = (
        f" plus {lam:g} × an activation-sparsity penalty on the last block's post-ReLU units (per "
        "position, L1/L2 over channels ÷ √channels: 1 for a flat code, 1/√channels for one active "
        "unit; scale-free, so it cannot be met by shrinking activations)"
        if lam
        else ""
    )
    init = args.get("init")  # the log stores arguments as strings: "None" when not a fine-tune
    fine_tune = init not in (None, "None")
    origin = f"from `{init}` (a fine-tune)" if fine_tune else "from scratch"
    init_flag = f" --init {init}" if fine_tune else ""
    text = (
        f"""# conceptscope-demo

A small CLIP (open_clip `CLIP`, ModifiedResNet vision tower) trained {origin} on CPU on the
synthetic shapes-and-words world of `precompute/demo_world.py`, so that the demo explorer shows
real multimodal neurons without downloading anything. Weights: `{DEMO_WEIGHTS_NAME}` (fp16
safetensors of `model.state_dict()`, {size_mb:.1f} MB). Reproduce with
`conceptscope train-demo --steps {args["steps"]} --batch {args["batch"]} --seed {args["seed"]}
--bare-captions {args.get("bare_captions", 0.0)} --sparsity {args.get("sparsity", 0.0)}
--matched-labels {matched} --text-first {args.get("text_first", 0.0)}
--distractors {args.get("distractors", 0.0)}{init_flag}`;
evaluate with `conceptscope eval-demo`.

## Model config (`app/models/configs/{DEMO_MODEL_NAME}.json`)

```json
{cfg}
```

Preprocessing: {world.IMAGE_SIZE}×{world.IMAGE_SIZE} RGB, OpenAI CLIP mean/std. Tokenizer: open_clip's
standard BPE tokenizer (context length {config["text_cfg"]["context_length"]}).

## Data recipe

Rendered on the fly from `demo_world` with `TRAIN_SEED = {world.TRAIN_SEED}` (evaluation uses
`HELDOUT_SEED = {world.HELDOUT_SEED}`). {len(world.COLOURS)} colours ({", ".join(world.COLOURS)}) and
{len(world.SHAPES)} shapes ({", ".join(world.SHAPES)}); modalities: *object* (filled shape; size,
position, rotation, shade, blur, background vary), *drawing* (wobbly outline), *text* (a colour
word, a shape word or both, ink colour independent of the word, fonts: {", ".join(world.font_names())}),
*labelled object* (object with a concept word written on it or on a label).
Captions come from several templates per modality ("a photo of a red star", "a drawing of a
blue circle", "the word red", "a sign that says star", "a green square labelled star", …);
labelled objects are captioned by both object and word, by the word only, or by the object only;
{float(matched):.0%} of them carry the object's own colour or shape word (the others another one).
In addition, {float(args.get("bare_captions", 0.0)):.0%} of object, drawing and text captions are the
concept name alone ("red", "star"), the same caption for a red thing and the written word red,
and {float(args.get("distractors", 0.0)):.0%} of text images write a non-concept word instead (BPE
whole words of frequency ranks {world.DISTRACTOR_RANKS[0]:,}–{world.DISTRACTOR_RANKS[1]:,}, disjoint from
the words stage's vocabulary; "the word kettle"), so that reading units learn to tell the concept
words from look-alikes.
At most {MAX_SAME_KEY} captions of the same content (template words removed) per batch. Curriculum:

| stage | word font size | modality mix | text styles |
|---|---|---|---|
{stages}

## Training

open_clip `ClipLoss`{sparsity_text}, AdamW (β = 0.9/0.98, weight decay 0.1 on matrices), peak lr {args["lr"]},
{args["warmup"]} warm-up steps then cosine decay, batch {args["batch"]}, {args["steps"]} steps,
torch seed {args["seed"]}, bfloat16 autocast: {args.get("bf16", "False")}, {args["threads"]} CPU
thread(s). Training time: {log["seconds"] / 60:.1f} min on a 2-core CPU shared with other jobs
(the step count was fitted to a {args.get("minutes") or "–"} min budget during warm-up by
`--minutes`; `--steps {args["steps"]}` replays the same schedule).

![loss curve](loss_curve.png)

Quick zero-shot checks during training (8 held-out images per class, mean of colour and shape):

| step | loss | object | drawing | text | minutes |
|---|---|---|---|---|---|
{evals}

## Evaluation (`conceptscope eval-demo`, {result.n_per_class} held-out images per class)

| modality | colour | shape |
|---|---|---|
"""
        + "\n".join(f"| {m} | {acc[m]['colour']:.1%} | {acc[m]['shape']:.1%} |" for m in acc)
        + f"""

Typographic attack (objects of A labelled with the word for B): classified as B
{result.typographic["colour"]["written"]:.1%} of the time for colours,
{result.typographic["shape"]["written"]:.1%} for shapes.

Multimodal concepts (min(d′ objects, d′ text) ≥ {result.threshold}):
**{result.n_multimodal}/{len(result.multimodal_neurons)}**.

| issue 3 target | measured | met |
|---|---|---|
"""
        + "\n".join(_targets(result))
        + f"""

Full output:

```
{report}
```

Regression subset used by `tests/test_demo_model.py` (zero-shot, mean of colour and shape):
{facts}
"""
        + (f"\n{notes.strip()}\n" if notes.strip() else "")
    )
    path = out / "MODEL_CARD.md"
    path.write_text(text)
    return path


def _targets(result: Any) -> list[str]:
    acc = result.accuracy
    rows = []
    for m, goal in (("object", 0.9), ("text", 0.9), ("drawing", 0.8)):
        for kind in ("colour", "shape"):
            ok = "yes" if acc[m][kind] >= goal else "**no**"
            rows.append(f"| zero-shot {kind}, {m} ≥ {goal:.0%} | {acc[m][kind]:.1%} | {ok} |")
    n, m = result.n_multimodal, len(result.multimodal_neurons)
    rows.append(f"| ≥ 10 multimodal concepts | {n}/{m} | {'yes' if n >= 10 else '**no**'} |")
    return rows


def facts_block(model: torch.nn.Module, tokenizer: Any, result: Any) -> str:
    """Machine-readable facts for tests: a small regression subset and the named neurons."""
    acc = zero_shot_accuracy(model, tokenizer, **REGRESSION)
    facts = {
        "regression": {**REGRESSION, **acc},
        "multimodal_neurons": {c: [u, round(a, 3), round(b, 3), round(d, 3)]
                               for c, (u, a, b, d) in result.multimodal_neurons.items()},
        "layer": result.layer,
    }  # fmt: skip
    shown = ", ".join(f"{m} {acc[m]:.1%}" for m in ("object", "drawing", "text"))
    return (
        f"{shown} ({REGRESSION['n_per_class']} images per class, seed {REGRESSION['seed']}).\n\n"
        f"<!-- facts: {json.dumps(facts)} -->"
    )


def card(out: Path, n: int, threads: int, notes: Path | None = None) -> int:
    """Evaluate the weights in ``out`` and (re)write its model card from ``train_log.json``."""
    torch.set_num_threads(threads)
    log = json.loads((out / "train_log.json").read_text())
    model, tokenizer = load_demo_model(out / DEMO_WEIGHTS_NAME)
    result = evaluate(model, None, tokenizer, n_per_class=n)
    report = format_report(result)
    print(report)
    plot_loss(log["losses"], out / "loss_curve.png", log["evals"])
    text = notes.read_text() if notes and notes.is_file() else ""
    write_model_card(out, log, report, result, facts_block(model, tokenizer, result), text)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``conceptscope train-demo``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.card_only:
        return card(out, args.eval_n, args.threads, args.notes)
    if args.config and Path(args.config).resolve() != (out / f"{DEMO_MODEL_NAME}.json").resolve():
        shutil.copyfile(args.config, out / f"{DEMO_MODEL_NAME}.json")
    args.checkpoint = str(out / f".{DEMO_WEIGHTS_NAME}.partial")
    res = train(args)
    save_weights(res["model"], out / DEMO_WEIGHTS_NAME)
    Path(args.checkpoint).unlink(missing_ok=True)
    log = {"losses": res["losses"], "evals": res["evals"], "seconds": res["seconds"],
           "args": {k: v if isinstance(v, int | float | str) else str(v)
                    for k, v in vars(args).items()}}  # fmt: skip
    (out / "train_log.json").write_text(json.dumps(log))
    plot_loss(res["losses"], out / "loss_curve.png", res["evals"])
    print(f"trained {args.steps} steps in {res['seconds'] / 60:.1f} min → {out / DEMO_WEIGHTS_NAME}")
    if args.no_card:
        return 0
    return card(out, args.eval_n, args.threads, args.notes)


def main(argv: list[str] | None = None) -> int:
    """``python -m precompute.train_demo``."""
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
