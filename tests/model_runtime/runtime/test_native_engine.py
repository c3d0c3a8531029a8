"""NativeEngine on a tiny checkpoint: determinism, prefix sharing, log-probs, stops, batching, chunking."""

from __future__ import annotations

import pytest
import torch

from model_runtime.engine.base import Engine, GenerationRequest
from model_runtime.engine.native import NativeEngine

QUERIES = ["When does the red circle appear?", "When does the blue square move?", "Find the green triangle."]


@pytest.fixture(scope="module")
def engine(tiny_ckpt) -> NativeEngine:
    return NativeEngine(tiny_ckpt, max_batch=8)


def _requests(video, n_new: int = 10, **kw) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=q, video=video, max_new_tokens=n_new, **kw) for q in QUERIES]


def test_engine_satisfies_the_interface(engine: NativeEngine) -> None:
    assert isinstance(engine, Engine) and engine.name == "native"


def test_greedy_is_deterministic(engine: NativeEngine, video) -> None:
    first = engine.generate(_requests(video))
    second = engine.generate(_requests(video))
    assert [c.token_ids for c in first] == [c.token_ids for c in second]
    assert all(len(c.token_ids) == 10 and c.finish_reason == "length" for c in first)
    assert first[0].prompt_tokens > engine.model.config.text.sa.topk  # the sparse path is exercised


def test_prefix_shared_answers_equal_unshared(engine: NativeEngine, make_video) -> None:
    shared = engine.generate(_requests(make_video(seed=4)))
    # Equal frames in different objects: nothing is shared, each request encodes its own video.
    alone = [
        engine.generate([GenerationRequest(prompt=q, video=make_video(seed=4), max_new_tokens=10)])[0]
        for q in QUERIES
    ]
    for a, b in zip(shared, alone, strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-4, rtol=1e-4
        )


def _direct_logprobs(engine: NativeEngine, prompt: str, video, token_ids: list[int]) -> torch.Tensor:
    """log p(token) of each generated token from one plain forward over prompt + answer, no cache."""
    inputs = engine.processor.encode_request(prompt, video)
    n = inputs.input_ids.shape[0]
    generated = torch.tensor(token_ids)
    ids = torch.cat([inputs.input_ids, generated])
    gen_pos = (torch.arange(n, n + len(generated)) + inputs.rope_delta).expand(3, -1)
    positions = torch.cat([inputs.positions, gen_pos], dim=1)
    with torch.no_grad():
        logits = engine.model(ids, positions, pixel_values=inputs.pixel_values, grids=inputs.grids)
    return torch.log_softmax(logits[n - 1 : -1], -1).gather(1, generated[:, None])[:, 0]


def test_logprobs_match_a_direct_forward(engine: NativeEngine, video) -> None:
    (completion,) = engine.generate([GenerationRequest(prompt=QUERIES[0], video=video, max_new_tokens=8)])
    expected = _direct_logprobs(engine, QUERIES[0], video, completion.token_ids)
    torch.testing.assert_close(torch.tensor(completion.token_logprobs), expected, atol=1e-4, rtol=1e-4)
    assert completion.prompt_tokens == engine.processor.encode_request(QUERIES[0], video).input_ids.shape[0]


def test_sampling_is_reproducible_per_seed_with_unmodified_logprobs(engine: NativeEngine, video) -> None:
    def run(seed: int):
        req = GenerationRequest(
            prompt=QUERIES[1], video=video, max_new_tokens=12, temperature=1.5, top_p=0.9, top_k=50, seed=seed
        )
        return engine.generate([req])[0]

    a, b, c = run(1), run(1), run(2)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    # The log-probs are those of the model's own distribution, not of the tempered / truncated one.
    expected = _direct_logprobs(engine, QUERIES[1], video, a.token_ids)
    torch.testing.assert_close(torch.tensor(a.token_logprobs), expected, atol=1e-4, rtol=1e-4)


def test_stop_strings_and_stop_tokens(engine: NativeEngine, video) -> None:
    (full,) = engine.generate([GenerationRequest(prompt=QUERIES[2], video=video, max_new_tokens=16)])
    ascii_pairs = [
        full.text[i : i + 2]
        for i in range(2, len(full.text) - 1)
        if full.text[i : i + 2].isascii() and full.text[i : i + 2].strip()
    ]
    assert ascii_pairs, full.text
    stop = ascii_pairs[0]
    (cut,) = engine.generate(
        [GenerationRequest(prompt=QUERIES[2], video=video, max_new_tokens=16, stop=[stop])]
    )
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    # A stop token ends generation without being part of the answer.
    engine.stop_token_ids.add(full.token_ids[3])
    try:
        (stopped,) = engine.generate([GenerationRequest(prompt=QUERIES[2], video=video, max_new_tokens=16)])
    finally:
        engine.stop_token_ids.discard(full.token_ids[3])
    first_stop = full.token_ids.index(full.token_ids[3])
    assert stopped.finish_reason == "stop" and stopped.token_ids == full.token_ids[:first_stop]


def test_batching_and_chunked_prefill_do_not_change_answers(tiny_ckpt, engine: NativeEngine, video) -> None:
    reqs = _requests(video) + [GenerationRequest(prompt="Hello there", max_new_tokens=6)]
    batched = engine.generate(reqs)
    small = NativeEngine(tiny_ckpt, max_batch=1, prefill_chunk=16, vision_chunk_frames=1)
    for a, b in zip(batched, small.generate(reqs), strict=True):
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(
            torch.tensor(a.token_logprobs), torch.tensor(b.token_logprobs), atol=1e-4, rtol=1e-4
        )


def test_dense_engine_runs_and_zero_tokens_is_allowed(tiny_ckpt, video) -> None:
    dense = NativeEngine(tiny_ckpt, attn_impl="dense")
    out = dense.generate(
        [
            GenerationRequest(prompt="Hi", max_new_tokens=0),
            GenerationRequest(prompt="Hi", video=video, max_new_tokens=3),
        ]
    )
    assert out[0].token_ids == [] and out[0].finish_reason == "length" and out[0].text == ""
    assert len(out[1].token_ids) == 3
    dense.close()


def test_fp8_indexer_engine_answers_deterministically(tiny_ckpt, video) -> None:
    fp8 = NativeEngine(tiny_ckpt, index_fp8=True)
    assert fp8.model.model.index_fp8
    first, second = (fp8.generate(_requests(video, n_new=4))[0] for _ in range(2))
    assert len(first.token_ids) == 4 and first.token_ids == second.token_ids
    fp8.close()


def test_generated_placeholder_tokens_are_plain_text(tiny_ckpt, video) -> None:
    """A model that writes <|video_pad|> (random weights do) must not trip the visual scatter."""
    engine = NativeEngine(tiny_ckpt)
    old = engine.model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[engine.model.config.video_token_id] = 50.0  # a head that prefers the placeholder
    engine.model.lm_head = head
    (out,) = engine.generate([GenerationRequest(prompt="Hi", video=video, max_new_tokens=3)])
    assert out.token_ids == [engine.model.config.video_token_id] * 3
    assert all(lp > -1e-3 for lp in out.token_logprobs)


def test_generate_encoded_takes_caller_built_messages(engine: NativeEngine, video) -> None:
    image = video.frames[0]
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}
    ]
    inputs = engine.processor.encode_messages(messages)
    (out,) = engine.generate_encoded([(GenerationRequest(prompt="", max_new_tokens=4), inputs)])
    assert len(out.token_ids) == 4 and out.prompt_tokens == inputs.input_ids.shape[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1.0, "temperature"),
        ("top_p", 0.0, "top_p"),
        ("top_k", -2, "top_k"),
        ("max_new_tokens", -1, "max_new_tokens"),
        ("max_new_tokens", 10**9, "positions"),
    ],
)
def test_bad_requests_are_refused(engine: NativeEngine, field: str, value: float, message: str) -> None:
    request = GenerationRequest(prompt="Hi", **{field: value})
    with pytest.raises(ValueError, match=message):
        engine.generate([request])


def test_an_engine_around_a_model_in_memory_answers_like_one_from_files(tiny_ckpt, engine, video) -> None:
    from model_runtime.checkpoint import load_model
    from model_runtime.processor import KeyeProcessor

    adopted = NativeEngine.from_model(load_model(tiny_ckpt), KeyeProcessor.from_pretrained(tiny_ckpt))
    request = GenerationRequest("When?", video, max_new_tokens=6)
    mine, theirs = adopted.generate([request])[0], engine.generate([request])[0]
    assert mine.token_ids == theirs.token_ids and mine.text == theirs.text
