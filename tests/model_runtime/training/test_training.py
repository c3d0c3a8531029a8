"""The training data and a short real training run on the CPU (issue 7).

The data tests check what the model is taught against the video that was drawn: answers name the
first and last frames that show the queried shape (read back by the service's parser), crops are
relabelled from 0.0 like a chunk, absent shapes are answered `none`. The run test trains a few steps
and loads the result with the native engine, as the service would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_runtime.engine.base import GenerationRequest, VideoInput
from model_runtime.engine.native import NativeEngine
from model_runtime.grounding.parsing import parse_segments
from model_runtime.grounding.prompts import build_grounding_prompt
from model_runtime.processor import KeyeProcessor
from model_runtime.tokenizer import build_tiny_tokenizer
from model_runtime.training.data import (
    ALL_QUERIES,
    CAPTION_PROMPT,
    IGNORE,
    Clip,
    Example,
    FrameStore,
    answer_text,
    draw_example,
    encode_turn,
    frame_labels,
    near_miss,
    sample_clips,
    visible_span,
)
from model_runtime.training.train import (
    ExampleFeed,
    FrameProbe,
    MatchProbe,
    StallReport,
    answer_accuracy,
    crop_limit,
    make_batch,
    parse_args,
    small_config,
    train,
    write_checkpoint_files,
)

LABEL_OF = {query: label for label, query in ALL_QUERIES.items()}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory) -> KeyeProcessor:
    folder = tmp_path_factory.mktemp("small")
    tokenizer = build_tiny_tokenizer()
    write_checkpoint_files(folder, tokenizer, small_config(tokenizer))
    return KeyeProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def clips() -> list[Clip]:
    return sample_clips(1_000_001, min_s=10.0, max_s=14.0) + sample_clips(1_000_002, min_s=10.0, max_s=14.0)


def _decode(processor: KeyeProcessor, ids: torch.Tensor) -> str:
    return processor.tokenizer.decode(ids.tolist(), skip_special_tokens=False)


def _on_screen(clips: list[Clip], ex: Example) -> list[str]:
    """The shapes any frame of the example's crop shows."""
    clip = clips[ex.clip]
    times = clip.times[ex.lo : ex.hi]
    return [x for x, (a, b) in clip.shown.items() if any(a <= t < b for t in times)]


def test_sampled_clips_hold_the_frames_the_model_sees(clips: list[Clip]) -> None:
    for clip in clips:
        assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (84, 140, 3)
        assert len(clip.times) == clip.frames.shape[0] and clip.times == sorted(clip.times)
        assert clip.shown and all(end > start for start, end in clip.shown.values())


def test_answers_name_the_first_and_last_frame_that_show_the_shape(
    processor: KeyeProcessor, clips: list[Clip]
) -> None:
    rng = np.random.default_rng(0)
    checked = {"span": 0, "none": 0, "crop": 0}
    for _ in range(60):
        ex = draw_example(processor, clips, rng, max_crop_s=6.0)
        clip = clips[ex.clip]
        times = clip.times[ex.lo : ex.hi]
        start_s = clip.start_s if ex.lo == 0 else times[0]
        prompt = _decode(processor, ex.input_ids[ex.labels == IGNORE])
        answer = _decode(processor, ex.labels[ex.labels != IGNORE])
        assert answer.endswith("<|im_end|>")
        query = prompt.split('"')[1]
        shown = clip.shown.get(LABEL_OF[query])
        frames_in = [round(t - start_s, 1) for t in times if shown and shown[0] <= t < shown[1]]
        spans = parse_segments(answer, lo=0.0, hi=times[-1] - start_s + 1.0)
        if frames_in:
            assert spans == [(frames_in[0], frames_in[-1])], (query, answer)
            checked["span"] += 1
        else:
            assert answer == "none<|im_end|>" and spans == []
            checked["none"] += 1
        # frames are labelled from the crop's start, like a chunk: the prompt's first frame says 0.0
        assert "<|frame|>0.0" in prompt
        checked["crop"] += ex.hi - ex.lo < len(clip.times)
    assert all(checked.values()), checked


def test_whole_chunks_are_asked_like_the_service_asks(processor: KeyeProcessor, clips: list[Clip]) -> None:
    rng = np.random.default_rng(1)
    ex = draw_example(processor, clips, rng, max_crop_s=1000.0)
    clip = clips[ex.clip]
    assert (ex.lo, ex.hi) == (0, len(clip.times))
    prompt = _decode(processor, ex.input_ids[ex.labels == IGNORE])
    assert f"This video clip is {clip.end_s - clip.start_s:.1f} seconds long" in prompt
    query = prompt.split('"')[1]
    # chunk-local seconds as the service prints them (a decoded frame may sit a little before the chunk's start)
    video = VideoInput(clip.frames, [max(0.0, round(t - clip.start_s, 1)) for t in clip.times])
    asked = processor.encode_request(build_grounding_prompt(query, clip.end_s - clip.start_s), video)
    n_prompt = asked.input_ids.shape[0]
    assert torch.equal(ex.input_ids[:n_prompt], asked.input_ids)  # the service's exact prompt tokens
    assert torch.equal(ex.positions[:, :n_prompt], asked.positions)
    assert (ex.labels[:n_prompt] == IGNORE).all() and (ex.labels[n_prompt:] != IGNORE).any()


def test_extra_turns_ask_more_shapes_about_the_same_crop(processor: KeyeProcessor, clips: list[Clip]) -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        ex = draw_example(processor, clips, rng, max_crop_s=8.0, turns=3)
        clip = clips[ex.clip]
        targets = ex.labels != IGNORE
        text = _decode(processor, ex.input_ids)
        assert text.count("<|vision_start|>") == 1  # one video, asked about in every turn
        queries = [q for q in text.split('"')[1::2] if q.startswith("When does")]
        answers = _decode(processor, ex.labels[targets]).split("<|im_end|>")[:-1]
        assert 2 <= len(queries) == len(answers) <= 3 and len(set(queries)) == len(queries)
        times = clip.times[ex.lo : ex.hi]
        start_s = times[0] if ex.hi - ex.lo < len(clip.times) else clip.start_s
        local = [max(0.0, round(t - start_s, 1)) for t in times]
        for query, answer in zip(queries, answers, strict=True):
            label = LABEL_OF[query]
            spans = visible_span(times, local, *clip.shown[label]) if label in clip.shown else []
            assert answer == answer_text(spans), (query, answer)
        assert answers[-1] == "none"  # the last turn asks about a shape the crop does not show
        # the first turn is the service's exact request: the same tokens as a one-turn example
        first_end = int(targets.nonzero()[0])
        alone = encode_turn(processor, VideoInput(clip.frames[ex.lo : ex.hi], local),
                            text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0].split("<|vision_end|>")[1],
                            answers[0], ex.clip, ex.lo, ex.hi)  # fmt: skip
        assert torch.equal(ex.input_ids[:first_end], alone.input_ids[:first_end])


def test_near_miss_turns_share_a_colour_or_shape_with_what_is_on_screen(
    processor: KeyeProcessor, clips: list[Clip]
) -> None:
    assert near_miss("red square", ["red circle"]) and near_miss("blue circle", ["red circle"])
    assert not near_miss("blue square", ["red circle", "green star"])
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(30):
        ex = draw_example(processor, clips, rng, max_crop_s=8.0, turns=3, near_miss_p=1.0)
        on_screen = _on_screen(clips, ex)
        last = LABEL_OF[
            [q for q in _decode(processor, ex.input_ids).split('"')[1::2] if q.startswith("When")][-1]
        ]
        assert last not in on_screen
        if on_screen:
            assert near_miss(last, on_screen), (last, on_screen)
            checked += 1
    assert checked >= 10  # most crops show something


def test_present_p_asks_first_about_a_shape_the_crop_shows(
    processor: KeyeProcessor, clips: list[Clip]
) -> None:
    labels = list(ALL_QUERIES)
    rng = np.random.default_rng(6)
    asked_present = 0
    for _ in range(30):
        ex = draw_example(processor, clips, rng, max_crop_s=8.0, whole_chunk_p=1.0, present_p=1.0)
        on_screen = _on_screen(clips, ex)
        assert (labels[ex.asked[0]] in on_screen) == bool(on_screen) == (ex.kind == "ground")
        asked_present += bool(on_screen)
    assert asked_present >= 10
    # without it, whole windows are asked about any of the video's shapes: often one not in the window
    rng = np.random.default_rng(6)
    kinds = [draw_example(processor, clips, rng, max_crop_s=8.0, whole_chunk_p=1.0).kind for _ in range(30)]
    assert kinds.count("absent") > 30 - asked_present


def test_caption_answers_list_the_shapes_the_frames_show(processor: KeyeProcessor, clips: list[Clip]) -> None:
    rng = np.random.default_rng(4)
    seen_shapes = seen_none = 0
    for _ in range(40):
        ex = draw_example(processor, clips, rng, max_crop_s=5.0, caption_p=1.0)
        clip = clips[ex.clip]
        times = clip.times[ex.lo : ex.hi]
        assert 1 <= len(times) <= 4
        assert CAPTION_PROMPT in _decode(processor, ex.input_ids[ex.labels == IGNORE])
        answer = _decode(processor, ex.labels[ex.labels != IGNORE]).removesuffix("<|im_end|>")
        expected = sorted(lbl for lbl, (a, b) in clip.shown.items() if any(a <= t < b for t in times))
        assert answer == (", ".join(expected) or "none")
        seen_shapes += bool(expected)
        seen_none += not expected
    assert seen_shapes and seen_none


def test_frame_store_gathers_each_examples_frames(processor: KeyeProcessor, clips: list[Clip]) -> None:
    rng = np.random.default_rng(2)
    examples = [draw_example(processor, clips, rng, max_crop_s=5.0) for _ in range(4)]
    gathered = FrameStore(clips, torch.device("cpu")).gather(examples)
    expected = np.concatenate([clips[e.clip].frames[e.lo : e.hi] for e in examples])
    assert np.array_equal(gathered.numpy(), expected)
    assert sum(t for t, _, _ in (g for e in examples for g in e.grids)) == expected.shape[0]


def test_frame_labels_mark_the_frames_inside_each_shapes_interval(clips: list[Clip]) -> None:
    labels = list(ALL_QUERIES)
    for clip in clips:
        marks = frame_labels(clip)
        assert marks.shape == (len(clip.times), len(labels))
        for label, (start, end) in clip.shown.items():
            expected = [start <= t < end for t in clip.times]
            assert marks[:, labels.index(label)].astype(bool).tolist() == expected
        never = [i for i, label in enumerate(labels) if label not in clip.shown]
        assert not marks[:, never].any()
    assert any(frame_labels(c).any() for c in clips)  # the drawn videos do show shapes


def test_frame_store_gathers_labels_in_frame_order(processor: KeyeProcessor, clips: list[Clip]) -> None:
    rng = np.random.default_rng(3)
    examples = [draw_example(processor, clips, rng, max_crop_s=5.0) for _ in range(4)]
    gathered = FrameStore(clips, torch.device("cpu")).gather_labels(examples)
    expected = np.concatenate([frame_labels(clips[e.clip])[e.lo : e.hi] for e in examples])
    assert np.array_equal(gathered.numpy(), expected)


def test_frame_probe_pools_each_frames_own_tokens() -> None:
    probe = FrameProbe(width=3, n_labels=3)
    with torch.no_grad():
        probe.head.weight.copy_(torch.eye(3))
        probe.head.bias.zero_()
    grids = [(1, 2, 2), (2, 2, 4)]  # one frame of 1 merged token, then two frames of 2 each
    visual = torch.tensor([[1.0, 0, 0], [0, 5, 0], [0, 0, 2], [0, 0, 7], [4, 0, 0]])
    assert probe(visual, grids).tolist() == [[1, 0, 0], [0, 5, 2], [4, 0, 7]]  # max over each frame's tokens


def test_match_targets_mark_the_frames_showing_each_turns_asked_shape(
    processor: KeyeProcessor, clips: list[Clip]
) -> None:
    """`MatchProbe` reads the position before each answer; its targets are the asked shape's frames."""
    rng = np.random.default_rng(4)
    examples = [draw_example(processor, clips, rng, max_crop_s=5.0, turns=3) for _ in range(5)]
    examples.append(draw_example(processor, clips, rng, max_crop_s=5.0, caption_p=1.0))  # asks no shape
    store = FrameStore(clips, torch.device("cpu"))
    batch = make_batch(examples, store, processor, torch.device("cpu"))
    targets, real = batch["match_targets"], batch["match_real"]
    is_visual = (batch["input_ids"] == processor.video_token_id) | (
        batch["input_ids"] == processor.image_token_id
    )
    assert batch["visual_rows"].tolist() == is_visual.nonzero()[:, 0].tolist()  # `KeyeVL.embed` takes them
    assert len(targets) == len(batch["match_rows"]) == sum(len(e.asked) for e in examples[:5])
    labels = list(ALL_QUERIES)
    turn = 0
    offset = 0
    for e in examples:
        for asked, start in zip(e.asked, e.answer_starts[: len(e.asked)], strict=True):
            clip = clips[e.clip]
            first, last = clip.shown.get(labels[asked], (-1.0, -1.0))
            shown = [first <= t < last for t in clip.times[e.lo : e.hi]]
            assert real[turn].tolist() == [f < e.hi - e.lo for f in range(store.most_frames)]
            assert targets[turn][real[turn]].bool().tolist() == shown
            # the row predicts the answer's first token: the last prompt token before it
            row = int(batch["match_rows"][turn])
            assert row == offset + start - 1 and batch["labels"][row] == IGNORE != batch["labels"][row + 1]
            answer = _decode(processor, e.input_ids[start:]).split("<|im_end|>")[0]
            assert (answer == "none") == (not any(shown))
            turn += 1
        offset += e.n_tokens
    assert any(targets[real].bool()) and not all(targets[real].bool())
    probe = MatchProbe(width=4, n_slots=store.most_frames)
    assert probe(torch.randn(offset, 4), batch["match_rows"]).shape == targets.shape


def test_a_batch_stops_at_its_token_or_example_budget(
    processor: KeyeProcessor, clips: list[Clip], tmp_path: Path
) -> None:
    tokenizer = build_tiny_tokenizer()
    write_checkpoint_files(tmp_path, tokenizer, small_config(tokenizer))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        feed = ExampleFeed(tmp_path, clips, workers=0, seed=1)
        assert torch.get_num_threads() == 2  # drawing inline leaves the trainer its threads
    finally:
        torch.set_num_threads(threads)
    capped = feed.batch(1 << 20, max_crop_s=2.0, caption_p=0.0, max_examples=5)
    assert len(capped) == 5
    by_tokens = feed.batch(1500, max_crop_s=2.0, caption_p=0.0)
    assert sum(e.n_tokens for e in by_tokens) <= 1500 or len(by_tokens) == 1
    assert sum(e.n_tokens for e in by_tokens) + feed.ready[0].n_tokens > 1500  # the next one did not fit
    feed.close()


def test_worker_processes_draw_the_examples_the_trainer_would(
    processor: KeyeProcessor, clips: list[Clip], tmp_path: Path
) -> None:
    tokenizer = build_tiny_tokenizer()
    write_checkpoint_files(tmp_path, tokenizer, small_config(tokenizer))
    pooled = ExampleFeed(tmp_path, clips, workers=2, seed=3, per_request=4, turns=2)
    inline = ExampleFeed(tmp_path, clips, workers=0, seed=3, per_request=4, turns=2)
    # the first request, drawn here without any pipe: the round trip must hand back the same examples
    rng = np.random.default_rng(3 * 1_000_003 + 1)
    direct_processor = KeyeProcessor.from_pretrained(tmp_path)
    direct = [
        draw_example(direct_processor, clips, rng, max_crop_s=2.0, caption_p=0.0, turns=2) for _ in range(4)
    ]
    try:
        first = pooled.batch(1 << 20, max_crop_s=2.0, caption_p=0.0, max_examples=4)
        assert [
            e.input_ids.tolist() for e in inline.batch(1 << 20, max_crop_s=2.0, caption_p=0.0, max_examples=4)
        ] == [
            e.input_ids.tolist() for e in direct
        ]  # the inline feed too (and both feeds stay in step for the loop below)
        for x, y in zip(first, direct, strict=True):
            assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.positions, y.positions)
            assert torch.equal(x.labels, y.labels)
            assert (x.grids, x.clip, x.lo, x.hi, x.kind, x.answer_starts, x.asked) == (
                y.grids,
                y.clip,
                y.lo,
                y.hi,
                y.kind,
                y.answer_starts,
                y.asked,
            )
        for _ in range(3):  # more requests than the first prefetch holds
            a = pooled.batch(1 << 20, max_crop_s=2.0, caption_p=0.0, max_examples=4)
            b = inline.batch(1 << 20, max_crop_s=2.0, caption_p=0.0, max_examples=4)
            assert [e.input_ids.tolist() for e in a] == [e.input_ids.tolist() for e in b]
            for x, y in zip(a, b, strict=True):  # tensors again after the pipe's numpy arrays
                assert isinstance(x.positions, torch.Tensor) and isinstance(x.labels, torch.Tensor)
                assert torch.equal(x.positions, y.positions) and torch.equal(x.labels, y.labels)
            assert [(e.clip, e.lo, e.hi, e.kind) for e in a] == [(e.clip, e.lo, e.hi, e.kind) for e in b]
    finally:
        pooled.close()
        inline.close()


def test_a_stall_report_prints_stacks_once_per_stall_and_stops_when_closed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    stall = StallReport(0.5)
    try:
        for _ in range(10):  # steps keep ending: nothing printed
            time.sleep(0.05)
            stall.tick()
        assert "Timeout" not in capfd.readouterr().err
        for _ in range(2):  # a stall, a step, another stall: one report each, naming this test
            time.sleep(1.0)
            err = capfd.readouterr().err
            assert err.count("Timeout") == 1 and "test_a_stall_report_prints_stacks_once" in err
            stall.tick()
    finally:
        stall.close()
    time.sleep(0.7)  # closed: no report however long nothing happens
    assert "Timeout" not in capfd.readouterr().err
    with pytest.raises(ValueError, match="positive"):
        StallReport(0)
    with pytest.raises(SystemExit):
        parse_args(["--out", "x", "--hang-report-s", "-1"])


def test_each_run_of_a_line_makes_its_own_videos_away_from_the_evaluation_seeds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args(["--out", "x"]).seed_offset == 1_000_000
    assert parse_args(["--out", "x", "--seed", "3"]).seed_offset == 1_300_000
    assert parse_args(["--out", "x", "--seed", "3", "--seed-offset", "2000000"]).seed_offset == 2_000_000
    refused = [
        (["--seed-offset", "7"], "at least 1,000,000"),
        (["--seed", "-1"], "0 or more"),
        (["--trainer-threads", "0"], "at least 1, got 0"),
        (["--videos", "100001"], "give --seed-offset"),
    ]
    for bad, why in refused:
        with pytest.raises(SystemExit):
            parse_args(["--out", "x", *bad])
        assert why in capsys.readouterr().err


def test_the_curriculum_grows_crops_to_whole_windows() -> None:
    assert crop_limit(0.0, 8.0, 2.0) == 2.0
    assert 2.0 < crop_limit(0.3, 8.0, 2.0) < 8.0
    assert crop_limit(0.6, 8.0, 2.0) == crop_limit(1.0, 8.0, 2.0) == 8.0


def test_answer_accuracy_counts_exact_answers_per_kind() -> None:
    # three answers of two tokens each (the third token of each segment is the prompt: IGNORE)
    targets = torch.tensor([5, 6, IGNORE, 7, 8, IGNORE, 9, 9, IGNORE])
    predicted = torch.tensor([5, 6, 0, 7, 1, 0, 9, 9, 0])  # the second answer gets one token wrong
    logits = F.one_hot(predicted, 10).float()
    token_acc, exact = answer_accuracy(logits, targets, [3, 3, 3], ["ground", "ground", "absent"])
    assert token_acc == 5 / 6
    assert exact == {"absent": 1.0, "ground": 0.5}


def test_a_short_run_trains_and_saves_a_checkpoint_the_engine_serves(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    args = parse_args([
        "--out", str(out), "--device", "cpu", "--max-steps", "4", "--videos", "2", "--data-seconds", "60",
        "--min-seconds", "6", "--max-seconds", "8", "--workers", "0", "--draw-workers", "0",
        "--batch-tokens", "2048", "--log-every", "1", "--dense-fraction", "0.0", "--lr", "3e-3", "--bf16",
        "--vision-steps", "3", "--vision-batch", "8",
    ])  # fmt: skip
    summary = train(args)
    assert summary["steps"] == 4 and summary["clips"] == 2
    written = json.loads((out / "training_log.json").read_text())
    log, vision_log = written["log"], written["vision_log"]
    assert len(log) == 4 and all(row["sparse"] for row in log)  # dense_fraction 0: sparse from the start
    assert log[-1]["ce"] < log[0]["ce"]  # four steps on the answer tokens already lower the loss
    assert all(row["match_loss"] > 0 and 0 <= row["turns_matched"] <= 1 for row in log)
    assert [row["vision_step"] for row in vision_log] == [0, 1, 2]
    assert vision_log[-1]["frame_loss"] < vision_log[0]["frame_loss"]  # stage 1 learns frame labels
    clip = sample_clips(5, min_s=6.0, max_s=6.0)[0]
    engine = NativeEngine(out, device="cpu", attn_impl="reference")
    result = engine.generate(
        [GenerationRequest("When does the red circle appear?", VideoInput(clip.frames, clip.times))]
    )[0]
    assert result.prompt_tokens > 100 and result.finish_reason in ("stop", "length")
    assert len(result.token_logprobs) == len(result.token_ids)  # (a 4-step model may stop at once)
    engine.close()
    from model_runtime.training.heldout import crop_exactness

    first, again = (crop_exactness(out, examples=6, videos=1, batch=4) for _ in range(2))
    assert first == again  # a fixed question set: the same checkpoint scores the same
    assert first["caption_count"] == 6 and first.get("ground_count", 0) + first.get("absent_count", 0) == 6
    assert all(0.0 <= v <= 1.0 for k, v in first.items() if k.endswith("_exact"))


def test_heldout_scores_each_variant_against_the_first(tmp_path: Path) -> None:
    from model_runtime.checkpoint import init_checkpoint
    from model_runtime.grounding.synth import write_synthetic_set
    from model_runtime.training.heldout import evaluate

    ckpt = init_checkpoint(tmp_path / "tiny")
    write_synthetic_set(tmp_path / "videos", count=2, seed=7, duration_s=6.0)  # short: a fast CPU run
    streamed: dict[str, dict] = {}
    report = evaluate(ckpt, count=2, quantizes=(None, "fp8"), videos_dir=tmp_path / "videos",
                      on_variant=streamed.__setitem__)  # fmt: skip
    assert streamed == {k: report[k] for k in ("reference", "reference+fp8")}  # each as soon as it is done
    assert report["count"] == 4  # two videos, two events each
    assert set(report) == {"count", "seed", "reference", "reference+fp8"}
    assert 0.0 <= report["reference"]["mIoU"] <= 1.0
    assert 0 <= report["reference+fp8"]["top1_differs_from_first"] <= 4
    assert "top1_differs_from_first" not in report["reference"]
    absent = report["reference"]["absent"]
    assert absent["queries"] == 2 and 0.0 <= absent["on_an_event"] <= absent["answered"] <= 1.0


def test_absent_queries_name_a_near_miss_and_catch_a_colour_only_answerer(tmp_path: Path) -> None:
    from model_runtime.grounding.annotations import load_annotations
    from model_runtime.grounding.color_engine import ColorBaselineEngine
    from model_runtime.grounding.predict import predict_samples
    from model_runtime.grounding.synth import write_synthetic_set
    from model_runtime.training.heldout import absent_answers, absent_samples
    from model_runtime.video import SamplingParams

    path = write_synthetic_set(tmp_path, count=6, seed=4, duration_s=30.0, fps=4.0, width=64, height=48,
                               min_event_s=6.0, distractors=0)  # fmt: skip
    samples, _ = load_annotations(path)
    absent = absent_samples(path)
    assert len(absent) == 6 and all(a.spans == [] for a in absent)
    event_colors: dict[str, set[str]] = {}
    for s in samples:
        event_colors.setdefault(s.video, set()).add(s.query.split()[3])
    for a in absent:
        asked = a.query.split()[3:5]  # "When does the red circle appear?"
        shown = [s.query.split()[3:5] for s in samples if s.video == a.video]
        assert asked not in shown  # never drawn (no distractors here, so the events are all that is drawn)
        assert any(asked[0] == c or asked[1] == sh.rstrip() for c, sh in shown)  # a near miss
    # The colour baseline answers by colour alone: exactly the near misses that share an event's colour
    # get a segment, and it lies on that event.
    params = SamplingParams(fps=2.0, min_pixels=4 * 784, max_pixels=4 * 784, video_total_pixels=30 * 4 * 784)
    predictions = predict_samples(absent, tmp_path, ColorBaselineEngine(), params=params)
    report = absent_answers(absent, predictions, samples)
    same_colour = [a.query.split()[3] in event_colors[a.video] for a in absent]
    assert any(same_colour)  # the set holds at least one colour-sharing near miss
    assert [bool(p.segments) for p in predictions] == same_colour
    assert report["queries"] == 6 and report["answered"] == round(sum(same_colour) / 6, 3)
    kinds = report["by_near_miss"]  # the colour baseline is fooled by every colour near miss, no shape one
    assert sum(k["queries"] for k in kinds.values()) == 6 and "neither" not in kinds
    assert all(k["answered"] == (k["queries"] if "colour" in name else 0) for name, k in kinds.items())
    assert 0.0 <= report["on_an_event"] <= report["answered"]
    for a, p in zip(absent, predictions, strict=True):
        if p.segments:
            colour = a.query.split()[3]
            (event,) = [s.spans[0] for s in samples if s.video == a.video and s.query.split()[3] == colour]
            start, end = p.segments[0][:2]
            assert event[0] - 1.0 <= start < end <= event[1] + 1.0


def test_per_window_counts_score_a_known_answerer(tmp_path: Path) -> None:
    """The colour baseline sees every event of a distractor-free set: per window it answers where the
    asked shape shows and nowhere else, and its top-1 mIoU is the scorer's."""
    from model_runtime.grounding.annotations import load_annotations
    from model_runtime.grounding.color_engine import ColorBaselineEngine
    from model_runtime.grounding.evaluate import score_predictions
    from model_runtime.grounding.predict import find_video, predict_samples
    from model_runtime.grounding.synth import write_synthetic_set
    from model_runtime.training.heldout import window_counts
    from model_runtime.video import SamplingParams, plan_chunks, probe_video

    path = write_synthetic_set(tmp_path, count=3, seed=4, duration_s=30.0, fps=4.0, width=64, height=48,
                               min_event_s=6.0, distractors=0)  # fmt: skip
    samples, _ = load_annotations(path)
    params = SamplingParams(fps=2.0, min_pixels=4 * 784, max_pixels=4 * 784, video_total_pixels=8 * 4 * 784)
    engine = ColorBaselineEngine()
    report = window_counts(samples, tmp_path, engine, params, videos=2)
    first_two = list(dict.fromkeys(s.video for s in samples))[:2]
    two = [s for s in samples if s.video in first_two]
    windows = sum(
        len(plan_chunks(probe_video(str(find_video(tmp_path, v))), params).chunks)
        * sum(s.video == v for s in two)
        for v in first_two
    )
    assert report["videos"] == 2 and report["queries"] == len(two)
    assert report["TP"] + report["FN"] + report["FP"] + report["TN"] == windows > len(two)  # several windows
    assert report["TP"] > 0 and report["TN"] > 0 and report["FP"] == 0
    scored = score_predictions(two, predict_samples(two, tmp_path, engine, params=params)).scores
    assert report["top1_mIoU"] == round(scored.to_dict()["mIoU"], 3)
    assert report["top1_mIoU"] <= report["best_candidate_mIoU"] <= 1.0
    assert 0.0 <= report["top1_R1@0.5"] <= 1.0


def test_a_held_out_folder_serves_smaller_sets_and_refuses_larger_ones(tmp_path: Path) -> None:
    from model_runtime.grounding.annotations import load_annotations
    from model_runtime.grounding.synth import write_synthetic_set
    from model_runtime.training.heldout import first_videos, heldout_set

    folder = tmp_path / "videos"
    write_synthetic_set(folder, count=3, seed=7, duration_s=6.0)
    samples, _ = load_annotations(folder / "annotations.json")
    videos = list(dict.fromkeys(s.video for s in samples))
    assert len(videos) == 3
    two = first_videos(samples, 2)
    assert list(dict.fromkeys(s.video for s in two)) == videos[:2]  # the set's first two, all their queries
    assert two == [s for s in samples if s.video in videos[:2]]
    with heldout_set(folder, 2, seed=7) as served:  # a larger set serves a smaller one, unchanged
        assert served == folder
    with pytest.raises(ValueError, match="holds 3 held-out videos, 5 asked"), heldout_set(folder, 5, seed=7):
        pass
    assert len(load_annotations(folder / "annotations.json")[0]) == len(samples)  # nothing rewritten
