"""Bulk downloads: ``/models/{model}[/layers/{layer}]/export/{table}.{jsonl|csv|parquet}``.

JSON Lines and CSV stream batch by batch; Parquet is written to a spooled temporary file (a
Parquet footer comes last) and then streamed. The keys are :data:`app.db.export.COLUMNS`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from app.db import export
from app.web.errors import NotFound

router = APIRouter()

CHUNK = 1 << 16


def _parse(name: str) -> tuple[str, str]:
    table, _, ext = name.partition(".")
    if table not in export.TABLES or ext not in export.FORMATS:
        raise NotFound(
            f"No export {name[:100]!r}: expected <table>.<format> with table one of "
            f"{', '.join(export.TABLES)} and format one of {', '.join(export.FORMATS)}."
        )
    return table, ext


def _spooled_parquet(sessions: object, table: str, model: str, layer: str | None) -> Iterator[bytes]:
    spool = tempfile.SpooledTemporaryFile(max_size=32 << 20)
    export.write_parquet(table, export.batches(sessions, table, model, layer), spool)  # type: ignore[arg-type]
    spool.seek(0)

    def chunks() -> Iterator[bytes]:
        try:
            while block := spool.read(CHUNK):
                yield block
        finally:
            spool.close()

    return chunks()


async def _download(request: Request, model: str, layer: str | None, name: str) -> Response:
    table, ext = _parse(name)
    sessions = request.app.state.sessions
    try:
        await run_in_threadpool(export.check_scope, sessions, model, layer)
    except export.ExportError as exc:
        raise NotFound(f"Nothing to export: {exc}.") from exc
    scope = f"{model}-{layer}" if layer else model
    headers = {
        "Content-Disposition": f'attachment; filename="{scope}-{table}.{ext}"'.replace("/", "_"),
        "Cache-Control": "no-store",  # large, streamed: never held by the page cache
    }
    if ext == "parquet":
        body = await run_in_threadpool(_spooled_parquet, sessions, table, model, layer)
    elif ext == "csv":
        body = export.csv_chunks(table, export.batches(sessions, table, model, layer))
    else:
        body = export.jsonl_chunks(export.batches(sessions, table, model, layer))
    return StreamingResponse(body, media_type=export.MIME[ext], headers=headers)


@router.get("/models/{model}/export/{name}")
async def model_export(model: str, name: str, request: Request) -> Response:
    """One table of a model's index (``units``, ``labels``, ``examples``, ``words``) as a file."""
    return await _download(request, model, None, name)


@router.get("/models/{model}/layers/{layer}/export/{name}")
async def layer_export(model: str, layer: str, name: str, request: Request) -> Response:
    """One table of a layer's index as a file."""
    return await _download(request, model, layer, name)
