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
    max_image_pixels: int = 40_000_000
    live_max_batch: int = 8
    live_max_wait_ms: float = 5.0
    live_queue_size: int = 64
    live_timeout_s: float = 30.0
    store_analyses: bool = True
    max_stored_analyses: int = 1000
    load_live_model: bool = True

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
        )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolved_device(self) -> str:
        """The torch device to use: ``device`` unless it is ``auto``."""
        return best_device() if self.device == "auto" else self.device
