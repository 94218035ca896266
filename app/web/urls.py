"""The one URL builder. Every link the app emits (templates, JSON, headers) comes from here.

Each page method takes ``fmt``: ``None`` for the HTML page, ``"json"`` for its twin at the same
path plus ``.json`` (``/models/demo`` → ``/models/demo.json``; the home page's twin is ``/.json``).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlencode

JSON = "json"
STATIC_PREFIX = "/static"
STATIC_HASH_LEN = 12


def _suffix(fmt: str | None) -> str:
    if fmt is None:
        return ""
    if fmt != JSON:
        raise ValueError(f"unknown format {fmt!r}")
    return ".json"


def _seg(value: object) -> str:
    """One path segment, percent-encoded (dots are kept: layer names contain them)."""
    return quote(str(value), safe="")


def _query(params: dict[str, object]) -> str:
    items = [(k, v) for k, v in params.items() if v is not None and v != ""]
    return "?" + urlencode(items, doseq=True) if items else ""


@cache
def _file_hash(path: Path, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:STATIC_HASH_LEN]


def static_file_hash(path: Path) -> str:
    """Content hash (short hex) of a static file, cached by mtime and size."""
    stat = path.stat()
    return _file_hash(path, stat.st_mtime_ns, stat.st_size)


class Urls:
    """Builds the app's URLs (paths; prefix them with ``base`` when mounted below a root)."""

    def __init__(self, static_dir: Path, base: str = "") -> None:
        self.static_dir = Path(static_dir)
        self.base = base.rstrip("/")

    # -- pages -----------------------------------------------------------------------------
    def home(self, fmt: str | None = None) -> str:
        return f"{self.base}/{'.json' if fmt else ''}"

    def model(self, slug: str, fmt: str | None = None) -> str:
        return f"{self.base}/models/{_seg(slug)}{_suffix(fmt)}"

    def layer(self, slug: str, layer: str, fmt: str | None = None, **query: object) -> str:
        """A layer's neuron grid; ``query`` adds e.g. ``page``, ``sort``, ``q``."""
        return f"{self.base}/models/{_seg(slug)}/layers/{_seg(layer)}{_suffix(fmt)}{_query(query)}"

    def neuron(self, slug: str, layer: str, unit: int, fmt: str | None = None) -> str:
        return f"{self.base}/models/{_seg(slug)}/layers/{_seg(layer)}/neurons/{int(unit)}{_suffix(fmt)}"

    def search(
        self, q: str | None = None, model: str | None = None, fmt: str | None = None, **query: object
    ) -> str:
        return f"{self.base}/search{_suffix(fmt)}{_query({'q': q, 'model': model, **query})}"

    def analyze(self, fmt: str | None = None) -> str:
        return f"{self.base}/analyze{_suffix(fmt)}"

    def analysis(self, analysis_id: str, fmt: str | None = None) -> str:
        return f"{self.base}/analyses/{_seg(analysis_id)}{_suffix(fmt)}"

    def typographic(self, fmt: str | None = None, **query: object) -> str:
        return f"{self.base}/typographic{_suffix(fmt)}{_query(query)}"

    def atlas(self, slug: str, layer: str, fmt: str | None = None) -> str:
        """A layer's neurons laid out in 2-D (issue 6)."""
        return f"{self.base}/models/{_seg(slug)}/layers/{_seg(layer)}/atlas{_suffix(fmt)}"

    def multimodal(self, slug: str, fmt: str | None = None, **query: object) -> str:
        """A model's most multimodal neurons with photo and text evidence (issue 6)."""
        return f"{self.base}/models/{_seg(slug)}/multimodal{_suffix(fmt)}{_query(query)}"

    def export(self, slug: str, table: str, ext: str, layer: str | None = None) -> str:
        """A bulk download of one table (units, labels, examples, words) as jsonl, csv or parquet."""
        scope = f"/layers/{_seg(layer)}" if layer is not None else ""
        return f"{self.base}/models/{_seg(slug)}{scope}/export/{_seg(table)}.{_seg(ext)}"

    def embed_neuron(self, slug: str, layer: str, unit: int) -> str:
        """A compact neuron card for iframes."""
        return f"{self.base}/embed/models/{_seg(slug)}/layers/{_seg(layer)}/neurons/{int(unit)}"

    def embed_analysis(self, analysis_id: str) -> str:
        return f"{self.base}/embed/analyses/{_seg(analysis_id)}"

    def preview(self, slug: str, layer: str, unit: int) -> str:
        """The neuron's unfurl image (PNG: feature visualization, top examples, label)."""
        return f"{self.base}/preview/models/{_seg(slug)}/layers/{_seg(layer)}/neurons/{int(unit)}.png"

    def analysis_preview(self, analysis_id: str) -> str:
        return f"{self.base}/preview/analyses/{_seg(analysis_id)}.png"

    def oembed(self, url: str | None = None, fmt: str = "json") -> str:
        return f"{self.base}/-/oembed{_query({'url': url, 'format': fmt if url else None})}"

    def units_list(
        self, units: list[str] | None = None, title: str | None = None, fmt: str | None = None
    ) -> str:
        """A list of units (``model/layer/unit`` each), shared as a URL."""
        return f"{self.base}/lists{_suffix(fmt)}{_query({'units': ','.join(units or []), 'title': title})}"

    def compare(self, units: list[str] | None = None, fmt: str | None = None) -> str:
        return f"{self.base}/compare{_suffix(fmt)}{_query({'units': ','.join(units or [])})}"

    def model_card(self, slug: str) -> str:
        return f"{self.base}/models/{_seg(slug)}/card"

    def docs(self) -> str:
        return f"{self.base}/-/docs"

    # -- resources -------------------------------------------------------------------------
    def blob(self, sha256: str, ext: str) -> str:
        return f"{self.base}/blobs/{sha256}.{ext}"

    def blob_sha(self, url: str | None) -> str | None:
        """The sha256 of a :meth:`blob` URL (``None`` for anything else)."""
        prefix = f"{self.base}/blobs/"
        if not url or not url.startswith(prefix):
            return None
        sha = url[len(prefix):].split(".", 1)[0]
        return sha if len(sha) == 64 and all(c in "0123456789abcdef" for c in sha) else None

    def static(self, path: str) -> str:
        """``/static/{content-hash}/{path}``: immutable, so a changed file gets a new URL."""
        path = path.lstrip("/")
        return f"{self.base}{STATIC_PREFIX}/{static_file_hash(self.static_dir / path)}/{path}"

    def health(self) -> str:
        return f"{self.base}/-/health"

    def versions(self, fmt: str | None = None) -> str:
        return f"{self.base}/-/versions{_suffix(fmt)}"

    # -- helpers ---------------------------------------------------------------------------
    def with_query(self, url: str, **query: object) -> str:
        """``url`` with ``query`` appended (``None`` values dropped)."""
        extra = _query(query)
        if not extra:
            return url
        return url + ("&" + extra[1:] if "?" in url else extra)
