"""`hafrm serve`: a reward model over HTTP (FastAPI + uvicorn), batched across requests.

- `POST /get_reward`: OpenRLHF's remote reward-model protocol, `{"query": [texts], "prompts": [...],
  "labels": [...]}` -> `{"rewards": [...], "scores": [...], "extra_logs": {}}`. Queries are
  prompt + response texts already formatted (special tokens kept): they are not re-templated.
  Pad tokens at either end are stripped and the assistant turn is closed the way hafrm closes
  every training sequence (ChatML: `<|im_end|>` then a newline), if the text does not already
  end so: OpenRLHF sends each sample decoded, ending at its eos (older versions also padded it).
- `POST /score`: `{"pairs": [{"prompt": str | messages, "response": str}]}` -> `{"scores": [...]}`,
  formatted with the model's chat template exactly as `hafrm score` formats them.
- `GET /health`; FastAPI's OpenAPI page at `/docs`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from hafrm.apps.batcher import Batcher, QueueFull
from hafrm.errors import HafError
from hafrm.evaluation.scoring import RewardModel
from hafrm.training.precision import resolve_precision


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    head: str | None = None  # None: the model's own inference head
    normalize: bool = False  # (score - mean) / std with the model folder's statistics
    api_key: str | None = None  # required as `Authorization: Bearer <key>` when set
    max_texts: int = 256  # per request
    max_chars: int = 32_768  # per text
    max_batch_tokens: int | None = None  # per forward; None: 1,024 on CPU (larger is slower there), 16,384 on GPU
    precision: str = "fp32"  # fp32 (hafrm score's numbers), bf16 (autocast; faster where bf16 pays), auto
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others
    max_queue_texts: int = 4_096  # texts waiting; beyond, 503
    timeout_s: float = 120.0  # per request, queue included; beyond, 504
    batching: bool = True  # False: one request per forward


class Message(BaseModel):
    role: str
    content: str


class ScorePair(BaseModel):
    prompt: str | Annotated[list[Message], Field(min_length=1)]
    response: str


class ScoreRequest(BaseModel):
    pairs: list[ScorePair] = Field(min_length=1)


class GetRewardRequest(BaseModel):
    query: list[str] = Field(min_length=1)
    prompts: list[str] | None = None
    labels: list[Any] | None = None  # OpenRLHF sends them; a reward model does not use them


class QueryFormatter:
    """Token ids of an OpenRLHF query text: pads stripped, the turn closed as in training."""

    def __init__(self, rm: RewardModel):
        self.tok = rm.tokenizer
        self.closing = rm.encoder.closing
        self.pad = self.tok.pad_token or ""

    def strip_pads(self, text: str) -> str:
        if not self.pad:
            return text
        n, start, end = len(self.pad), 0, len(text)
        while text.startswith(self.pad, start, end):
            start += n
        while end - n >= start and text.endswith(self.pad, start, end):
            end -= n
        return text[start:end]

    def ids(self, text: str, field: str) -> list[int]:
        text = self.strip_pads(text)
        if not text.strip():
            raise HTTPException(422, f"{field} is empty (after stripping pad tokens)")
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        c = self.closing
        done = next((k for k in range(len(c), 0, -1) if ids[-k:] == c[:k]), 0)  # longest closing prefix at the end
        return ids + c[done:] if done < len(c) else ids


class ScoringService:
    """What the routes share: the model, the batcher, the limits."""

    def __init__(self, rm: RewardModel, settings: ServerSettings):
        self.rm = rm
        self.settings = settings
        self.head = rm.prepare(settings.head)  # an implicit head loads its reference model now
        if settings.normalize:
            rm.stats(self.head)  # fail at start-up, not at the first request
        self.max_tokens = getattr(rm.model.config.get_text_config(), "max_position_embeddings", None)
        self.formatter = QueryFormatter(rm)
        self.device = rm.model.device
        self.precision = resolve_precision(settings.precision, self.device)
        if self.precision not in ("fp32", "bf16"):
            raise HafError(f"unknown precision {settings.precision!r}; accepted: fp32, bf16, auto")
        self.max_batch_tokens = settings.max_batch_tokens or (16_384 if self.device.type == "cuda" else 1_024)
        self.batcher = Batcher(
            self._score,
            max_batch_tokens=self.max_batch_tokens,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue_texts=settings.max_queue_texts,
            batching=settings.batching,
        )

    def _score(self, seqs: list[list[int]], starts: list[int]) -> list[float]:
        # bf16 autocast covers the backbone; the reward head and the log-softmax stay fp32 inside
        with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            return self.rm.score_ids(seqs, starts, self.head, batch_size=256, max_batch_tokens=self.max_batch_tokens,
                                     normalize=self.settings.normalize)  # fmt: skip

    def authorise(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), key.encode()):
            raise HTTPException(401, "missing or wrong API key (send `Authorization: Bearer <key>`)",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    def check_sizes(self, field: str, texts: list[list[str]]) -> None:
        """`texts`: per item of `field`, the strings it carries."""
        limit, chars = self.settings.max_texts, self.settings.max_chars
        if len(texts) > limit:
            raise HTTPException(413, f"{field} has {len(texts)} items; this server takes at most {limit} a request "
                                     "(--max-texts)")  # fmt: skip
        for i, strings in enumerate(texts):
            n = sum(len(t) for t in strings)
            if n > chars:
                raise HTTPException(413, f"{field}[{i}] has {n} characters; at most {chars} (--max-chars)")

    def encode_queries(self, query: list[str], prompts: list[str] | None) -> tuple[list[list[int]], list[int]]:
        """Token ids of each query and where its response starts (only the implicit head needs that)."""
        seqs = [self.formatter.ids(q, f"query[{i}]") for i, q in enumerate(query)]
        if self.head != "implicit":
            return seqs, [0] * len(seqs)
        if prompts is None or len(prompts) != len(query):
            raise HTTPException(422, "the implicit head needs `prompts`, one per query")
        starts = []
        for i, (ids, p) in enumerate(zip(seqs, prompts, strict=True)):
            prompt = self.rm.tokenizer(self.formatter.strip_pads(p), add_special_tokens=False)["input_ids"]
            if ids[: len(prompt)] != prompt or len(prompt) >= len(ids):
                raise HTTPException(422, f"query[{i}] does not start with prompts[{i}] (as tokens), or has no response")
            starts.append(len(prompt))
        return seqs, starts

    def encode_pairs(self, pairs: list[ScorePair]) -> tuple[list[list[int]], list[int]]:
        seqs, starts = [], []
        for i, p in enumerate(pairs):
            prompt = p.prompt if isinstance(p.prompt, str) else [m.model_dump() for m in p.prompt]
            try:
                encoded = self.rm.encode(prompt, p.response)
            except Exception as e:  # a chat template that rejects the conversation (roles, order)
                raise HTTPException(422, f"pairs[{i}]: the chat template rejects it: {e}") from None
            seqs.append(encoded.ids)
            starts.append(encoded.start)
        return seqs, starts

    async def run(self, field: str, seqs: list[list[int]], starts: list[int]) -> list[float]:
        for i, s in enumerate(seqs):
            if self.max_tokens and len(s) > self.max_tokens:
                raise HTTPException(413, f"{field}[{i}] is {len(s)} tokens; the model takes {self.max_tokens}")
        try:
            future = self.batcher.submit(seqs, starts)
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        try:
            return await asyncio.wait_for(future, self.settings.timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"not scored within {self.settings.timeout_s:g} s (--timeout)") from None
        except QueueFull as e:  # shut down while queued
            raise HTTPException(503, str(e)) from None
        except torch.OutOfMemoryError:
            raise HTTPException(503, "out of memory in the forward: lower --max-batch-tokens",
                                headers={"Retry-After": "1"}) from None  # fmt: skip
        except Exception as e:  # the model failed on this batch; the server goes on
            raise HTTPException(500, f"scoring failed: {type(e).__name__}: {e}") from None


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
    where = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in errors[:5])
    return JSONResponse({"detail": f"invalid request: {where}"}, status_code=422)


def create_app(rm: RewardModel, settings: ServerSettings | None = None) -> FastAPI:
    service = ScoringService(rm, settings or ServerSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await asyncio.to_thread(service.batcher.close)  # the worker started with the service

    app = FastAPI(title="hafrm reward model", version="1", lifespan=lifespan)
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _invalid_request)
    max_body = service.settings.max_texts * (service.settings.max_chars + 64) * 6 + 2**20  # JSON escapes x6

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body:
            return JSONResponse({"detail": f"the body is {length} bytes; at most {max_body}"}, status_code=413)
        return await call_next(request)

    auth = [Depends(service.authorise)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "ready": service.batcher.alive,
            "model": str(rm.path),
            "mode": rm.meta.get("mode"),
            "head": service.head,
            "normalize": service.settings.normalize,
            "batching": service.settings.batching,
            "device": str(service.device),
            "precision": service.precision,
            "max_batch_tokens": service.max_batch_tokens,
            "queued_texts": service.batcher.queued_texts,
            "scored": dataclasses.asdict(service.batcher.stats),  # requests, texts, forwards, busy_s
        }

    @app.post("/get_reward", dependencies=auth)
    async def get_reward(body: GetRewardRequest) -> dict[str, Any]:
        """OpenRLHF's remote reward model: one reward per query text."""
        service.check_sizes("query", [[q] for q in body.query])
        if body.prompts is not None:
            service.check_sizes("prompts", [[q] for q in body.prompts])
        seqs, starts = await asyncio.to_thread(service.encode_queries, body.query, body.prompts)  # off the loop
        scores = await service.run("query", seqs, starts)
        return {"rewards": scores, "scores": scores, "extra_logs": {}}

    @app.post("/score", dependencies=auth)
    async def score(body: ScoreRequest) -> dict[str, Any]:
        """One score per (prompt, response), formatted as `hafrm score` formats them."""
        service.check_sizes("pairs", [
            [p.response, *([p.prompt] if isinstance(p.prompt, str) else [m.content for m in p.prompt])]
            for p in body.pairs
        ])  # fmt: skip
        seqs, starts = await asyncio.to_thread(service.encode_pairs, body.pairs)
        scores = await service.run("pairs", seqs, starts)
        return {"scores": scores, "head": service.head}

    return app
