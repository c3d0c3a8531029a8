"""An OpenAI-compatible HTTP front end (`/v1/chat/completions`) over any `Engine`, the native one by default.

It lets the `openai` engine, the official `openai` client and the Keye SGLang fork's clients talk to
our native runtime, so the `openai` engine is tested against a real server. Requests take the fork's
shape: `video_url` parts with `preprocess_kwargs` (fps, max_frames, min_frames, min_pixels,
max_pixels, video_total_pixels; our extension `start_s`/`end_s` picks a window). The server decodes the
video itself with `model_runtime.video` and writes chunk-local timestamps (DESIGN §5, "Video input").
Concurrent requests are gathered into one `generate` call, and requests for the same video and kwargs
share one decoded `VideoInput`, so the engine encodes a chunk once for all its queries.
Bad input gets an OpenAI-style JSON error with a 4xx status.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from model_runtime.engine.base import Completion, Engine, GenerationRequest, VideoInput

WINDOW_KEYS = ("start_s", "end_s")  # our extension of the fork's preprocess_kwargs


class ApiError(Exception):
    """An error the client caused (or that it should see), turned into OpenAI's error JSON."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------- request schema


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImageUrl(_Part):
    url: str
    detail: str | None = None


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageUrl


class VideoUrl(_Part):
    url: str
    preprocess_kwargs: dict[str, Any] = Field(default_factory=dict)


class VideoPart(_Part):
    type: Literal["video_url"]
    video_url: VideoUrl


ContentPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class ChatMessage(_Part):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(_Part):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)  # -1 (vLLM/SGLang) and 0 both mean "no top-k filter"
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    skip_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False  # vLLM's extension: tokens come back as "token_id:N"

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Some clients send every field, unset ones as null; OpenAI treats those as absent.
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


# ---------------------------------------------------------------------------- media decoding


@dataclass(frozen=True)
class VideoDecoder:
    """Turns a `video_url` part into the frames the model sees, with `model_runtime.video`."""

    backend: str = "pyav"
    probe_timeout_s: float = 15.0
    allow_local_files: bool = True

    def __call__(self, url: str, preprocess_kwargs: dict[str, Any]) -> VideoInput:
        from model_runtime import video

        source = resolve_source(url, allow_local_files=self.allow_local_files, what="video")
        window = {key: preprocess_kwargs[key] for key in WINDOW_KEYS if key in preprocess_kwargs}
        sampling_kwargs = {key: value for key, value in preprocess_kwargs.items() if key not in WINDOW_KEYS}
        try:
            params = video.SamplingParams.from_kwargs(sampling_kwargs)
        except (TypeError, ValueError) as err:
            raise ApiError(400, f"bad preprocess_kwargs: {err}", code="bad-preprocess-kwargs") from err
        try:
            info = video.probe_video(source, timeout_s=self.probe_timeout_s)
            if window:
                start_s, end_s = _window(window, info.duration_s)
                chunk = video.plan_window(info, params, start_s, end_s)
            else:
                chunk = video.plan_coarse(info, params).chunks[0]
            sampled = video.sample_chunk(source, chunk, backend=self.backend)
        except video.VideoError as err:
            raise ApiError(400, f"video {url!r}: {err}", code=getattr(err, "code", "bad-video")) from err
        # Chunk-local seconds: every window looks like a clip starting at 0 (DESIGN §5); a kept frame
        # may sit a hair before the window's start, which still reads 0.0 (as grounding writes it).
        local_times = [max(0.0, round(t - chunk.start_s, 1)) for t in sampled.timestamps]
        return VideoInput(
            frames=sampled.frames,
            timestamps=local_times,
            source=url,
            preprocess_kwargs=dict(preprocess_kwargs),
        )


def _window(window: dict[str, Any], duration_s: float) -> tuple[float, float]:
    """The requested [start_s, end_s) as floats (end defaults to the video's end); plan_window checks the rest."""
    try:
        return float(window.get("start_s", 0.0)), float(window.get("end_s", duration_s))
    except (TypeError, ValueError) as err:
        raise ApiError(400, "start_s and end_s must be numbers of seconds", code="bad-window") from err


def resolve_source(url: str, *, allow_local_files: bool, what: str) -> str:
    """A local path or an http(s) URL that the decoders accept; refuse other schemes."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        if not parsed.netloc:
            raise ApiError(400, f"{what} URL {url!r} has no host", code="bad-url")
        return url
    if parsed.scheme == "data":
        raise ApiError(400, f"data: URLs are accepted for images only, not for a {what}", code="bad-url")
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "" or (len(parsed.scheme) == 1 and url[1:3] in (":\\", ":/")):
        path = Path(url)
    else:
        raise ApiError(400, f"unsupported {what} URL scheme {parsed.scheme!r} in {url!r}", code="bad-url")
    if not allow_local_files:
        raise ApiError(400, f"this server does not read local files ({url!r})", code="bad-url")
    if not path.is_file():
        raise ApiError(400, f"{what} file not found: {str(path)!r}", code="file-not-found")
    return str(path)


def decode_image(url: str, *, allow_local_files: bool, timeout_s: float = 15.0) -> np.ndarray:
    """An `image_url` (data:, http(s), file:// or a path) as an [H, W, 3] uint8 RGB array."""
    from PIL import Image, UnidentifiedImageError

    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise ApiError(400, "image data: URLs must be base64-encoded", code="bad-url")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ApiError(400, "image data: URL is not valid base64", code="bad-url") from err
    else:
        source = resolve_source(url, allow_local_files=allow_local_files, what="image")
        if source.startswith(("http://", "https://")):
            raw = _fetch(source, timeout_s)
        else:
            raw = Path(source).read_bytes()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # [H, W, 3], writable
    except (UnidentifiedImageError, OSError) as err:
        raise ApiError(400, f"cannot decode image {url[:80]!r}", code="bad-image") from err


def _fetch(url: str, timeout_s: float) -> bytes:
    import httpx

    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise ApiError(400, f"cannot fetch {url!r}: {err}", code="fetch-failed") from err
    return response.content


# ---------------------------------------------------------------------------- request -> engine


@dataclass
class ParsedChat:
    """A chat request reduced to what `GenerationRequest` can carry."""

    request: GenerationRequest
    images: list[np.ndarray]


def to_generation_request(
    body: ChatCompletionRequest,
    *,
    decode_video: Callable[[str, dict[str, Any]], VideoInput],
    allow_local_files: bool,
) -> ParsedChat:
    """One system text + one user turn (text, at most one video, images) -> a `GenerationRequest`.

    The engine interface places the video before the user's text, as the Keye chat template does for a
    video question; multi-turn histories are refused rather than silently flattened.
    """
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported", code="unsupported", param="n")
    if body.stream:
        raise ApiError(
            400, "streaming is not supported; send stream=false", code="unsupported", param="stream"
        )
    system_texts: list[str] = []
    user_messages = []
    for message in body.messages:
        if message.role in ("system", "developer"):
            system_texts.append(_plain_text(message))
        elif message.role == "user":
            user_messages.append(message)
        else:
            raise ApiError(
                400, f"{message.role!r} messages are not supported: send one user turn", code="unsupported"
            )
    if len(user_messages) != 1:
        raise ApiError(
            400, f"expected exactly one user message, got {len(user_messages)}", code="unsupported"
        )

    content = user_messages[0].content
    parts = content if isinstance(content, list) else [TextPart(type="text", text=content or "")]
    n_videos = sum(isinstance(part, VideoPart) for part in parts)
    if n_videos > 1:
        raise ApiError(400, "at most one video per request", code="unsupported")
    if n_videos and any(isinstance(part, ImagePart) for part in parts):
        raise ApiError(400, "send a video or images, not both", code="unsupported")
    texts: list[str] = []
    videos: list[VideoInput] = []
    images: list[np.ndarray] = []
    for part in parts:  # checked before decoding anything, so a refused request costs no decode
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, VideoPart):
            videos.append(decode_video(part.video_url.url, part.video_url.preprocess_kwargs))
        else:
            images.append(decode_image(part.image_url.url, allow_local_files=allow_local_files))

    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    request = GenerationRequest(
        prompt="\n".join(texts),
        video=videos[0] if videos else None,
        system="\n".join(system_texts) or None,
        max_new_tokens=body.max_completion_tokens or body.max_tokens or 128,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=max(body.top_k, 0),
        seed=body.seed,
        stop=tuple(stops),
    )
    return ParsedChat(request=request, images=images)


def _plain_text(message: ChatMessage) -> str:
    if isinstance(message.content, list):
        if any(not isinstance(part, TextPart) for part in message.content):
            raise ApiError(400, f"{message.role} messages may hold text only", code="unsupported")
        return "\n".join(part.text for part in message.content)
    return message.content or ""


# ---------------------------------------------------------------------------- response


def completion_body(
    completion: Completion,
    body: ChatCompletionRequest,
    *,
    model: str,
    token_text: Callable[[int], str],
    decode: Callable[[list[int], bool], str] | None,
) -> dict[str, Any]:
    """The `chat.completion` JSON for one engine completion."""
    text = completion.text
    if not body.skip_special_tokens and decode is not None:
        text = _cut_at_stop(decode(completion.token_ids, False), body.stop)
    logprobs = None
    if body.logprobs:
        entries = []
        for token_id, logprob in zip(completion.token_ids, completion.token_logprobs, strict=True):
            token = f"token_id:{token_id}" if body.return_tokens_as_token_ids else token_text(token_id)
            entries.append(
                # The engine reports only the chosen token's log-prob, so top_logprobs stays empty.
                {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
            )
        logprobs = {"content": entries}
    completion_tokens = len(completion.token_ids)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": completion.prompt_tokens + completion_tokens,
        },
    }


def _cut_at_stop(text: str, stop: str | list[str] | None) -> str:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    cuts = [text.index(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text


# ---------------------------------------------------------------------------- sharing and batching


class VideoCache:
    """Decoded videos by (URL, kwargs, file identity), newest `max_entries` kept.

    Concurrent requests for one video wait for a single decode and get the SAME `VideoInput` object,
    which is what lets the engine encode the video once and branch per query (base.py).
    """

    def __init__(self, decode: Callable[[str, dict[str, Any]], VideoInput], *, max_entries: int = 2) -> None:
        self._decode = decode
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, Any], Future[VideoInput]] = OrderedDict()
        self.decodes = 0

    def __call__(self, url: str, preprocess_kwargs: dict[str, Any]) -> VideoInput:
        key = (url, json.dumps(preprocess_kwargs, sort_keys=True, default=str), _file_identity(url))
        with self._lock:
            future = self._entries.get(key)
            owner = future is None
            if future is None:
                future = self._entries[key] = Future()
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)  # waiters keep their own reference to the future
            else:
                self._entries.move_to_end(key)
        if owner:
            try:
                future.set_result(self._decode(url, preprocess_kwargs))
                with self._lock:
                    self.decodes += 1
            except BaseException as err:  # every waiter sees the error; the next request tries again
                future.set_exception(err)
                with self._lock:
                    if self._entries.get(key) is future:
                        del self._entries[key]
        return future.result()


def _file_identity(url: str) -> tuple[int, int] | None:
    """(mtime, size) of a local file, so a rewritten file is decoded again; None for URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("", "file"):
        return None
    path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else url
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@dataclass
class _Job:
    work: GenerationRequest | Callable[[], Completion]  # a request to batch, or work that runs alone
    future: Future[Completion]


class RequestBatcher:
    """Runs the engine on one thread: requests arriving within `window_s` of the first (up to
    `max_batch`) go into one `generate` call; callables (image requests) run alone, in order.

    A failing batch is re-run one request at a time, so an error reaches only the request that
    caused it. `batch_sizes` records the recent batches.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 8, window_s: float = 0.02) -> None:
        self.engine, self.max_batch, self.window_s = engine, max(1, max_batch), window_s
        self.batch_sizes: deque[int] = deque(maxlen=1000)
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="engine-batcher", daemon=True)
        self._thread.start()

    def generate(self, request: GenerationRequest) -> Completion:
        return self._submit(request)

    def call(self, work: Callable[[], Completion]) -> Completion:
        return self._submit(work)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=60)

    def _submit(self, work: GenerationRequest | Callable[[], Completion]) -> Completion:
        job = _Job(work, Future())
        with self._cond:
            if self._closed:
                raise RuntimeError("the model server is shutting down")
            self._jobs.append(job)
            self._cond.notify_all()
        return job.future.result()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                first = self._jobs.popleft()
            if callable(first.work):
                _settle(first, first.work)
                continue
            batch = [first]
            deadline = time.monotonic() + self.window_s
            with self._cond:
                while len(batch) < self.max_batch and not self._closed:
                    if self._jobs and not callable(self._jobs[0].work):
                        batch.append(self._jobs.popleft())
                    elif self._jobs or time.monotonic() >= deadline:
                        break  # work that runs alone is next, or the window closed
                    else:
                        self._cond.wait(deadline - time.monotonic())
            self._run(batch)

    def _run(self, batch: list[_Job]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            completions = self.engine.generate([job.work for job in batch])  # type: ignore[misc]
        except Exception as err:
            if len(batch) == 1:
                batch[0].future.set_exception(err)
            else:
                for job in batch:
                    self._run([job])
            return
        for job, completion in zip(batch, completions, strict=True):
            job.future.set_result(completion)


def _settle(job: _Job, work: Callable[[], Completion]) -> None:
    try:
        job.future.set_result(work())
    except Exception as err:
        job.future.set_exception(err)


# ---------------------------------------------------------------------------- app


def create_app(
    engine_or_checkpoint: Engine | str | Path,
    *,
    model_name: str | None = None,
    device: str = "cpu",
    attn_impl: str = "reference",
    moe_impl: str = "reference",
    quantize: str | None = None,
    index_fp8: bool = False,
    tp: int = 1,
    cuda_graphs: bool = True,
    video_decoder: VideoDecoder | None = None,
    allow_local_files: bool = True,
    max_batch: int = 8,
    batch_window_s: float = 0.02,
    video_cache_entries: int = 2,
) -> FastAPI:
    """The FastAPI app serving `/v1/chat/completions`, `/v1/models` and `/healthz`.

    Pass an `Engine` (any kind) or a checkpoint folder, which is loaded into a `NativeEngine` on
    `device` with `attn_impl`, `moe_impl`, `quantize`, `index_fp8`, `tp` and `cuda_graphs` (and closed with the app). `model_name` defaults to the checkpoint
    folder's name (or the engine's). Requests arriving within `batch_window_s` of each other run as
    one batch of at most `max_batch`; the last `video_cache_entries` decoded videos are kept.
    """
    if isinstance(engine_or_checkpoint, (str, Path)):
        from model_runtime.engine import load_engine

        engine: Engine = load_engine(
            "native", checkpoint=engine_or_checkpoint, device=device, attn_impl=attn_impl, moe_impl=moe_impl,
            quantize=quantize, index_fp8=index_fp8, tp=tp, cuda_graphs=cuda_graphs,
        )  # fmt: skip
        served_name = model_name or Path(engine_or_checkpoint).resolve().name
        owns_engine = True
    else:
        engine = engine_or_checkpoint
        served_name = model_name or engine.name
        owns_engine = False
    videos = VideoCache(
        video_decoder or VideoDecoder(allow_local_files=allow_local_files), max_entries=video_cache_entries
    )
    token_text, decode = _token_decoders(engine)
    batcher = RequestBatcher(engine, max_batch=max_batch, window_s=batch_window_s)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()
        if owns_engine:
            engine.close()

    app = FastAPI(title="timemark model server", version="1", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
        # The deepest error is the specific one (a union reports one error per branch it tried).
        first = max(err.errors(), key=lambda e: len(e.get("loc", ())), default={})
        where = ".".join(str(p) for p in first.get("loc", ())[1:] if not _is_branch_name(p)) or None
        message = (
            f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid body")
        )
        return JSONResponse(
            ApiError(400, message, code="invalid-request", param=where).body(), status_code=400
        )

    @app.exception_handler(Exception)
    async def server_error(_: Request, err: Exception) -> JSONResponse:
        # e.g. CUDA out of memory: the client sees OpenAI's shape, the log keeps the traceback
        error = ApiError(500, f"{type(err).__name__}: {err}", code="engine-failed")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "model": served_name}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        card = {"id": served_name, "object": "model", "created": created, "owned_by": "timemark"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatCompletionRequest) -> dict[str, Any]:
        if body.model != served_name:
            raise ApiError(
                404, f"model {body.model!r} is not served here (try {served_name!r})", code="model_not_found"
            )
        parsed = to_generation_request(body, decode_video=videos, allow_local_files=allow_local_files)
        try:
            if parsed.images:
                completion = batcher.call(lambda: generate_with_images(engine, parsed.request, parsed.images))
            else:
                completion = batcher.generate(parsed.request)
        except ValueError as err:  # e.g. frames the processor cannot take
            raise ApiError(400, str(err), code="engine-refused") from err
        return completion_body(completion, body, model=served_name, token_text=token_text, decode=decode)

    app.state.engine, app.state.batcher, app.state.videos = engine, batcher, videos
    return app


def generate_with_images(engine: Engine, request: GenerationRequest, images: list[np.ndarray]) -> Completion:
    """One request whose user turn holds images, through the native engine's processor and caches.

    `GenerationRequest` carries no images, so the chat with image parts is encoded here by the engine's
    processor and run through `generate_encoded` (native engines, one GPU or tensor-parallel); other
    engines refuse images.
    """
    processor = getattr(engine, "processor", None)
    if processor is None or not hasattr(engine, "generate_encoded"):
        raise ApiError(400, f"engine {engine.name!r} takes no images", code="unsupported")
    import torch

    from model_runtime.video import smart_resize

    parts: list[dict[str, Any]] = []
    for image in images:
        height, width = smart_resize(
            image.shape[0],
            image.shape[1],
            factor=processor.factor,
            min_pixels=int(processor.pre["min_pixels"]),
            max_pixels=int(processor.pre["max_pixels"]),
        )
        parts.append({"type": "image", "image": _resize(image, height, width)})
    parts.append({"type": "text", "text": request.prompt})
    messages: list[dict[str, Any]] = [{"role": "system", "content": request.system}] if request.system else []
    messages.append({"role": "user", "content": parts})
    with torch.inference_mode():
        inputs = processor.encode_messages(messages)
    return engine.generate_encoded([(request, inputs)])[0]  # type: ignore[attr-defined]


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.array(resized, dtype=np.uint8)  # [height, width, 3], writable


def _is_branch_name(loc_part: Any) -> bool:
    """Pydantic names union branches in error locations ("str", "list[...]", "function-after[...]")."""
    return isinstance(loc_part, str) and (loc_part == "str" or "[" in loc_part)


def _token_decoders(engine: Engine) -> tuple[Callable[[int], str], Callable[[list[int], bool], str] | None]:
    """Per-token text for logprobs and a full decode for skip_special_tokens=false, if the engine has a tokenizer."""
    processor = getattr(engine, "processor", None)
    if processor is None:
        return (lambda token_id: f"token_id:{token_id}"), None

    def decode(ids: list[int], skip_special: bool) -> str:
        return processor.decode(ids, skip_special_tokens=skip_special)

    return (lambda token_id: decode([token_id], False)), decode
