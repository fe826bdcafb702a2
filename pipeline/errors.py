"""One exception family whose message is meant for a person, not a traceback, and the exit
classes every command uses (defined here once; ``--help`` epilogs and the README print
:data:`EXIT_TEXT`).

The CLI prints ``error: <where>: <what> (<hint>)`` and exits with ``exit_code``; with
``--json`` it prints one object on stdout instead (see :meth:`PipelineError.as_json`).
"""

from __future__ import annotations

import re

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


#: a recipe array entry as messages name it: ``source #3 (apt = "jq").version``
_ENTRY = re.compile(r'^[a-z_]+ #\d+(?: \([a-z_]+ = (?:"[^"]*"|\[[^\]]*\])\))?(?:\.[\w.]+)?$')


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
        ``recipe.toml: source #3 (apt = "jq").version`` → (``recipe.toml``,
        ``source #3 (apt = "jq").version``)."""
        if not self.where:
            return None, None
        subject, sep, field = self.where.rpartition(": ")
        if sep and subject and field and (" " not in field or _ENTRY.match(field)):
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


# --- the build-side error catalogue (issue 16 §7) ----------------------------------------------

class Problem:
    """One error a build (or lock, fetch) can stop with: the words of its line (``says``, a
    fragment the code raises word for word: a test checks each against pipeline/), what causes
    it and what fixes it, and its exit class. Rendered into docs/troubleshooting.md."""

    __slots__ = ("code", "says", "cause", "fix", "exit")

    def __init__(self, code: str, says: str, cause: str, fix: str, exit: int):
        self.code, self.says, self.cause, self.fix, self.exit = code, says, cause, fix, exit


CATALOGUE: tuple[Problem, ...] = (
    Problem("version-gone", "apt-get download failed",
            "the version an `apt` source pins is no longer in the archive (Debian replaces a "
            "point release's packages), or apt's package lists are older than the pin",
            "`apt-get update`; pin the version `apt-cache policy NAME` shows, or use a "
            "`packages` source with `sysext-pipeline lock`", INPUT),
    Problem("locked-version-gone", "this locked version is no longer in the archive",
            "the mirror no longer has a file the lock pins (404): a Debian point release or a "
            "security update replaced that version", "`sysext-pipeline lock --update NAME "
            "RECIPE` (move that package), or a snapshot archive as the repository's `mirror` "
            "with `snapshot = true`", INPUT),
    Problem("sha256-mismatch", "sha256 mismatch: expected",
            "the file downloaded (or found) is not the one the recipe or lock pins: the mirror "
            "changed it, or the pin is wrong", "check the pin against the archive; for a "
            "`packages` source run `sysext-pipeline lock RECIPE` again", INPUT),
    Problem("identity", "the file is ",
            "a cached or downloaded file's own name, version or architecture is not what the "
            "source or lock names (a sha256 reused for another package)",
            "fix the source's name or sha256 so that both describe the same package", INPUT),
    Problem("lock-missing", "no lock file for this recipe's packages sources",
            "a `packages` source is resolved through RECIPE.lock, which does not exist yet",
            "`sysext-pipeline lock RECIPE` and commit RECIPE.lock", INPUT),
    Problem("lock-stale", "lock is stale: run lock",
            "the recipe's repositories, packages or base changed after RECIPE.lock was written",
            "`sysext-pipeline lock RECIPE` (or `lock --update NAME` to move one package)", INPUT),
    Problem("release-expired", "expired: Valid-Until",
            "the repository's Release file is past its Valid-Until date: the mirror is stale "
            "or frozen, or the clock is wrong", "use an up-to-date mirror (or a snapshot "
            "service's current one), check the clock; re-run `lock`", INPUT),
    Problem("offline-miss", "and --offline was given",
            "`--offline` builds read only the cache/store, and a file the recipe needs is not "
            "there (or is corrupt and was removed)", "fill the store first: `sysext-pipeline "
            "fetch RECIPE --store DIR`, then `build --offline --store DIR`", RETRY),
    Problem("download-failed", "download failed after",
            "every try of a download failed: the network, DNS, a proxy or the mirror",
            "retry later; each try is a line on stderr (`fetch NAME: try 2/4 …`) saying why",
            RETRY),
    Problem("key-mode", "is accessible by group or others",
            "the private signing key (or a GnuPG home) can be read by other users",
            "`chmod 600 KEY` (`chmod 700` for a GnuPG home)", INPUT),
    Problem("key-missing", "no such file",
            "[sign] names a key or certificate that does not exist (here: sign.key, sign.cert)",
            "`sysext-pipeline keys generate`, or `build --unsigned` and `sysext-pipeline sign` "
            "the image later", INPUT),
    Problem("signed-output", "is a signed image and this build",
            "the output directory holds a signed image from other inputs; a build does not "
            "replace it silently", "`build --force`, or another `-o` directory", INPUT),
    Problem("no-space", "not enough free space",
            "the output directory's file system (staging lives there) or $TMPDIR (a DDI's "
            "scratch) is too small for this build", "free space, build into another `-o`, "
            "or set TMPDIR to a larger directory", RETRY),
    Problem("output-dir", "is not a directory",
            "`-o` names a file (or a path under one)", "give `-o` a directory", INPUT),
    Problem("output-read-only", "is on a read-only file system",
            "`-o` is on a read-only mount", "give `-o` a directory you can write to", INPUT),
    Problem("source-date-epoch", "is not a number of seconds since",
            "SOURCE_DATE_EPOCH is set to something that is not an integer",
            "unset it, or set it to e.g. `$(git log -1 --format=%ct)`", INPUT),
    Problem("tool-missing", "not installed: ",
            "a tool the recipe's image format needs is not installed (the table in "
            "pipeline/tools.py says which, for which command)",
            "`apt-get install` the package the line names", RETRY),
    Problem("tool-too-old", "is older than",
            "an installed tool is older than the oldest version the project supports",
            "install the version the line names (a backport, or a newer release)", RETRY),
    Problem("files-dropped", "the recipe names this file but the image cannot carry",
            "a [files] entry lies where the image kind never merges (usr/ in a confext, a "
            "path outside /usr, /opt, /etc) or where [policy] drops content",
            "move the file, or change extension.kind / policy.etc / policy.var", INPUT),
    Problem("empty-payload", "hold only its extension-release file",
            "every path was dropped or excluded, or there was nothing to extract",
            "`sysext-pipeline plan RECIPE` lists what is dropped and why; fix the sources, "
            "filter.exclude or the kind, or set policy.empty = \"allow\"", INPUT),
    Problem("directory-needs-root", "a directory image built without root holds",
            "a `format = \"directory\"` image is its files on disk, and only root can give them "
            "the owners the manifest records (refused before anything is fetched)",
            "build as root, or use `format = \"squashfs\"` (which records the owners)", INPUT),
)


def catalogue_markdown() -> str:
    """The build-side table of docs/troubleshooting.md: message → cause → fix."""
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["## When a build stops", "",
             "Generated from the error catalogue (`CATALOGUE` in pipeline/errors.py): the words "
             "of the `error:` line, why, and the fix. The exit code says whether to retry (1) "
             "or fix the input (2).", "",
             "| the error says | cause | fix | exit |", "|---|---|---|---|"]
    lines += [f"| `{cell(p.says.strip())}` | {cell(p.cause)} | {cell(p.fix)} | {p.exit} |"
              for p in CATALOGUE]
    return "\n".join(lines) + "\n"
