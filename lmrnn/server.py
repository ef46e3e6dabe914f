"""lmrnn serve RUN: a run behind a JSON HTTP API (FastAPI on uvicorn), on loopback by default.

    POST /v1/completions   OpenAI's completions shape: prompt, max_tokens, temperature, top_p,
                           n, stop, seed, stream (server-sent events, then "data: [DONE]")
    POST /v1/score         {"lines": [...]} -> each line's log-probability, tokens, perplexity
    GET  /health           {"status": "ok", ...}

Every request goes through lmrnn.api (one generation path, one scoring path, the CLI's). The
endpoints are plain functions, which the server runs in its thread pool; the completions in
flight are decoded together, one model call per step for all their rows (lmrnn.batcher), so
one long request does not hold up the others and many cost little more than one. A bad
request (malformed JSON, an option out of range, a prompt or max_tokens past the limits) gets
a 4xx and a one-line JSON error; the server keeps serving.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from lmrnn.api import LanguageModel
from lmrnn.errors import UserError
from lmrnn.generate import Generation

# lmrnn's finish reasons in OpenAI's words
FINISH = {"eos": "stop", "stop": "stop", "no_allowed_token": "stop", "length": "length", "time": "length"}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024  # per completion
    max_prompt_chars: int = 20_000
    max_n: int = 16
    max_lines: int = 1000  # per scoring request
    batch_rows: int = 64  # completions in flight decoded together, rows per model step (0: each alone)


class CompletionRequest(BaseModel):
    prompt: str = ""
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    model: str | None = None  # accepted, as clients send it; the server has one model


class ScoreRequest(BaseModel):
    lines: list[str]


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": " ".join(message.split()), "code": status}}, status_code=status)


def create_app(run_dir: Path, device: str = "auto", limits: Limits = Limits()) -> FastAPI:
    lm = LanguageModel(run_dir, device, batch_rows=limits.batch_rows)
    name = Path(run_dir).name
    max_n = min(limits.max_n, limits.batch_rows or limits.max_n)  # a request's samples fit in one batch
    app = FastAPI(title=f"lmrnn: {name}")

    @app.exception_handler(RequestValidationError)
    def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        return error(400, f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}")

    @app.exception_handler(RequestError)
    def refused(request: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(UserError)
    def user_error(request: Request, exc: UserError) -> JSONResponse:
        return error(400, str(exc))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "run": name, "cell": lm.config.model.cell, "device": str(lm.device)}

    @app.post("/v1/completions")
    def completions(body: CompletionRequest):
        if len(body.prompt) > limits.max_prompt_chars:
            raise RequestError(413, f"the prompt has {len(body.prompt):,} characters; this server takes "
                                    f"{limits.max_prompt_chars:,} at most")
        if body.max_tokens > limits.max_tokens:
            raise RequestError(400, f"max_tokens {body.max_tokens} is over this server's limit of {limits.max_tokens}")
        if body.n > max_n or (body.stream and body.n > 1):
            raise RequestError(400, f"n must be at most {max_n}, and 1 with stream")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        options = {"max_new_tokens": body.max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                   "stop": stops, "seed": body.seed}
        if any(not stop for stop in stops):
            raise RequestError(400, "stop strings must not be empty")
        identity = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                    "model": name}
        if body.stream:
            pieces = lm.stream_completion(body.prompt, **options)
            first = next(pieces)  # a bad option raises here, before the response starts
            return StreamingResponse(_events(identity, first, pieces), media_type="text/event-stream")
        generation = lm.complete(body.prompt, num_samples=body.n, **options)
        completion = sum(c.tokens for c in generation.continuations)
        return {**identity, "choices": [{"text": c.text, "index": i, "logprobs": None,
                                         "finish_reason": FINISH[c.finish_reason]}
                                        for i, c in enumerate(generation.continuations)],
                "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": completion,
                          "total_tokens": generation.prompt_tokens + completion}}

    @app.post("/v1/score")
    def score(body: ScoreRequest) -> dict:
        if not body.lines or len(body.lines) > limits.max_lines:
            raise RequestError(400, f"lines must hold 1 to {limits.max_lines} lines")
        if sum(map(len, body.lines)) > limits.max_prompt_chars:
            raise RequestError(413, f"the lines hold over {limits.max_prompt_chars:,} characters")
        return {"model": name, "scores": [s.as_dict() for s in lm.score(body.lines)]}

    return app


def _events(identity: dict, first, pieces):
    """Server-sent events: one per piece of text, then the finish reason, then [DONE]."""
    for piece in _chain(first, pieces):
        if isinstance(piece, Generation):
            reason = FINISH[piece.continuations[0].finish_reason]
            yield _event({**identity, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": reason}]})
        else:
            yield _event({**identity, "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}]})
    yield "data: [DONE]\n\n"


def _chain(first, rest):
    yield first
    yield from rest


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


def serve(run_dir: Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          limits: Limits = Limits()) -> None:
    import uvicorn

    uvicorn.run(create_app(run_dir, device, limits), host=host, port=port, log_level="warning")
