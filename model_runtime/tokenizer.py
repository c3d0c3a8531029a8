"""Tokenizer loading (from a checkpoint folder, never the hub) and the toy tokenizer of tiny checkpoints.

Real checkpoints ship Qwen's byte-level BPE as `tokenizer.json` + `tokenizer_config.json`; `KeyeTokenizer`
reads exactly those with the `tokenizers` library. Tiny checkpoints get a small byte-level BPE trained
here on a fixed built-in corpus (deterministic), digits split one per token like Qwen's so timestamps
such as `12.5` tokenise cleanly, plus every Keye special token (spec §4.5) and a ChatML chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

# (token, special?) in Qwen's order; think/tool markers are added but not special (they survive decoding).
KEYE_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|frame|>", True),
    ("<|fast_start|>", True),
    ("<|fast_end|>", True),
)

DEFAULT_SYSTEM = "You are a helpful assistant."

# ChatML with Keye's multimodal placeholders (spec §6); the processor renders the same layout in Python.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string %}{{ message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- else %}{{ part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "<|im_end|>\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

_CORPUS = """
When does the red circle appear? The red circle appears from 12.5 to 30.0 seconds.
When does the blue square move across the screen? It moves between 3.0 and 7.5 seconds.
Find the moment the green triangle disappears. The green triangle disappears at 45.0 seconds.
A person opens the door, walks into the kitchen and turns on the light.
The answer is [12.5, 30.0]. The event happens during 00:12-00:30. Start time, end time.
You are a helpful assistant. Watch the video and answer the question about the video.
Give the start and end time in seconds of the moment described by the query.
The yellow star, the white cross, the black line, the purple dot and the orange ring.
There is no such event in this clip. The segment lasts about ten seconds.
Video frames are shown with their time in seconds before each frame.
0 1 2 3 4 5 6 7 8 9 10.0 20.5 seconds minutes hours first second third last
system user assistant system user assistant
"""


def build_tiny_tokenizer(vocab_size: int = 448, time_tokens_s: int = 0) -> Tokenizer:
    """A byte-level BPE with `vocab_size` regular tokens (256 bytes + merges) + the Keye added tokens.

    `time_tokens_s` > 0 adds one token per one-decimal time below that many seconds ("0.0" … "199.9"),
    after the Keye tokens (their ids do not move). The small trained model uses them: a frame's
    timestamp is then one token, so answering is copying one token per bound rather than four digits
    in order, which a few-million-parameter model learns in minutes. Other times still spell out.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS.splitlines() if line.strip()] * 4, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in KEYE_ADDED_TOKENS])
    if time_tokens_s > 0:
        tok.add_tokens([AddedToken(f"{i / 10:.1f}", normalized=False) for i in range(time_tokens_s * 10)])
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> None:
    """Write tokenizer.json + tokenizer_config.json in the layout Qwen checkpoints use."""
    out = Path(out_dir)
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "special": s,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "single_word": False,
        }
        for t, s in KEYE_ADDED_TOKENS
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t, s in KEYE_ADDED_TOKENS if s and t.startswith("<|")],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 262_144,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


class KeyeTokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` with the few things the processor and engine need."""

    def __init__(self, tokenizer: Tokenizer, config: dict | None = None):
        self.tokenizer = tokenizer
        self.config = config or {}

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> KeyeTokenizer:
        folder = Path(checkpoint_dir)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(Tokenizer.from_file(str(path)), config)

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token(self) -> str:
        eos = self.config.get("eos_token") or "<|im_end|>"
        return eos["content"] if isinstance(eos, dict) else eos

    @property
    def chat_template(self) -> str:
        return self.config.get("chat_template") or CHAT_TEMPLATE

    def token_id(self, token: str) -> int:
        """The id of a token that must exist (special tokens); a clear error if the vocabulary lacks it."""
        idx = self.tokenizer.token_to_id(token)
        if idx is None:
            raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
        return idx

    def encode(self, text: str) -> list[int]:
        """Text (special tokens written literally are recognised) → ids, no BOS/EOS added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
