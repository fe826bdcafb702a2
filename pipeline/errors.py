"""One exception family whose message is meant for a person, not a traceback, and the exit
classes every command uses (defined here once; ``--help`` epilogs and the README print
:data:`EXIT_TEXT`).

The CLI prints ``error: <where>: <what> (<hint>)`` and exits with ``exit_code``; with
``--json`` it prints one object on stdout instead (see :meth:`PipelineError.as_json`).
"""

from __future__ import annotations

#: Exit classes: what a CI job should do about a non-zero exit.
OK = 0
RETRY = 1    # may be transient: the network, DNS, a tool that crashed, a timeout, a full disk
INPUT = 2    # the input is wrong, fix it: recipe, archive, hash, usage, version not in the archive
VERDICT = 3  # the command worked and its answer is no: will not merge, differs, does not verify

EXIT_CLASSES: dict[int, str] = {
    OK: "ok",
    RETRY: "may be transient, retry (network, DNS, a tool crashed, timeout, disk full)",
    INPUT: "the input is wrong, fix it (recipe, archive, hash, usage, version not in the "
           "archive, unknown package)",
    VERDICT: "verdict: no (will not merge, differs, does not verify)",
}

#: One text for every ``--help`` epilog and the README.
EXIT_TEXT = "exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CLASSES.items())


class PipelineError(Exception):
    """A failure the user can act on; ``where`` names the file, field or archive member."""

    exit_code = RETRY

    def __init__(self, where: str, what: str, hint: str | None = None):
        self.where = where
        self.what = what
        self.hint = hint
        super().__init__(self.line())

    def line(self) -> str:
        text = f"{self.where}: {self.what}" if self.where else self.what
        return f"{text} ({self.hint})" if self.hint else text

    def subject_field(self) -> tuple[str | None, str | None]:
        """``where`` split into the file/package/member it names and the field in it:
        ``recipe.toml: source[2].apt`` → (``recipe.toml``, ``source[2].apt``)."""
        if not self.where:
            return None, None
        subject, sep, field = self.where.rpartition(": ")
        if sep and subject and field and " " not in field:
            return subject, field
        return self.where, None

    def as_json(self) -> dict:
        """The ``error`` member of the --json failure object."""
        subject, field = self.subject_field()
        return {"message": self.what, "subject": subject, "field": field, "hint": self.hint}


class InputError(PipelineError):
    """The recipe, a package archive or a pinned hash is wrong: fixing the input fixes it."""

    exit_code = INPUT


class VerdictError(PipelineError):
    """The command ran and its answer is no (will not merge, differs, does not verify)."""

    exit_code = VERDICT


class BuildError(PipelineError):
    """The input was fine but a step (a tool, the network, the disk) failed: may be transient."""

    exit_code = RETRY
