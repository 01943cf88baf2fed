"""An OpenAI-compatible HTTP server over any jessy backend (FastAPI + uvicorn).

``/health``, ``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions``. One model answers
one request at a time; at most ``max_queue`` requests wait, the next gets 503 instead of piling up.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from jessy.generation.backends import Backend, GenRequest


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False

    def request(self, max_tokens_limit: int, **kw: Any) -> GenRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenRequest(max_new_tokens=min(self.max_tokens or max_tokens_limit, max_tokens_limit),
                          temperature=self.temperature, top_p=self.top_p, stop=stop, seed=self.seed or 0, **kw)


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionBody(_Sampling):
    prompt: str


def create_app(backend: Backend, model_name: str = "jessy", max_queue: int = 8,
               max_tokens_limit: int = 512) -> FastAPI:
    app = FastAPI(title="jessy", version="1")
    gate = threading.Semaphore(1)
    waiting = {"n": 0}
    lock = threading.Lock()

    def run(req: GenRequest):  # noqa: ANN202
        with lock:
            if waiting["n"] >= max_queue + 1:
                raise HTTPException(503, "server busy: the request queue is full, retry later")
            waiting["n"] += 1
        try:
            with gate:
                return backend.generate([req])[0]
        finally:
            with lock:
                waiting["n"] -= 1

    def usage(res: Any) -> dict[str, int]:
        return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                "total_tokens": res.prompt_tokens + res.completion_tokens}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "jessy"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request) -> dict[str, Any]:
        if body.stream:
            raise HTTPException(400, "stream=true is not supported by this server yet")
        req = body.request(max_tokens_limit, messages=tuple((m.role, m.content) for m in body.messages))
        res = await asyncio.to_thread(run, req)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "usage": usage(res),
                "choices": [{"index": 0, "finish_reason": res.finish_reason,
                             "message": {"role": "assistant", "content": res.text}}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody) -> dict[str, Any]:
        if body.stream:
            raise HTTPException(400, "stream=true is not supported by this server yet")
        res = await asyncio.to_thread(run, body.request(max_tokens_limit, prompt=body.prompt))
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name, "usage": usage(res),
                "choices": [{"index": 0, "text": res.text, "finish_reason": res.finish_reason}]}

    return app


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL (``.../v1``)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
