"""The OpenAI-compatible server over a tiny random checkpoint, answered by real clients.

(a) the official `openai` client, (b) plain `requests` in the Keye fork's payload shape (`video_url` +
`preprocess_kwargs`), (c) our `OpenAIEngine`, whose greedy answers must equal `NativeEngine`'s on the
same frames; and the bad inputs, which must come back as OpenAI-style JSON errors with 4xx codes.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import requests

from model_runtime.engine.base import GenerationRequest, VideoInput

from .conftest import VIDEO_KWARGS

MODEL = "keye-tiny"


def chat(server_url: str, payload: dict, timeout: float = 60) -> requests.Response:
    return requests.post(
        f"{server_url}/v1/chat/completions", json={"model": MODEL, **payload}, timeout=timeout
    )


def video_part(path: Path | str, **kwargs: object) -> dict:
    return {
        "type": "video_url",
        "video_url": {"url": str(path), "preprocess_kwargs": {**VIDEO_KWARGS, **kwargs}},
    }


def assert_openai_error(response: requests.Response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error["message"]


def frames_as_the_fork_decodes_them(path: Path, **window: float) -> tuple[VideoInput, float]:
    """Frames for a request, built here with model_runtime.video directly (not through the server)."""
    from model_runtime.video import SamplingParams, plan_coarse, plan_window, probe_video, sample_chunk

    info = probe_video(str(path))
    params = SamplingParams.from_kwargs(VIDEO_KWARGS)
    if window:
        chunk = plan_window(info, params, window["start_s"], window["end_s"])
    else:
        chunk = plan_coarse(info, params).chunks[0]
    sampled = sample_chunk(str(path), chunk)
    local = [max(0.0, round(t - chunk.start_s, 1)) for t in sampled.timestamps]
    video = VideoInput(sampled.frames, local, source=str(path), preprocess_kwargs={**VIDEO_KWARGS, **window})
    return video, chunk.start_s


# ---------------------------------------------------------------------------- (a) the openai client


def test_openai_client_text_and_models(server_url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server_url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == [MODEL]
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
    )
    choice = reply.choices[0]
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == len(choice.logprobs.content) >= 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert all(entry.logprob <= 0.0 for entry in choice.logprobs.content)
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 6


def test_openai_client_image_data_url(server_url: str) -> None:
    from openai import OpenAI
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    client = OpenAI(base_url=f"{server_url}/v1", api_key="unused")
    with_image = client.chat.completions.create(
        model=MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url}},
                    {"type": "text", "text": "What?"},
                ],
            }
        ],
        max_tokens=3,
        temperature=0,
    )
    text_only = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What?"}], max_tokens=3, temperature=0
    )
    # the image's visual tokens (plus its start/end markers) are in the prompt
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens + 2


def test_openai_client_sees_bad_requests_as_errors(server_url: str) -> None:
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{server_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


# ---------------------------------------------------------------------------- (b) the fork's payload


def test_requests_client_with_video_url_and_preprocess_kwargs(server_url: str, small_video: Path) -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    video_part(small_video),
                    {"type": "text", "text": "When does the red circle appear?"},
                ],
            }
        ],
        "max_tokens": 5,
        "temperature": 0,
        "logprobs": True,
        "return_tokens_as_token_ids": True,
    }
    response = chat(server_url, body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["model"] == MODEL
    entries = data["choices"][0]["logprobs"]["content"]
    assert all(entry["token"].startswith("token_id:") for entry in entries)
    assert data["usage"]["completion_tokens"] == len(entries)

    # file:// URLs reach the same frames, so the same greedy answer and prompt length
    question = body["messages"][0]["content"][1]
    file_url_body = {
        **body,
        "messages": [{"role": "user", "content": [video_part(small_video.as_uri()), question]}],
    }
    as_file_url = chat(server_url, file_url_body)
    assert as_file_url.status_code == 200, as_file_url.text
    assert as_file_url.json()["choices"][0]["message"] == data["choices"][0]["message"]
    assert as_file_url.json()["usage"] == data["usage"]


def test_http_video_and_image_urls(server_url: str, small_video: Path, http_files: str) -> None:
    from PIL import Image

    Image.fromarray(np.full((56, 56, 3), 200, np.uint8)).save(small_video.parent / "grey.png")
    question = {"type": "text", "text": "When?"}
    body = {"max_tokens": 3, "temperature": 0}
    local = chat(
        server_url, {**body, "messages": [{"role": "user", "content": [video_part(small_video), question]}]}
    )
    remote_part = video_part(f"{http_files}/{small_video.name}")
    remote = chat(server_url, {**body, "messages": [{"role": "user", "content": [remote_part, question]}]})
    assert remote.status_code == 200, remote.text
    assert remote.json()["choices"][0]["message"] == local.json()["choices"][0]["message"]
    assert remote.json()["usage"] == local.json()["usage"]

    image_part = {"type": "image_url", "image_url": {"url": f"{http_files}/grey.png"}}
    image = chat(server_url, {**body, "messages": [{"role": "user", "content": [image_part, question]}]})
    assert image.status_code == 200, image.text
    missing = video_part(f"{http_files}/missing.mp4")
    gone = chat(server_url, {**body, "messages": [{"role": "user", "content": [missing, question]}]})
    assert_openai_error(gone, 400)


def test_video_window_has_fewer_tokens_than_the_whole_video(server_url: str, small_video: Path) -> None:
    def prompt_tokens(part: dict) -> int:
        response = chat(server_url, {"messages": [{"role": "user", "content": [part]}], "max_tokens": 1})
        assert response.status_code == 200, response.text
        return response.json()["usage"]["prompt_tokens"]

    assert prompt_tokens(video_part(small_video, start_s=1.0, end_s=2.0)) < prompt_tokens(
        video_part(small_video)
    )


def test_seeded_sampling_repeats_and_skip_special_tokens(server_url: str, tiny_checkpoint: Path) -> None:
    from model_runtime.processor import KeyeProcessor

    body = {
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": 8,
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 1234,
        "logprobs": True,
        "return_tokens_as_token_ids": True,
        "skip_special_tokens": False,
    }
    first, second = chat(server_url, body).json(), chat(server_url, body).json()
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    ids = [int(e["token"].split(":")[1]) for e in first["choices"][0]["logprobs"]["content"]]
    processor = KeyeProcessor.from_pretrained(tiny_checkpoint)
    assert first["choices"][0]["message"]["content"] == processor.decode(ids, skip_special_tokens=False)


def test_null_fields_mean_defaults(server_url: str) -> None:
    body = {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": None,
        "top_p": None,
    }
    body |= {"stop": None, "seed": None, "logprobs": None, "n": None, "stream": None}
    response = chat(server_url, body)
    assert response.status_code == 200, response.text


def test_healthz(server_url: str) -> None:
    assert requests.get(f"{server_url}/healthz", timeout=10).json() == {"status": "ok", "model": MODEL}


# ---------------------------------------------------------------------------- (c) OpenAIEngine == NativeEngine


def test_openai_engine_matches_native_engine_on_the_same_frames(
    server_url: str, tiny_checkpoint: Path, small_video: Path
) -> None:
    from model_runtime.engine import load_engine

    whole, _ = frames_as_the_fork_decodes_them(small_video)
    window, start_s = frames_as_the_fork_decodes_them(small_video, start_s=1.0, end_s=3.0)
    assert start_s == 1.0 and window.timestamps[0] < 1.0  # the window's frames carry local seconds
    requests_ = [
        GenerationRequest(prompt="When does the red circle appear?", video=whole, max_new_tokens=6),
        GenerationRequest(prompt="Where is it?", video=whole, max_new_tokens=6),  # shares the video prefix
        GenerationRequest(prompt="And now?", video=window, system="Answer in seconds.", max_new_tokens=6),
        GenerationRequest(prompt="No video here.", max_new_tokens=4, stop=("\n",)),
    ]
    native = load_engine("native", checkpoint=tiny_checkpoint)
    remote = load_engine("openai", base_url=server_url, model=MODEL, timeout_s=60)
    try:
        expected, got = native.generate(requests_), remote.generate(requests_)
    finally:
        native.close()
        remote.close()
    for want, have in zip(expected, got, strict=True):
        assert have.text == want.text
        assert have.token_ids == want.token_ids
        assert have.prompt_tokens == want.prompt_tokens
        assert have.finish_reason == want.finish_reason
        np.testing.assert_allclose(have.token_logprobs, want.token_logprobs, rtol=1e-5, atol=1e-5)


def test_openai_engine_refuses_a_video_without_source(server_url: str) -> None:
    from model_runtime.engine.openai_engine import OpenAIEngine

    engine = OpenAIEngine(server_url, MODEL)
    frames_only = VideoInput(np.zeros((2, 28, 28, 3), np.uint8), [0.0, 1.0])
    with pytest.raises(ValueError, match="no source"):
        engine.generate([GenerationRequest(prompt="x", video=frames_only)])
    engine.close()


def test_openai_engine_reports_the_servers_error(server_url: str, tmp_path: Path) -> None:
    from model_runtime.engine.openai_engine import OpenAIEngine, OpenAIEngineError

    missing = VideoInput(np.zeros((2, 28, 28, 3), np.uint8), [0.0, 1.0], source=str(tmp_path / "gone.mp4"))
    engine = OpenAIEngine(server_url, MODEL, max_retries=0)
    with pytest.raises(OpenAIEngineError, match="not found") as info:
        engine.generate([GenerationRequest(prompt="x", video=missing)])
    assert info.value.status == 400
    engine.close()


def test_openai_engine_unreachable_server_is_a_clear_error() -> None:
    from model_runtime.engine.openai_engine import OpenAIEngine, OpenAIEngineError

    engine = OpenAIEngine("http://127.0.0.1:9", MODEL, max_retries=0, timeout_s=2)
    with pytest.raises(OpenAIEngineError, match="cannot reach"):
        engine.generate([GenerationRequest(prompt="x")])
    engine.close()


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        pytest.param(
            [{"type": "audio_url", "audio_url": {"url": "a.wav"}}],
            "invalid-request",
            "audio_url",
            id="unknown-part",
        ),
        pytest.param([video_part("ftp://example.com/v.mp4")], "bad-url", "scheme 'ftp'", id="ftp-url"),
        pytest.param([video_part("https://")], "bad-url", "no host", id="url-without-host"),
        pytest.param(
            [video_part("data:video/mp4;base64,AAAA")], "bad-url", "images only", id="video-data-url"
        ),
        pytest.param([video_part("/no/such/video.mp4")], "file-not-found", "not found", id="missing-file"),
        pytest.param(
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}],
            "bad-url",
            "base64",
            id="bad-base64",
        ),
        pytest.param(
            [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            "bad-image",
            "cannot decode",
            id="not-an-image",
        ),
    ],
)
def test_bad_parts_are_400(server_url: str, content: list, code: str, message: str) -> None:
    response = chat(server_url, {"messages": [{"role": "user", "content": content}], "max_tokens": 2})
    assert message in assert_openai_error(response, 400, code)


def test_undecodable_video_is_400(server_url: str, tmp_path: Path) -> None:
    fake = tmp_path / "not-a-video.mp4"
    fake.write_text("this is a text file, not H.264\n" * 20)
    response = chat(server_url, {"messages": [{"role": "user", "content": [video_part(fake)]}]})
    assert "not-a-video.mp4" in assert_openai_error(response, 400)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"fps_typo": 2}, "unknown sampling parameters", id="unknown-key"),
        pytest.param({"fps": -1}, "fps", id="negative-fps"),
        pytest.param({"start_s": 3.0, "end_s": 1.0}, "not after", id="reversed-window"),
        pytest.param({"start_s": "soon"}, "seconds", id="window-not-a-number"),
    ],
)
def test_bad_preprocess_kwargs_are_400(
    server_url: str, small_video: Path, kwargs: dict, message: str
) -> None:
    response = chat(
        server_url, {"messages": [{"role": "user", "content": [video_part(small_video, **kwargs)]}]}
    )
    assert message in assert_openai_error(response, 400)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param({"messages": []}, "invalid-request", id="no-messages"),
        pytest.param(
            {"messages": [{"role": "user", "content": "x"}], "stream": True}, "unsupported", id="stream"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "x"}], "temperature": -1},
            "invalid-request",
            id="negative-temperature",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "unsupported",
            id="multi-turn",
        ),
    ],
)
def test_bad_requests_are_400(server_url: str, payload: dict, code: str) -> None:
    assert_openai_error(chat(server_url, payload), 400, code)


def test_two_videos_are_refused(server_url: str, small_video: Path) -> None:
    content = [video_part(small_video), video_part(small_video)]
    assert "at most one video" in assert_openai_error(
        chat(server_url, {"messages": [{"role": "user", "content": content}]}), 400
    )


def test_body_that_is_not_json_is_400(server_url: str) -> None:
    response = requests.post(
        f"{server_url}/v1/chat/completions",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert_openai_error(response, 400, "invalid-request")


# ---------------------------------------------------------------------------- batching and sharing


def test_concurrent_queries_on_one_video_are_one_batch_with_one_decode(
    tiny_checkpoint: Path, small_video: Path
) -> None:
    import threading

    import uvicorn

    from model_runtime.engine.native import NativeEngine
    from model_runtime.engine.server import create_app

    from .conftest import _free_port

    engine = NativeEngine(tiny_checkpoint)
    # The batch closes as soon as all three requests are in (max_batch), so the long window costs nothing.
    app = create_app(engine, model_name=MODEL, max_batch=3, batch_window_s=30.0)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive()
        threading.Event().wait(0.05)
    questions = ["When does the red circle appear?", "When does it leave?", "Is there a square?"]
    replies: dict[str, dict] = {}

    def ask(question: str) -> None:
        content = [video_part(small_video), {"type": "text", "text": question}]
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 4,
            "temperature": 0,
        }
        replies[question] = requests.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=60
        ).json()

    try:
        askers = [threading.Thread(target=ask, args=(q,)) for q in questions]
        for asker in askers:
            asker.start()
        for asker in askers:
            asker.join(timeout=90)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert list(app.state.batcher.batch_sizes) == [3]
    assert app.state.videos.decodes == 1

    shared, _ = frames_as_the_fork_decodes_them(small_video)
    direct = engine.generate([GenerationRequest(prompt=q, video=shared, max_new_tokens=4) for q in questions])
    for question, completion in zip(questions, direct, strict=True):
        assert replies[question]["choices"][0]["message"]["content"] == completion.text
        assert replies[question]["usage"]["prompt_tokens"] == completion.prompt_tokens


def test_openai_engine_without_the_token_id_extension(server_url: str) -> None:
    from model_runtime.engine.openai_engine import OpenAIEngine

    engine = OpenAIEngine(server_url, MODEL, request_token_ids=False)
    (completion,) = engine.generate([GenerationRequest(prompt="Hello", max_new_tokens=3)])
    engine.close()
    assert completion.token_ids == [] and 1 <= len(completion.token_logprobs) <= 3
