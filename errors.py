"""The one error for "this node input is at fault" (stdlib only: every room may raise it).

Rooms below the nodes know which input a problem belongs to but not which node shows it; the nodes
add their name (``nodes/types.py::blaming``), so every message reads "node: input 'x': problem. fix".
``loaders/files.py::LoaderError`` is one (a weight file at fault; its ``input`` may be set later).
"""
from __future__ import annotations


class InputError(ValueError):
    """``input``: the node input's name; ``problem``: what is wrong; ``fix``: what to do about it."""

    def __init__(self, input: str, problem: str, fix: str = ""):  # noqa: A002 - the node input's name
        super().__init__(f"{problem}. {fix}" if fix else problem)
        self.input, self.problem, self.fix = input, problem, fix
