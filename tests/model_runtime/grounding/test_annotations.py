"""Annotation readers on small sample files, and scoring in both modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_runtime.grounding.annotations import (
    AnnotationError,
    Prediction,
    detect_format,
    load_annotations,
    predictions_to_json,
    read_predictions,
)
from model_runtime.grounding.evaluate import score_predictions


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_timelens_bench(tmp_path: Path) -> None:
    data = {
        "AO8RW": {
            "duration": 33.67,
            "spans": [[0.0, 6.9], [11.2, 18.0]],
            "queries": ["a person opens a door.", "sits  down"],
        },
        "Y6R7T": {"duration": 30.0, "spans": [[3, 9]], "queries": ["person drinks water"]},
    }
    path = _write(tmp_path / "charades-timelens.json", json.dumps(data))
    assert detect_format(path) == "timelens-bench"
    samples, preds = load_annotations(path)
    assert preds == []
    assert [(s.video, s.query, s.spans, s.duration_s) for s in samples] == [
        ("AO8RW", "a person opens a door.", [(0.0, 6.9)], 33.67),
        ("AO8RW", "sits  down", [(11.2, 18.0)], 33.67),
        ("Y6R7T", "person drinks water", [(3.0, 9.0)], 30.0),
    ]


def test_charades_sta(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "charades_sta_test.txt",
        "3MSZA 24.3 30.4##person turn a light on.\n\nAO8RW 0 6.9##a person opens a door\n",
    )
    samples, _ = load_annotations(path)
    assert [(s.video, s.query, s.spans) for s in samples] == [
        ("3MSZA", "person turn a light on.", [(24.3, 30.4)]),
        ("AO8RW", "a person opens a door", [(0.0, 6.9)]),
    ]
    bad = _write(tmp_path / "bad.txt", "3MSZA 24.3##no end\n")
    with pytest.raises(AnnotationError, match="bad.txt:1"):
        load_annotations(bad)


def test_activitynet_captions(tmp_path: Path) -> None:
    data = {
        "v_QOlSCBRmfWY": {
            "duration": 82.73,
            "timestamps": [[0.83, 19.86], [17.37, 60.81]],
            "sentences": ["A young woman is seen.", " She dances."],
        }
    }
    path = _write(tmp_path / "val_1.json", json.dumps(data))
    assert detect_format(path) == "activitynet"
    samples, _ = load_annotations(path)
    assert [(s.query, s.spans, s.duration_s) for s in samples] == [
        ("A young woman is seen.", [(0.83, 19.86)], 82.73),
        ("She dances.", [(17.37, 60.81)], 82.73),
    ]


def test_qvhighlights(tmp_path: Path) -> None:
    rows = [
        {
            "qid": 2579,
            "query": "A girl and her mother cooked.",
            "duration": 150,
            "vid": "NUsG9BgSes0_210.0_360.0",
            "relevant_windows": [[0, 30], [96, 150]],
            "relevant_clip_ids": [0, 1],
            "saliency_scores": [[1, 1, 1]],
        },
    ]
    path = _write(tmp_path / "highlight_val.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    samples, _ = load_annotations(path)
    assert samples[0].video == "NUsG9BgSes0_210.0_360.0"
    assert samples[0].spans == [(0.0, 30.0), (96.0, 150.0)]
    # Best IoU over the windows: (100, 150) vs (96, 150) = 50/54.
    report = score_predictions(
        samples, [Prediction("NUsG9BgSes0_210.0_360.0", "a girl and her mother cooked", [(100, 150, 0.9)])]
    )
    assert report.rows[0].iou == pytest.approx(50 / 54)


def test_timelens_results_file_both_modes(tmp_path: Path) -> None:
    results = [
        {
            "AO8RW.mp4>>>a person opens a door>>>[0.0, 6.9]": {
                "timestamps": [[0.4, 6.6]],
                "answers": ["ignored"],
            }
        },
        {
            "Y6R7T.mp4>>>person drinks water>>>[3.0, 9.0]": {
                "answers": ["The event happens in 3.4 - 8.6 seconds."]
            }
        },
        {
            "Y6R7T.mp4>>>2 people talk>>>[10.0, 20.0]": {
                "answers": ["2 people talk, from 12 seconds until 20"]
            }
        },
        {"Y6R7T.mp4>>>someone leaves>>>[20.0, 30.0]": {"answers": ["I cannot tell."]}},
    ]
    path = _write(tmp_path / "results.jsonl", "\n".join(json.dumps(r) for r in results))
    assert detect_format(path) == "timelens-results"
    samples, preds = load_annotations(path)
    assert [s.video for s in samples] == ["AO8RW.mp4", "Y6R7T.mp4", "Y6R7T.mp4", "Y6R7T.mp4"]
    assert samples[0].spans == [(0.0, 6.9)]

    official = score_predictions(samples, preds, timelens=True)
    ious = [r.iou for r in official.rows]
    # Rounded to 1 s: (0, 7) vs (0, 6.9) = 6.9/7; (3, 9) vs (3, 9) = 1; the catch-all reads "2 ... 12"
    # as (2, 12) vs (10, 20) = 2/18; no number at all = 0 (unparsed).
    assert ious == pytest.approx([6.9 / 7, 1.0, 2 / 18, 0.0])
    assert official.scores.miou == pytest.approx(100 * (6.9 / 7 + 1 + 2 / 18) / 4)
    assert official.scores.recall[0.7] == pytest.approx(50.0)
    assert official.to_dict()["unparsed"] == 1

    ours = score_predictions(samples, preds)
    # Unrounded, and our parser reads the range "12 to 20", not the count in the query.
    assert [r.iou for r in ours.rows] == pytest.approx([6.2 / 6.9, 5.2 / 6.0, 0.8, 0.0])
    assert ours.scores.scale == 1.0


def test_predictions_roundtrip_and_missing(tmp_path: Path) -> None:
    preds = [Prediction("/videos/AO8RW.mp4", "A person opens a door.", [(0.0, 7.0, 0.8), (20.0, 25.0, 0.1)])]
    path = _write(tmp_path / "pred.json", json.dumps(predictions_to_json(preds)))
    assert detect_format(path) == "predictions"
    assert read_predictions(path) == preds
    bench = _write(
        tmp_path / "bench.json",
        json.dumps(
            {
                "AO8RW": {
                    "duration": 30,
                    "spans": [[0, 6.9], [9, 12]],
                    "queries": ["a person opens a door", "sits"],
                }
            }
        ),
    )
    samples, _ = load_annotations(bench)
    report = score_predictions(samples, read_predictions(path))
    assert [r.status for r in report.rows] == ["ok", "missing"]
    assert report.rows[0].iou == pytest.approx(6.9 / 7.0)
    assert report.to_dict(details=True)["rows"][1]["prediction"] is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("broken.json", "{not json", "not valid JSON"),
        ("odd.json", json.dumps({"v": {"foo": 1}}), "cannot tell the format"),
        ("uneven.json", json.dumps({"v": {"duration": 3, "spans": [[0, 1]], "queries": []}}), None),
        (
            "badspan.json",
            json.dumps({"v": {"duration": 3, "spans": [[0]], "queries": ["q"]}}),
            "expected \\[start, end\\]",
        ),
        ("pred.json", json.dumps([{"video": "v", "query": "q", "segments": []}]), "pass it as --predictions"),
        ("keys.jsonl", json.dumps({"v>>>q>>>oops": {"answers": ["1 - 2"]}}), "does not end in"),
        ("nan.json", '{"v": {"duration": 3, "spans": [[NaN, 1]], "queries": ["q"]}}', "must be finite"),
        ("inf.json", '{"v": {"duration": 3, "spans": [[0, Infinity]], "queries": ["q"]}}', "must be finite"),
        ("reversed.json", json.dumps({"v": {"spans": [[2, 1]], "queries": ["q"]}}), "0 <= start <= end"),
        ("negative.json", json.dumps({"v": {"spans": [[-1, 1]], "queries": ["q"]}}), "0 <= start <= end"),
        ("notlists.json", json.dumps({"v": {"spans": 5, "queries": "a"}}), "must be lists"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, name: str, text: str, message: str | None) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(AnnotationError, match=message) as err:
        load_annotations(path)
    assert "\n" not in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(AnnotationError, match="no such file"):
        load_annotations("/nonexistent/annotations.json")


def test_binary_and_folder_inputs_are_one_line_errors(tmp_path: Path) -> None:
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AnnotationError, match="not UTF-8 text"):
        load_annotations(binary, "timelens-bench")
    with pytest.raises(AnnotationError, match="not UTF-8 text"):
        read_predictions(binary)
    with pytest.raises(AnnotationError, match="no such file"):
        read_predictions(tmp_path)  # a folder


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        (None, "'segments' must be a list"),
        ([{"start_s": float("nan"), "end_s": 1.0}], "must be finite"),
        ([{"start_s": 0.0, "end_s": 1.0, "confidence": float("inf")}], "confidence must be a finite"),
        (["0-1"], "without numeric start_s/end_s"),
    ],
)
def test_bad_predictions_are_refused(tmp_path: Path, segments: object, message: str) -> None:
    path = tmp_path / "preds.json"
    path.write_text(
        json.dumps([{"video": "v", "query": "q", "segments": segments}])
    )  # NaN/inf as JSON allows
    with pytest.raises(AnnotationError, match=message):
        read_predictions(path)


def test_a_reversed_predicted_span_is_read_not_refused(tmp_path: Path) -> None:
    """A model's reversed answer is a wrong answer, not a broken file."""
    path = tmp_path / "preds.json"
    path.write_text(json.dumps([{"video": "v", "query": "q", "segments": [{"start_s": 3.0, "end_s": 1.0}]}]))
    assert read_predictions(path)[0].segments == [(3.0, 1.0, 1.0)]


def test_a_video_id_cannot_climb_out_of_the_videos_folder(tmp_path: Path) -> None:
    from model_runtime.grounding.predict import find_video

    (tmp_path / "set").mkdir()
    (tmp_path / "outside.mp4").write_bytes(b"x")
    for video in ("../outside", "../outside.mp4", str(tmp_path / "outside.mp4")):
        with pytest.raises(AnnotationError, match="points outside"):
            find_video(tmp_path / "set", video)
