"""A local server that speaks the third-party predictions protocol (create → poll → output URL),
rendering with the studio renderer. Run: python -m tests.fakes.predictions_server --port N

For the credential tests it also plays a hostile API: ``POST /admin/output {"url": ...}`` makes
every later prediction answer that output URL instead of its own ``/files/<id>`` (``null``
restores those), and ``GET /admin/file-requests`` lists the Authorization header each ``/files``
request carried."""

from __future__ import annotations

import argparse
import base64
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request, Response

from atelier.catalog import Brand, OutputSpec
from atelier.providers.studio import StudioRenderer

TOKEN = "test-token"


def create_app() -> FastAPI:
    app = FastAPI()
    predictions: dict[str, dict[str, Any]] = {}
    files: dict[str, bytes] = {}
    output_override: dict[str, str] = {}
    file_requests: list[dict[str, str | None]] = []

    def check(auth: str | None) -> None:
        if auth != f"Bearer {TOKEN}":
            raise HTTPException(401, "Unauthenticated")

    @app.get("/healthz")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/v1/predictions", status_code=201)
    async def create(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        check(authorization)
        body = await request.json()
        if "version" not in body or "input" not in body:
            raise HTTPException(422, "version and input are required")
        pid = uuid.uuid4().hex[:12]
        predictions[pid] = {
            "id": pid,
            "status": "starting",
            "input": body["input"],
            "output": None,
            "error": None,
            "polls": 0,
        }
        return {k: v for k, v in predictions[pid].items() if k not in ("input", "polls")}

    @app.get("/v1/predictions/{pid}")
    async def get(pid: str, request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
        check(authorization)
        p = predictions.get(pid)
        if p is None:
            raise HTTPException(404, "Not found")
        p["polls"] += 1
        if p["status"] == "starting":
            p["status"] = "processing"
        elif p["status"] == "processing":
            inp = p["input"]
            if inp["width"] <= 0:
                p["status"], p["error"] = "failed", "width must be positive"
            else:
                source = base64.b64decode(inp["image"].split(",", 1)[1])
                spec = OutputSpec("x", inp["width"], inp["height"], inp["output_format"].upper())
                brand = Brand("b", 1.0, inp["backdrop_top"], inp["backdrop_bottom"], 0.3, ())
                files[pid] = StudioRenderer().render(source, spec, brand)
                p["status"] = "succeeded"
                own = f"{str(request.base_url).rstrip('/')}/files/{pid}"
                p["output"] = [output_override.get("url", own)]
        return {k: v for k, v in p.items() if k not in ("input", "polls")}

    @app.post("/admin/output")
    async def set_output(request: Request) -> dict[str, str]:
        url = (await request.json())["url"]
        output_override.clear()
        if url is not None:  # null: back to the server's own /files URLs
            output_override["url"] = str(url)
        return output_override

    @app.get("/admin/file-requests")
    async def seen() -> list[dict[str, str | None]]:
        return file_requests

    @app.get("/files/{pid}")
    async def file(pid: str, authorization: str | None = Header(None)) -> Response:
        file_requests.append({"pid": pid, "authorization": authorization})
        if pid not in files:
            raise HTTPException(404, "Not found")
        return Response(files[pid], media_type="image/jpeg")

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvicorn.run(create_app(), host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
