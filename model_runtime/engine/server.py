"""An OpenAI-compatible HTTP front end (`/v1/chat/completions`) over any `Engine`, the native one by default.

It lets the `openai` engine, the official `openai` client and the Keye SGLang fork's clients talk to
our native runtime, so the `openai` engine is tested against a real server. Requests take the fork's
shape: `video_url` parts with `preprocess_kwargs` (fps, max_frames, min_frames, min_pixels,
max_pixels, video_total_pixels; our extension `start_s`/`end_s` picks a window). The server decodes the
video itself with `model_runtime.video` and writes chunk-local timestamps (CONTRACTS "Timestamps in
prompts"). Bad input gets an OpenAI-style JSON error with a 4xx status; the engine runs one batch at
a time behind a lock.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

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
        # Chunk-local seconds: every window looks like a clip starting at 0 (CONTRACTS).
        local_times = [round(t - chunk.start_s, 1) for t in sampled.timestamps]
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

    texts: list[str] = []
    videos: list[VideoInput] = []
    images: list[np.ndarray] = []
    content = user_messages[0].content
    for part in [TextPart(type="text", text=content or "")] if not isinstance(content, list) else content:
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif isinstance(part, VideoPart):
            videos.append(decode_video(part.video_url.url, part.video_url.preprocess_kwargs))
        else:
            images.append(decode_image(part.image_url.url, allow_local_files=allow_local_files))
    if len(videos) > 1:
        raise ApiError(400, "at most one video per request", code="unsupported")
    if videos and images:
        raise ApiError(400, "send a video or images, not both", code="unsupported")

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


# ---------------------------------------------------------------------------- app


def create_app(
    engine_or_checkpoint: Engine | str | Path,
    *,
    model_name: str | None = None,
    device: str = "cpu",
    attn_impl: str = "reference",
    video_decoder: VideoDecoder | None = None,
    allow_local_files: bool = True,
) -> FastAPI:
    """The FastAPI app serving `/v1/chat/completions`, `/v1/models` and `/healthz`.

    Pass an `Engine` (any kind) or a checkpoint folder, which is loaded into a `NativeEngine` on
    `device` with `attn_impl`. `model_name` defaults to the checkpoint folder's name (or the engine's).
    """
    if isinstance(engine_or_checkpoint, (str, Path)):
        from model_runtime.engine.native import NativeEngine

        engine: Engine = NativeEngine(engine_or_checkpoint, device=device, attn_impl=attn_impl)
        served_name = model_name or Path(engine_or_checkpoint).resolve().name
    else:
        engine = engine_or_checkpoint
        served_name = model_name or engine.name
    decoder = video_decoder or VideoDecoder(allow_local_files=allow_local_files)
    token_text, decode = _token_decoders(engine)
    engine_lock = threading.Lock()  # the engine keeps caches on the GPU: one batch at a time
    created = int(time.time())

    app = FastAPI(title="timemark model server", version="1")

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
        parsed = to_generation_request(body, decode_video=decoder, allow_local_files=allow_local_files)
        with engine_lock:
            try:
                if parsed.images:
                    completion = generate_with_images(engine, parsed.request, parsed.images)
                else:
                    (completion,) = engine.generate([parsed.request])
            except ValueError as err:  # e.g. frames the processor cannot take
                raise ApiError(400, str(err), code="engine-refused") from err
        return completion_body(completion, body, model=served_name, token_text=token_text, decode=decode)

    app.state.engine = engine
    return app


def generate_with_images(engine: Engine, request: GenerationRequest, images: list[np.ndarray]) -> Completion:
    """One request whose user turn holds images, through the native engine's processor and caches.

    `GenerationRequest` carries no images, so this drives `NativeEngine`'s own steps (encode the chat
    with image parts, prefill, decode) for one sequence; other engines refuse images.
    """
    processor = getattr(engine, "processor", None)
    if processor is None or not hasattr(engine, "_start"):
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
        sequence, job = engine._start(0, request, inputs, {}, {})  # type: ignore[attr-defined]
        (sequence.last_hidden,) = engine._prefill([job])  # type: ignore[attr-defined]
        engine._decode([sequence])  # type: ignore[attr-defined]
        return engine._completion(sequence)  # type: ignore[attr-defined]


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
