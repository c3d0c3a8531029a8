"""Temporal grounding: prompts, answer parsing, confidence, merging across chunks, strategies, evaluation."""
