"""Training files: the format lives in libs.training_file (the memory service validates
uploads with purpose `fine-tune` against the same rules); the trainer uses it under this
name."""

from __future__ import annotations

from libs.training_file import (
    MAX_ERRORS,
    ROLES,
    Example,
    LineError,
    Message,
    TrainingFileError,
    parse_training_file,
    split_held_out,
)

__all__ = [
    "MAX_ERRORS",
    "ROLES",
    "Example",
    "LineError",
    "Message",
    "TrainingFileError",
    "parse_training_file",
    "split_held_out",
]
