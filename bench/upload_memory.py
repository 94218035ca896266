"""Server memory and /-/health latency under parallel worst-case uploads (issue 14).

Starts a real ``conceptscope serve`` (uvicorn, live model) on 127.0.0.1 over an index (``--db``,
else a tiny index this script builds with the demo model over ``demo:48``), measures its idle RSS
(``/proc/PID/status`` VmRSS, sampled every 20 ms), then for each kind of upload sends ``--parallel``
uploads of it at once to ``POST /analyze.json`` (multipart) while polling ``/-/health`` every
100 ms. Kinds (each a few KB to a few MB that decodes to tens of megapixels):

- ``flat16-6300``: flat 16-bit greyscale PNG 6300×6300 (~92 KB; 1.5 GB per decode before issue 14)
- ``rgba-6300``: flat RGBA PNG 6300×6300;  ``tiff-6300``: LZW RGBA TIFF 6300×6300
- ``flat16-cap`` / ``rgba-cap`` / ``tiff-cap``: the same just under the server's pixel cap
  (the worst case the server accepts: 4990×4990 for the default 25 MP)
- ``gif-frames``: a GIF of 300,000 1×1 frames (frame counting)
- ``thin-1x20000``: a ~100-byte 1×20000 PNG (the model's resize made it 128 × 2.56M pixels: 1.3 GB)
- ``gif-big-frames``: 30 frames of 2000×2000 (every frame was decoded to count them: ~17 s each)

Prints per kind: statuses, time until all answered, peak RSS above idle, /-/health p50/p99/max
latency (issue 14 §5: within 1 s while uploads decode) against the idle health latency measured
first in the same run; then the health p99/max over all kinds and whether the max stayed within
1 s. The memory baseline is the server's own idle RSS measured in the same run. Last line:
``peak extra MiB: X`` (the largest peak over all kinds; goal ≤ 1024). ``--kill-above-mib`` stops a
server (e.g. an old version, ``--repo``) whose RSS passes the limit, and reports it as killed.
Traffic goes only to 127.0.0.1 and is bounded (kinds × parallel requests, ``--timeout`` each).
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


# ------------------------------------------------------------------------------ attack files


def flat16_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("I;16", (side, side), 1000).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def rgba_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 20, 30, 40)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def lzw_tiff(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (10, 20, 30, 40)).save(buffer, "TIFF", compression="tiff_lzw")
    return buffer.getvalue()


def many_frame_gif(frames: int) -> bytes:
    """A 1×1 GIF with ``frames`` frames (hand-written: Pillow would merge identical frames)."""
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff")
    frame = b"\x21\xf9\x04\x00\x00\x00\x00\x00" + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    frame += b"\x02\x02\x44\x01\x00"
    return bytes(out + frame * frames + b"\x3b")


def thin_png(long_side: int) -> bytes:
    """A 1-pixel-wide PNG (~100 bytes): resized for the model it once became 128 × 2.5M pixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, long_side), 128).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def big_frame_gif(side: int, frames: int) -> bytes:
    """A GIF of ``frames`` flat ``side``² frames of alternating colours (each frame once cost a
    full decode when frames were counted)."""
    images = [Image.new("P", (side, side), i % 2) for i in range(frames)]
    for im in images:
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=50)
    return buffer.getvalue()


def attack_files(cap_pixels: int) -> dict[str, tuple[bytes, str, str]]:
    """name → (bytes, file name, MIME type)."""
    cap_side = int(cap_pixels**0.5) - 10
    return {
        "flat16-6300": (flat16_png(6300), "a.png", "image/png"),
        "rgba-6300": (rgba_png(6300), "a.png", "image/png"),
        "tiff-6300": (lzw_tiff(6300), "a.tiff", "image/tiff"),
        "flat16-cap": (flat16_png(cap_side), "a.png", "image/png"),
        "rgba-cap": (rgba_png(cap_side), "a.png", "image/png"),
        "tiff-cap": (lzw_tiff(cap_side), "a.tiff", "image/tiff"),
        "gif-frames": (many_frame_gif(300_000), "a.gif", "image/gif"),
        "thin-1x20000": (thin_png(20_000), "a.png", "image/png"),
        "gif-big-frames": (big_frame_gif(2000, 30), "a.gif", "image/gif"),
    }


# ------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def build_tiny_index(folder: Path) -> Path:
    db = folder / "bench.db"
    subprocess.run([sys.executable, "-m", "app.cli", "precompute", "activations", "--model", "demo",
                    "--dataset", "demo:48", "--db", str(db)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return db


class Watch:
    """Samples a process's RSS every 20 ms; kills it above ``kill_above`` bytes."""

    def __init__(self, pid: int, kill_above: int) -> None:
        self.pid, self.kill_above = pid, kill_above
        self.peak = 0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            self.peak = max(self.peak, rss)
            if self.kill_above and rss > self.kill_above and not self.killed:
                self.killed = True
                os.kill(self.pid, 9)
            time.sleep(0.02)

    def reset(self) -> None:
        self.peak = rss_bytes(self.pid)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def poll_health(base: str, stop: threading.Event, latencies: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.get("/-/health")
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                latencies.append(10.0)
            time.sleep(0.1)


def percentiles(latencies: list[float]) -> str:
    """``p50 X ms p99 Y ms max Z ms (n=N)`` of ``latencies`` (seconds; a failed poll counts 10 s)."""
    if not latencies:
        return "no answers (n=0)"
    ordered = sorted(latencies)
    p99 = ordered[max(0, -(-99 * len(ordered) // 100) - 1)]  # nearest rank: never below the median
    return (f"p50 {statistics.median(ordered) * 1000:.0f} ms p99 {p99 * 1000:.0f} ms "
            f"max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})")


def upload(base: str, data: bytes, name: str, mime: str, timeout: float) -> str:
    try:
        response = httpx.post(f"{base}/analyze.json", files={"image": (name, data, mime)}, timeout=timeout)
        return str(response.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="index to serve (default: build a tiny one)")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="source tree to serve from (e.g. an old version)")
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--kinds", default="", help="comma-separated subset of the kinds")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    parser.add_argument("--kill-above-mib", type=float, default=4096.0, help="stop the server above this RSS")
    parser.add_argument("--cap-pixels", type=int, default=25_000_000, help="pixel cap of the served version")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    db = args.db or build_tiny_index(work)
    files = attack_files(args.cap_pixels)
    if args.kinds:
        files = {k: v for k, v in files.items() if k in args.kinds.split(",")}
    for name, (data, _, _) in files.items():
        print(f"{name:12s} {len(data) / 1024:9.1f} KB", flush=True)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(args.repo),
           "CONCEPTSCOPE_DATA_DIR": str(work)}
    cmd = [sys.executable, "-m", "app.cli", "serve", "--db", str(db), "--host", "127.0.0.1",
           "--port", str(port), "--device", "cpu", "--log-level", "warning"]  # fmt: skip
    log = open(work / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(cmd, cwd=args.repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/-/health", timeout=2).json().get("live") == "ready":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print((work / "server.log").read_text()[-3000:], file=sys.stderr)
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        time.sleep(1.0)
        idle = statistics.median(rss_bytes(server.pid) for _ in range(25) if not time.sleep(0.02))
        print(f"server idle RSS: {idle / MIB:.0f} MiB (baseline, this run)", flush=True)
        idle_health: list[float] = []
        stop_idle = threading.Event()
        poller = threading.Thread(target=poll_health, args=(base, stop_idle, idle_health), daemon=True)
        poller.start()
        time.sleep(2.0)
        stop_idle.set()
        poller.join()
        print(f"idle health: {percentiles(idle_health)} (baseline, this run)", flush=True)
        all_health: list[float] = []
        worst = 0.0
        killed = False
        with Watch(server.pid, int(args.kill_above_mib * MIB)) as watch:
            for kind, (data, name, mime) in files.items():
                if server.poll() is not None:
                    break
                watch.reset()
                start_rss = watch.peak
                stop, latencies = threading.Event(), []
                poller = threading.Thread(target=poll_health, args=(base, stop, latencies), daemon=True)
                poller.start()
                started = time.perf_counter()
                with ThreadPoolExecutor(args.parallel) as pool:
                    futures = [pool.submit(upload, base, data, name, mime, args.timeout)
                               for _ in range(args.parallel)]  # fmt: skip
                    statuses = [f.result() for f in futures]
                elapsed = time.perf_counter() - started
                stop.set()
                poller.join()
                extra = max(0.0, (watch.peak - idle) / MIB)
                worst = max(worst, extra)
                counts = {s: statuses.count(s) for s in sorted(set(statuses))}
                all_health += latencies
                print(
                    f"{kind:12s} statuses {counts}  all answered in {elapsed:6.1f} s  "
                    f"RSS at start +{(start_rss - idle) / MIB:.0f} MiB, peak +{extra:.0f} MiB  "
                    f"health {percentiles(latencies)}",
                    flush=True,
                )
                if watch.killed:
                    killed = True
                    print(f"server killed: RSS passed {args.kill_above_mib:.0f} MiB during {kind}")
                    break
                time.sleep(1.0)
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        log.close()
    if all_health:
        within = "yes" if max(all_health) <= 1.0 else "NO"
        print(f"health during all uploads: {percentiles(all_health)}; max within 1 s: {within}")
    suffix = f" (server killed above {args.kill_above_mib:.0f} MiB)" if killed else ""
    print(f"peak extra MiB: {worst:.0f}{suffix}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
