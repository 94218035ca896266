"""Feature visualization: Conceptscope vs Lucent (torch-lucent 0.1.8) vs the limit, on the demo model.

Same model (the demo CLIP's vision tower), the same 32 last-block neurons (the last Bottleneck
of ``layer4``, ``layer4.5`` for the shipped weights; every 16th unit), the same number of steps
and the same image size (Lucent's ``fixed_image_size``, so it does not upsample to 224).
Measured in one run:

* **ours**: :func:`app.neurons.featurevis.render`, all 32 neurons in one batch, Lucid's transforms
  per image, Adam 0.05, our colour start (one extra forward pass of 51 flat colours; Lucent starts
  at grey), through a BN-folded channels-last copy of the model. The headline figures
  use ``canvas=False``: the transformed view is resampled to ``size`` px, so the network sees the
  same input size as Lucent's ``fixed_image_size`` and the limit. Also printed: ours on Lucid's
  padded canvas (our default for ResNets), where the network sees ``size + 2*pad - jitters`` px
  (140 px for 128), about 20 % more pixels per step;
* **Lucent batched**: ``render_vis`` with ``param.image(size, batch=32)`` and the sum of 32
  ``objectives.channel(layer, unit, batch=i)`` objectives, Lucid's standard transforms, Adam 0.05
  (Lucent's defaults), the model's own normalisation as the last transform;
* **Lucent per neuron**: the same, one neuron per call (as it is usually called);
* **limit**: a bare forward + backward of the model, truncated at the target layer, for the same
  batch and steps (no parameterisation, no transforms, no optimiser).

Fairness: both optimise the same objective, the spatial mean of the *pre-ReLU* residual sum of
that block. Lucent hooks module outputs, so its copy of the model has ``act3`` replaced by
``Sequential(pre=Identity(), relu=ReLU())`` and Lucent hooks ``body_layer4_5_act3_pre`` (a
non-in-place ReLU, so the hooked tensor is not overwritten). Lucent gets the model at its best:
eval mode, parameters frozen, the tower truncated after ``layer4`` (no attention pool). Lucent
and kornia 0.4.1 run unpatched in their own virtual environment (``data/bench-venv-lucent``,
created here; it sees this project's packages, torch included, through a ``.pth`` file and
installs only ``torch-lucent``, ``kornia`` and Lucent's import-time needs into itself). Every
final objective is measured afterwards by the same code (:func:`app.neurons.featurevis.objectives`)
on the un-transformed final images.

Run: ``.venv/bin/python bench/featurevis_vs_lucent.py [--steps 64] [--size 128] [--repeats 1]``.
The last three lines are ``speedup: X`` (seconds per neuron, Lucent batched / ours),
``objective ours/lucent: Y`` (medians) and ``limit/ours: Z`` (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_VENV = ROOT / "data" / "bench-venv-lucent"
LUCENT_PACKAGES = ["torch-lucent==0.1.8", "kornia==0.4.1"]
LUCENT_IMPORT_NEEDS = ["decorator", "ipython"]  # lucent imports these at import time


# --------------------------------------------------------------------------- the Lucent venv


def lucent_layer(layer: str) -> str:
    """Lucent's name for the pre-ReLU output of block ``layer`` in the ``Body`` wrapper below."""
    return f"body_{layer.replace('.', '_')}_act3_pre"


def ensure_venv(venv: Path) -> Path:
    """Create the Lucent virtual environment once; return its python."""
    python = venv / "bin" / "python"
    marker = venv / ".conceptscope-ready"
    if marker.exists():
        return python
    base = getattr(sys, "_base_executable", None) or sys.executable
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    # read-only view of this project's packages (torch 2.14.1, open_clip, ...) after the venv's own
    (site / "conceptscope_packages.pth").write_text(str(ours) + "\n")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", *LUCENT_PACKAGES], check=True)
    subprocess.run([*pip, *LUCENT_IMPORT_NEEDS], check=True)
    probe = "import kornia, lucent.optvis.render; print(kornia.__version__)"
    check = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"Lucent does not import in {venv}:\n{check.stderr[-2000:]}")
    marker.write_text("ok\n")
    return python


# --------------------------------------------------------------------------- worker (Lucent venv)


def lucent_worker(config: dict) -> None:
    """Runs inside the Lucent venv: batched and per-neuron render_vis; saves images and timings."""
    import copy
    from collections import OrderedDict

    import numpy as np
    import torch
    from lucent.optvis import objectives, param, render, transform
    from torch import nn

    from app.models import ModelSpec, load_model
    from app.neurons.featurevis import normalisation

    torch.set_num_threads(config["threads"])
    loaded = load_model(ModelSpec.parse("demo", config.get("weights")), "cpu")
    mean, std = normalisation(loaded)

    class Body(nn.Module):
        """The vision tower up to layer4, the target block's pre-ReLU output exposed as a module."""

        def __init__(self, visual: nn.Module) -> None:
            super().__init__()
            self.body = copy.deepcopy(visual).eval()
            block = self.body.get_submodule(config["layer"])
            block.act3 = nn.Sequential(OrderedDict(pre=nn.Identity(), relu=nn.ReLU()))
            self.body.requires_grad_(False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = self.body
            x = v.stem(x)
            return v.layer4(v.layer3(v.layer2(v.layer1(x))))

    model = Body(loaded.visual).eval()
    size, steps, units = config["size"], config["steps"], config["units"]
    transforms = [*transform.standard_transforms, lambda x: (x - mean) / std]

    def call(batch_units: list[int]) -> np.ndarray:
        n = len(batch_units)
        objective = sum(objectives.channel(lucent_layer(config["layer"]), u, batch=i if n > 1 else None)
                        for i, u in enumerate(batch_units))
        images = render.render_vis(
            model, objective, lambda: param.image(size, batch=n), transforms=list(transforms),
            thresholds=(steps,), preprocess=False, progress=False, show_image=False, fixed_image_size=size,
        )
        return images[-1]  # (n, H, W, 3) in [0, 1]

    torch.manual_seed(0)
    np.random.seed(0)
    batched_times, single_times = [], []
    for _ in range(config["repeats"]):
        started = time.perf_counter()
        batched = call(units)
        batched_times.append(time.perf_counter() - started)
    for _ in range(config["single_repeats"]):
        started = time.perf_counter()
        single = np.concatenate([call([u]) for u in units])
        single_times.append(time.perf_counter() - started)
    import kornia
    import lucent

    np.savez(config["out"], batched=batched, single=single)
    Path(config["out"] + ".json").write_text(json.dumps({
        "batched_s": batched_times, "single_s": single_times,
        "versions": {"lucent": getattr(lucent, "__version__", "0.1.8"), "kornia": kornia.__version__,
                     "torch": torch.__version__},
    }))


# --------------------------------------------------------------------------- main


def limit_seconds(loaded, layer, n: int, size: int, steps: int, visual=None) -> float:
    """A bare forward + backward of the tower truncated at ``layer``, ``steps`` times, batch ``n``."""
    import torch

    from app.neurons import featurevis as fv
    from app.neurons.capture import run_visual

    visual = visual or loaded.visual
    x = torch.rand(n, 3, size, size, requires_grad=True)
    units = torch.arange(n)
    with fv.frozen(visual):
        started = time.perf_counter()
        for _ in range(steps):
            x.grad = None
            raw = run_visual(visual, x, [layer], detach=False)[layer.name]
            fv.unit_means(raw, layer, units).sum().backward()
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the model's input)")
    parser.add_argument("--neurons", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median) for batched runs")
    parser.add_argument("--single-repeats", type=int, default=1, help="repeats of the 32 per-neuron calls")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", default=None, help="demo weights file (default: the bundled ones)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        lucent_worker(json.loads(args.worker))
        return 0

    import numpy as np
    import torch

    from app.models import ModelSpec, load_model
    from app.neurons import featurevis as fv

    torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec.parse("demo", args.weights), "cpu")
    layer = loaded.layers[-1]  # the last block of layer4, where the multimodal neurons are
    size = args.size or loaded.image_size
    stride = max(1, layer.n_units // args.neurons)
    units = list(range(0, layer.n_units, stride))[: args.neurons]
    n = len(units)
    print(f"demo model, {layer.name} (pre-ReLU), {n} neurons (every {stride}th unit), {args.steps} steps, "
          f"{size} px, {args.threads} threads, CPU")

    # Lucent, in its own environment
    lucent_error = None
    try:
        python = ensure_venv(args.venv)
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "lucent.npz")
            config = {"size": size, "steps": args.steps, "units": units, "threads": args.threads,
                      "repeats": args.repeats, "single_repeats": args.single_repeats, "out": out,
                      "weights": args.weights, "layer": layer.name}
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            command = [str(python), str(Path(__file__).resolve()), "--worker", json.dumps(config)]
            proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"Lucent run failed:\n{proc.stderr[-3000:]}")
            with np.load(out) as saved:
                lucent_batched, lucent_single = saved["batched"], saved["single"]
            lucent_info = json.loads(Path(out + ".json").read_text())
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        lucent_error = str(exc)

    # ours: as Lucent's fixed_image_size (the network sees ``size`` px, like Lucent and the limit),
    # and on Lucid's padded canvas (our default for ResNets: the network sees size + 2*pad - jitters)
    fv.prepared_visual(loaded.visual, loaded.device)  # one-off preparation, not timed per call

    def ours(canvas: bool) -> tuple[float, list[float], int]:
        settings = fv.RenderSettings(steps=args.steps, size=size, canvas=canvas)
        times, result = [], None
        for _ in range(args.repeats):
            result = fv.render(loaded, layer, units, settings=settings)
            times.append(result.seconds)
        seen = size + 2 * settings.pad - settings.jitter - settings.jitter2 if canvas else size
        return statistics.median(times), result.objectives, seen

    ours_s, ours_obj, _ = ours(canvas=False)
    canvas_s, canvas_obj, canvas_px = ours(canvas=True)
    # the limit: plain model as given, and the BN-folded channels-last copy ours optimises through
    limit_plain = statistics.median(
        limit_seconds(loaded, layer, n, size, args.steps) for _ in range(args.repeats)
    )
    fast = fv.prepared_visual(loaded.visual, loaded.device)

    def limit_fast_once() -> float:
        return limit_seconds(loaded, layer, n, size, args.steps,
                             visual=_ChannelsLast(fast) if fast is not loaded.visual else None)

    limit_fast = statistics.median(limit_fast_once() for _ in range(args.repeats))

    def measure(images: np.ndarray) -> list[float]:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        return fv.objectives(loaded, layer, tensor, units)

    print()
    print(f"{'method':<34} {'s total':>8} {'s/neuron':>9} {'median obj':>11} {'min obj':>8}")
    print(f"{f'ours (one batch, {size} px in)':<34} {ours_s:8.2f} {ours_s / n:9.3f} "
          f"{statistics.median(ours_obj):11.3f} {min(ours_obj):8.3f}")
    print(f"{f'ours (Lucid canvas, {canvas_px} px in)':<34} {canvas_s:8.2f} {canvas_s / n:9.3f} "
          f"{statistics.median(canvas_obj):11.3f} {min(canvas_obj):8.3f}")
    if lucent_error is None:
        lb_s = statistics.median(lucent_info["batched_s"])
        ls_s = statistics.median(lucent_info["single_s"])
        lb_obj, ls_obj = measure(lucent_batched), measure(lucent_single)
        print(f"{'Lucent batched (one call)':<34} {lb_s:8.2f} {lb_s / n:9.3f} "
              f"{statistics.median(lb_obj):11.3f} {min(lb_obj):8.3f}")
        print(f"{'Lucent per neuron (32 calls)':<34} {ls_s:8.2f} {ls_s / n:9.3f} "
              f"{statistics.median(ls_obj):11.3f} {min(ls_obj):8.3f}")
        print(f"  versions: {lucent_info['versions']}")
    print(f"{'limit: bare fwd+bwd (model as is)':<34} {limit_plain:8.2f} {limit_plain / n:9.3f}")
    print(f"{'limit: bare fwd+bwd (BN folded)':<34} {limit_fast:8.2f} {limit_fast / n:9.3f}")
    if lucent_error is None:
        print(f"ours vs Lucent per neuron call: {ls_s / ours_s:.2f}x; on Lucid's canvas vs Lucent batched: "
              f"{lb_s / canvas_s:.2f}x")
    print(f"limit (BN-folded model)/ours: {limit_fast / ours_s:.2f}  (overhead of parameterisation, "
          f"transforms and optimiser)")
    if lucent_error is not None:
        print(f"Lucent could not run: {lucent_error}")
        print("speedup: n/a")
        print("objective ours/lucent: n/a")
    else:
        print(f"speedup: {lb_s / ours_s:.2f}")
        print(f"objective ours/lucent: {statistics.median(ours_obj) / statistics.median(lb_obj):.2f}")
    print(f"limit/ours: {limit_plain / ours_s:.2f}")
    return 0


class _ChannelsLast:
    """Feeds channels-last input to a channels-last model (as :func:`render` does on CPU)."""

    def __init__(self, visual) -> None:
        self.visual = visual

    def __getattr__(self, name: str):
        return getattr(self.visual, name)

    def __call__(self, x):
        import torch

        return self.visual(x.contiguous(memory_format=torch.channels_last))


if __name__ == "__main__":
    raise SystemExit(main())
