"""Grounding prompt templates, kept as data so a deployment can swap them without touching code.

Each template is a `str.format` pattern over `{query}`, `{duration}` (the chunk's length in seconds, one
decimal) and `{end}` (the same number, used in examples). The frames already carry their chunk-local
timestamps (`<|frame|>12.5`, spec §4.4), so the prompt only has to say how long the clip is and what to
write back. `default` asks for a strict bracketed answer and allows several intervals; `timelens` is the
official TimeLens-Bench prompt, verbatim, so our numbers and published ones are produced the same way.
Thinking is off unless asked for: the Keye family reads a trailing `/no_think` or `/think` switch (spec §6).
"""

from __future__ import annotations

from types import MappingProxyType

# Read-only on purpose: templates are shared data, not configuration to mutate at run time.
PROMPT_TEMPLATES: MappingProxyType[str, str] = MappingProxyType(
    {
        "default": (
            "This video clip is {duration} seconds long; the number before each frame is its time in seconds. "
            'Find when this happens: "{query}". '
            "Answer only with the start and end time in seconds, like [3.5, 12.0]. "
            "If it happens more than once, list each interval: [[3.5, 12.0], [20.0, 24.5]]. "
            "If it does not happen in this clip, answer none."
        ),
        "single": (
            "This video clip is {duration} seconds long; the number before each frame is its time in seconds. "
            'When does this happen: "{query}"? '
            "Answer only with the start and end time in seconds as [start, end]; answer none if it does not happen."
        ),
        # The official TimeLens-Bench grounding prompt (evaluation/utils.py GROUNDER_PROMPT).
        "timelens": (
            "Please find the visual event described by the sentence '{query}', determining its starting and "
            "ending times. The format should be: 'The event happens in <start time> - <end time> seconds'."
        ),
        # TimeLens' variant for models that read interleaved text timestamps (as Keye does).
        "timelens_timestamped": (
            "You are given a video with multiple frames. The numbers before each video frame indicate its "
            "sampling timestamp (in seconds). Please find the visual event described by the sentence "
            "'{query}', determining its starting and ending times. The format should be: 'The event happens "
            "in <start time> - <end time> seconds'."
        ),
    }
)

THINK_SWITCH = "/think"
NO_THINK_SWITCH = "/no_think"


class PromptError(ValueError):
    """A template name that does not exist, or a custom template without `{query}`."""


def build_grounding_prompt(
    query: str, chunk_duration_s: float, *, template: str = "default", think: bool = False
) -> str:
    """The user text for one query over one chunk.

    `template` is a name from `PROMPT_TEMPLATES` or, for deployments that bring their own wording, a
    format string containing `{query}` (and optionally `{duration}`). `think` appends the `/think`
    switch, otherwise `/no_think`, so the answer is short and its log-probs are about the times.
    """
    query = " ".join(query.split())
    if not query:
        raise PromptError("query is empty")
    if chunk_duration_s <= 0:
        raise PromptError(f"chunk duration must be positive, got {chunk_duration_s}")
    pattern = PROMPT_TEMPLATES.get(template)
    if pattern is None:
        if "{query}" not in template:
            known = ", ".join(sorted(PROMPT_TEMPLATES))
            raise PromptError(
                f"unknown prompt template {template!r} (known: {known}; or pass text with {{query}})"
            )
        pattern = template
    duration = f"{chunk_duration_s:.1f}"
    try:
        text = pattern.format(query=query, duration=duration, end=duration)
    except (KeyError, IndexError) as err:
        raise PromptError(f"prompt template has an unknown field: {err}") from None
    return f"{text} {THINK_SWITCH if think else NO_THINK_SWITCH}"
