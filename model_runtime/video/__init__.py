"""Video in: probe a source, plan chunks under the Keye-VL-2.0 token budget, decode only what is needed.

`probe_video` reads a file or URL's facts (`VideoInfo`); `plan_chunks` / `plan_coarse` / `plan_window`
turn them and `SamplingParams` into `Chunk`s (frame times and sizes, plain JSON-able data);
`sample_chunk` decodes one chunk into `SampledFrames`. `make_synthetic_video` writes test videos with
known events. Every bad input raises a `VideoError` subclass with a stable `code`.
"""

from model_runtime.video.decode import DecodeStats, SampledFrames, choose_skip_mode, sample_chunk
from model_runtime.video.errors import (
    AbsurdDimensionsError,
    BackendMissingError,
    EmptyFileError,
    InvalidTimestampError,
    NoFramesError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnreadableVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
    VideoSourceError,
    VideoTimeoutError,
)
from model_runtime.video.parallel import keyframe_times, sample_chunk_parallel, split_targets
from model_runtime.video.plan import Chunk, VideoPlan, effective_fps, plan_chunks, plan_coarse, plan_window
from model_runtime.video.probe import VideoInfo, check_dimensions, probe_video
from model_runtime.video.sampling import (
    PATCH_FACTOR,
    PIXELS_PER_TOKEN,
    FramePromptPiece,
    SamplingParams,
    ServerSampling,
    fit_frame_size,
    frame_prompt_pieces,
    frame_tokens,
    keye_frame_count,
    keye_frame_indices,
    keye_server_sampling,
    keye_tokens_per_frame,
    max_frames_per_context,
    smart_resize,
)
from model_runtime.video.synthetic import (
    COLORS,
    SHAPES,
    SyntheticEvent,
    SyntheticTruth,
    make_event,
    make_synthetic_video,
    random_events,
    read_barcode,
)

__all__ = [
    "COLORS",
    "PATCH_FACTOR",
    "PIXELS_PER_TOKEN",
    "SHAPES",
    "AbsurdDimensionsError",
    "BackendMissingError",
    "Chunk",
    "DecodeStats",
    "EmptyFileError",
    "FramePromptPiece",
    "InvalidTimestampError",
    "NoFramesError",
    "NoVideoStreamError",
    "SampledFrames",
    "SamplingParams",
    "ServerSampling",
    "SyntheticEvent",
    "SyntheticTruth",
    "TruncatedVideoError",
    "UnreadableVideoError",
    "UnsupportedCodecError",
    "VideoError",
    "VideoInfo",
    "VideoNotFoundError",
    "VideoPlan",
    "VideoSourceError",
    "VideoTimeoutError",
    "check_dimensions",
    "choose_skip_mode",
    "effective_fps",
    "fit_frame_size",
    "frame_prompt_pieces",
    "frame_tokens",
    "keye_frame_count",
    "keye_frame_indices",
    "keye_server_sampling",
    "keye_tokens_per_frame",
    "keyframe_times",
    "make_event",
    "make_synthetic_video",
    "max_frames_per_context",
    "plan_chunks",
    "plan_coarse",
    "plan_window",
    "probe_video",
    "random_events",
    "read_barcode",
    "sample_chunk",
    "sample_chunk_parallel",
    "smart_resize",
    "split_targets",
]
