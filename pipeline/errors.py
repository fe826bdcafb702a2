"""One exception family whose message is meant for a person, not a traceback.

The CLI prints ``error: <where>: <what> (<hint>)`` and exits with ``exit_code``:
2 for bad input (recipe, archive, hash), 1 for a build that failed on good input.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure the user can act on; ``where`` names the file, field or archive member."""

    exit_code = 1

    def __init__(self, where: str, what: str, hint: str | None = None):
        self.where = where
        self.what = what
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text} ({self.hint})" if self.hint else text


class InputError(PipelineError):
    """The recipe, a package archive or a pinned hash is wrong: fixing the input fixes it."""

    exit_code = 2


class BuildError(PipelineError):
    """The input was fine but a step (a tool, the network, the disk) failed."""

    exit_code = 1
