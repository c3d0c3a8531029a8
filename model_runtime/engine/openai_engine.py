"""The `openai` engine: any OpenAI-compatible chat server (the Keye SGLang fork, vLLM, `timemark serve-model`).

The server decodes the video itself, so each request's video travels as a `video_url` part carrying
`VideoInput.source` and the fork's `preprocess_kwargs`; the frames in the `VideoInput` are not sent.
A `VideoInput` without a `source` cannot be sent and is refused. Log-probs are asked for and parsed
into `Completion.token_logprobs`; token ids come back when the server honours vLLM's
`return_tokens_as_token_ids` (ours does), and are left empty otherwise. Requests of one batch go out
concurrently (the server batches them) and come back in order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from model_runtime.engine.base import Completion, GenerationRequest

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class OpenAIEngineError(RuntimeError):
    """The server refused a request or could not be reached; the message carries its own words."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OpenAIEngine:
    """`Engine` over an OpenAI-compatible `/v1/chat/completions` endpoint.

    `base_url` is the server root with or without `/v1`; `model` the served model name. Transient
    failures (connection errors, 408/429/5xx) are retried `max_retries` times with backoff; other 4xx
    answers raise `OpenAIEngineError` at once. `request_token_ids=False` leaves out vLLM's
    `return_tokens_as_token_ids` for servers that reject unknown fields (token_ids then come back empty).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
        max_concurrency: int = 8,
        request_token_ids: bool = True,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        self.url = (root if root.endswith("/v1") else root + "/v1") + "/chat/completions"
        self.model = model
        self.max_retries = max_retries
        self.max_concurrency = max(1, max_concurrency)
        self.request_token_ids = request_token_ids
        self.extra_body = dict(extra_body or {})
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        payloads = [self.payload(request) for request in requests]  # refuse bad input before sending any
        if len(payloads) <= 1:
            return [self._complete(payload) for payload in payloads]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(payloads))) as pool:
            return list(pool.map(self._complete, payloads))

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------------ request / response

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body for one request: system message, then video part (if any) and text."""
        content: list[dict[str, Any]] = []
        if request.video is not None:
            source = request.video.source
            if not source:
                raise ValueError(
                    "the openai engine sends videos by URL, and this VideoInput has no source: "
                    "build it with source=<path or URL> (the server decodes the video itself)"
                )
            url = source if "://" in source else os.path.abspath(source)
            content.append(
                {
                    "type": "video_url",
                    "video_url": {"url": url, "preprocess_kwargs": dict(request.video.preprocess_kwargs)},
                }
            )
        content.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": request.max_new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "logprobs": True,
        }
        if (
            self.request_token_ids
        ):  # vLLM's extension, which our server honours; off for servers that refuse it
            body["return_tokens_as_token_ids"] = True
        if request.top_k > 0:
            body["top_k"] = request.top_k
        if request.seed is not None:
            body["seed"] = request.seed
        if request.stop:
            body["stop"] = list(request.stop)
        return {**body, **self.extra_body}

    def _complete(self, payload: dict[str, Any]) -> Completion:
        return parse_completion(self._post(payload))

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._client.post(self.url, json=payload)
            except httpx.TransportError as err:
                if last:
                    raise OpenAIEngineError(f"cannot reach {self.url}: {err}") from err
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code not in TRANSIENT_STATUS or last:
                    raise OpenAIEngineError(
                        f"{self.url} answered {response.status_code}: {_error_message(response)}",
                        status=response.status_code,
                    )
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")


def parse_completion(data: dict[str, Any]) -> Completion:
    """A `Completion` from a `chat.completion` JSON body."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        finish = choice.get("finish_reason") or "stop"
        usage = data.get("usage") or {}
    except (KeyError, IndexError, TypeError) as err:
        raise OpenAIEngineError(f"not a chat.completion answer: {str(data)[:200]}") from err
    entries = (choice.get("logprobs") or {}).get("content") or []
    logprobs = [float(entry["logprob"]) for entry in entries]
    token_ids = [_token_id(entry.get("token", "")) for entry in entries]
    return Completion(
        text=text,
        token_ids=token_ids if all(t is not None for t in token_ids) else [],  # type: ignore[misc]
        token_logprobs=logprobs,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        finish_reason="length" if finish == "length" else "stop",
    )


def _token_id(token: str) -> int | None:
    prefix = "token_id:"
    if token.startswith(prefix) and token[len(prefix) :].isdigit():
        return int(token[len(prefix) :])
    return None


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:300]
