"""Model provenance for the pages: where a model's weights come from, and its model card.

The bundled demo model has a card (``app/models/weights/MODEL_CARD.md``), served as a page at
``/models/demo/card``; a tiny Markdown subset (headings, paragraphs, lists, fenced code, inline
code, tables shown as text) is rendered here, escaped, without any dependency.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from markupsafe import Markup

from app.models import DEMO_MODEL_NAME, WEIGHTS_DIR

CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def card_path(model_name: str) -> Path | None:
    """The model card of a model (by its open_clip name), if it has one."""
    return CARD if model_name == DEMO_MODEL_NAME and CARD.is_file() else None


def provenance(model_name: str, pretrained: str | None, card_url: str) -> dict[str, str | None]:
    """What the weights are, in words, and the card's URL when there is one."""
    if card_path(model_name) is not None:
        return {
            "text": "trained on the synthetic shapes-and-words world (bundled demo weights)",
            "card": card_url,
        }
    if pretrained:
        return {"text": f"pretrained weights: {pretrained}", "card": None}
    return {"text": "random weights (no pretrained checkpoint given)", "card": None}


_INLINE_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _INLINE_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def render_markdown(text: str) -> Markup:
    """A small, safe Markdown subset → HTML (everything escaped first)."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    lines = text.splitlines()
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(it)}</li>" for it in items) + "</ul>")
            items.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(block))}</code></pre>")
        elif stripped.startswith("|"):
            flush()
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(f'<pre class="md-table">{html.escape(chr(10).join(block))}</pre>')
            continue
        elif m := re.match(r"(#{1,4})\s+(.*)", stripped):
            flush()
            level = min(len(m.group(1)) + 1, 4)  # the page has its own h1
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif re.match(r"[-*]\s+", stripped):
            if para:
                flush()
            items.append(re.sub(r"^[-*]\s+", "", stripped))
        elif not stripped:
            flush()
        elif items and line.startswith((" ", "\t")):
            items[-1] += " " + stripped
        else:
            if items:
                flush()
            para.append(stripped)
        i += 1
    flush()
    return Markup("\n".join(out))
