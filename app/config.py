"""Settings shared by the CLI, the precompute stages and the web app.

Values come from keyword arguments (CLI flags) first, then environment variables
(``CONCEPTSCOPE_*``), then defaults. No module-level singleton: callers build a
``Settings`` and pass it down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PROJECT_ROOT / "templates"
STATIC_DIR = PROJECT_ROOT / "static"
DEFAULT_DATA_DIR = Path("data")


def db_url_from_arg(db: str | os.PathLike[str]) -> str:
    """Turn a CLI ``--db`` value (a file path or an SQLAlchemy URL) into an SQLAlchemy URL."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def best_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CONCEPTSCOPE_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Runtime settings. Build with :meth:`from_env` and override with :meth:`with_`."""

    db_url: str = field(default_factory=lambda: db_url_from_arg(DEFAULT_DATA_DIR / "demo.db"))
    data_dir: Path = DEFAULT_DATA_DIR
    device: str = "auto"
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000  # e.g. 6000×4000; decoded images are reduced at once
    live_max_batch: int = 8
    live_max_wait_ms: float = 5.0
    live_queue_size: int = 64
    live_timeout_s: float = 30.0
    store_analyses: bool = True
    max_stored_analyses: int = 1000
    load_live_model: bool = True
    # issue 14 (write paths): byte cap of stored analyses, write give-up time, rate limit, renders
    max_stored_analysis_bytes: int = 256 * 1024 * 1024
    write_timeout_s: float = 2.0
    rate_limit_per_minute: float = 0.0  # per client address, token bucket; 0 = off; loopback never limited
    rate_limit_burst: int = 20
    featurevis_max_jobs: int = 4  # on-demand renders queued or running at once (all workers)
    featurevis_per_client: int = 1  # ... of which one client may start
    featurevis_timeout_s: float = 300.0  # a render is cancelled after this long
    # issue 14 (inputs, memory, headers): decode memory budget, upload admission, CORS, hosts
    decode_memory_mb: int = 512  # sizes the decode semaphore (see app.web.uploads.decode_slots_for)
    max_inflight_uploads: int = 16  # uploads being read/decoded at once; more → 503 before the body
    cors: bool = False  # Access-Control-Allow-Origin: * on GET JSON (serve --cors)
    trusted_hosts: tuple[str, ...] = ()  # Host header allow-list; empty: localhost + bind address

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from ``CONCEPTSCOPE_*`` environment variables, defaults elsewhere."""
        base = cls()
        return cls(
            db_url=db_url_from_arg(_env("DB", str(DEFAULT_DATA_DIR / "demo.db"))),
            data_dir=Path(_env("DATA_DIR", str(base.data_dir))),
            device=_env("DEVICE", base.device),
            max_upload_bytes=int(_env("MAX_UPLOAD_BYTES", str(base.max_upload_bytes))),
            max_image_pixels=int(_env("MAX_IMAGE_PIXELS", str(base.max_image_pixels))),
            live_max_batch=int(_env("LIVE_MAX_BATCH", str(base.live_max_batch))),
            live_max_wait_ms=float(_env("LIVE_MAX_WAIT_MS", str(base.live_max_wait_ms))),
            live_queue_size=int(_env("LIVE_QUEUE_SIZE", str(base.live_queue_size))),
            live_timeout_s=float(_env("LIVE_TIMEOUT_S", str(base.live_timeout_s))),
            store_analyses=_env("STORE_ANALYSES", "1") not in ("0", "false", "no"),
            max_stored_analyses=int(_env("MAX_STORED_ANALYSES", str(base.max_stored_analyses))),
            max_stored_analysis_bytes=int(
                _env("MAX_STORED_ANALYSIS_BYTES", str(base.max_stored_analysis_bytes))
            ),
            write_timeout_s=float(_env("WRITE_TIMEOUT_S", str(base.write_timeout_s))),
            rate_limit_per_minute=float(_env("RATE_LIMIT", str(base.rate_limit_per_minute))),
            rate_limit_burst=int(_env("RATE_LIMIT_BURST", str(base.rate_limit_burst))),
            featurevis_max_jobs=int(_env("FEATUREVIS_MAX_JOBS", str(base.featurevis_max_jobs))),
            featurevis_per_client=int(_env("FEATUREVIS_PER_CLIENT", str(base.featurevis_per_client))),
            featurevis_timeout_s=float(_env("FEATUREVIS_TIMEOUT_S", str(base.featurevis_timeout_s))),
            decode_memory_mb=int(_env("DECODE_MEMORY_MB", str(base.decode_memory_mb))),
            max_inflight_uploads=int(_env("MAX_INFLIGHT_UPLOADS", str(base.max_inflight_uploads))),
            cors=_env("CORS", "0") in ("1", "true", "yes"),
            trusted_hosts=tuple(h.strip() for h in _env("TRUSTED_HOSTS", "").split(",") if h.strip()),
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolved_device(self) -> str:
        """The torch device to use: ``device`` unless it is ``auto``."""
        return best_device() if self.device == "auto" else self.device


SECRET_FILE = "secret.key"


def server_secret(data_dir: Path) -> bytes:
    """The server's secret (32 random bytes), created at first start in ``data_dir``.

    Keys analysis ids and client hashes. Written atomically (temp file + link), readable by the
    owner only, so several workers starting at once agree on one secret. When ``data_dir`` is
    not writable, a per-process secret is used (ids then differ between restarts).
    """
    import secrets
    import tempfile

    path = Path(data_dir) / SECRET_FILE
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    fresh = secrets.token_bytes(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".secret-", delete=False) as tmp:
            tmp.write(fresh)
        os.chmod(tmp.name, 0o600)
        try:
            os.link(tmp.name, path)  # fails if another process won the race: use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp.name)
        return path.read_bytes()
    except OSError:
        return fresh
