"""`explain` on systemd's own words names the rule `check` gives (issue 17).

For every case tests/test_check_matrix.py builds (its cases, its images, its runner — imported,
not duplicated), the real systemd-sysext/systemd-confext of each version of the test matrix runs
``merge --root`` with ``SYSTEMD_LOG_LEVEL=debug``; ``explain`` reads those exact lines and must
name the rule ``check`` gives for that case and version, and with the files (``--root`` and the
image) confirm it. Every catalogued text captured from a version must really appear in that
version's output, so the catalogue cannot drift from what systemd prints.
"""

from __future__ import annotations

import inspect
import shlex

import pytest
from prereq import missing
from test_check_matrix import matrix, predicted, real_verdict, run_real  # noqa: F401

from pipeline.commands import explain as explain_cmd
from pipeline.host import facts as hostmod
from pipeline.systemd import explain, rules

#: The point releases the catalogue was captured from, by major (what the matrix fetches).
POINT = {252: "252.38", 254: "254.26", 257: "257.13", 262: "262.1"}


def _argv(major: int, kind: str) -> list[str]:
    from systemd_versions import Unavailable, systemd_binary

    try:
        return systemd_binary(major, f"systemd-{kind}")
    except Unavailable as exc:
        missing(f"systemd {major}: {exc}")


def _installed_version(argv: list[str]) -> str:
    import subprocess

    out = subprocess.run(argv + ["--version"], capture_output=True, text=True).stdout
    return rules.format_version(rules.parse_version(out.splitlines()[0]))


def _run(argv: list[str], cases) -> dict[str, str]:
    """test_check_matrix.run_real, whichever of its two signatures is in the tree."""
    if "argv" in inspect.signature(run_real).parameters:
        return run_real(argv, cases)
    return run_real(shlex.join(argv), {}, cases)


def _real(log: str, guess, case) -> str:
    """The real outcome for the case, read as test_check_matrix.compare reads it."""
    if "names" in inspect.signature(real_verdict).parameters:
        names = set() if case.mask_dir else \
            {guess.name, case.image_file, getattr(case, "v_inner", None)} - {None}
        return real_verdict(log, names)
    return real_verdict(log, guess.name)


def _check_explained(case, root, image, version: str, log: str, stats: dict) -> list[str]:
    """Problems with explain's answer for one case (empty: it names check's rule)."""
    guess = predicted(case, root, image, version)
    real = _real(log, guess, case)
    lines = [line for line in log.splitlines() if not line.startswith("@@rc=")]
    parsed = rules.parse_version(version)
    result = explain.explain_text(lines, parsed, case.kind)
    if real != guess.verdict:
        stats["check mispredicts"].append(case.id)
    if real != guess.verdict:
        # check itself is wrong here (test_check_matrix.py reports that): explain must still
        # sum up what really happened
        summary = result["images"].get(guess.name or "")
        merged = bool(summary and summary.merged)
        if result["merge"].startswith("nothing merged") != (real == rules.BREAKS) or \
                merged != (real == rules.MERGES):
            return [f"{case.id}: systemd {real}, explain {result['merge']!r} (merged: {merged})"]
        return []
    rule_id = guess.rule.id
    summary = result["images"].get(guess.name or "")
    named = {r for line in result["lines"] if line.status == "rule" for r in line.rules}
    problems = []
    # the merge as a whole: what explain sums up is what happened
    if result["merge"].startswith("nothing merged") != (guess.verdict == rules.BREAKS):
        problems.append(f"merge summed up as {result['merge']!r}")
    if rule_id == "host.no-id":
        if "host.no-id" not in named:
            problems.append("no line explained as host.no-id")
    elif rule_id == "merge.broken-by-other":
        culprit_rule = guess.host_value.rsplit(": ", 1)[-1].rstrip(")")
        if "broke the merge" not in result["merge"] or culprit_rule not in named:
            problems.append(f"merge {result['merge']!r}, culprit's {culprit_rule} not named")
    elif explain.texts_for(rule_id, parsed):
        if rule_id.startswith("discovery.") and rule_id != "discovery.shadowed":
            ok = rule_id in named
        elif guess.verdict == rules.MERGES:
            ok = summary is not None and summary.merged and rule_id in summary.rules
        else:
            ok = summary is not None and not summary.merged and rule_id in summary.rules
        if not ok:
            problems.append(f"explain says {summary.rules if summary else None} "
                            f"(merged: {summary.merged if summary else None})")
    else:  # a rule that prints nothing on this version: nothing may claim the image
        assert explain.silent(rule_id, parsed), f"{rule_id} has no text for {version}"
        if summary is not None and summary.rules and not summary.merged:
            problems.append(f"silent rule, but explain says {summary.rules}")
    # the files: explain --root ROOT IMAGE confirms (or says they disagree)
    host = hostmod.detect(root, systemd=version, initrd=case.initrd)
    confirmed = explain_cmd.confirm(result, host, case.kind, [image])
    for entry in confirmed:
        if entry["files_rule"] != rule_id or not entry["agrees"]:
            problems.append(f"--root: {entry}")
    for line in result["lines"]:
        if line.image == guess.name and line.agrees is False:
            problems.append(f"--root disagrees on line {line.text!r}: {line.note}")
    if problems:
        tail = "\n      ".join(line for line in lines if (case.name in line or "Failed" in line))
        return [f"{case.id}: check {rule_id}: " + "; ".join(problems) + "\n      " + tail[-800:]]
    return []


@pytest.mark.root
@pytest.mark.parametrize("major", [252, pytest.param(254, marks=pytest.mark.network),
                                   pytest.param(257, marks=pytest.mark.network),
                                   pytest.param(262, marks=pytest.mark.network)])
def test_explain_names_checks_rule(matrix, major):  # noqa: F811
    problems, count, seen = [], 0, set()
    stats: dict[str, list[str]] = {"check mispredicts": []}
    for kind in ("sysext", "confext"):
        if not rules.ships_tool(kind, (major, 0)):
            continue
        argv = _argv(major, kind)
        version = _installed_version(argv)
        assert version.split(".")[0] == str(major)
        chosen = [(c, r, i) for c, r, i in matrix.values()
                  if c.kind == kind and major >= c.min_major]
        logs = _run(argv, [(c, r) for c, r, _ in chosen])
        for case, root, image in chosen:
            log = logs.get(case.id, "")
            count += 1
            problems += _check_explained(case, root, image, version, log, stats)
            for line in explain.explain_lines(log.splitlines(), rules.parse_version(version),
                                              case.kind):
                if line.status == "rule":
                    seen.add(next(t for t, _, rx in explain._INDEX if rx.fullmatch(line.text)
                                  and t.applies(rules.parse_version(version))))
    print(f"systemd {major}: {count} cases through explain, {len(problems)} problem(s), "
          f"check mispredicts {len(stats['check mispredicts'])} (against the real outcome): "
          f"{', '.join(stats['check mispredicts'])}")
    assert count >= 60
    assert not problems, f"{len(problems)}/{count}:\n" + "\n".join(problems)
    # every text the catalogue says was captured from this version appears in its output
    claimed = {t for texts in explain.MESSAGES.values() for t in texts
               if POINT[major] in explain.captured_versions(t) and "--force" not in t.source}
    never = [t.template for t in claimed - seen]
    assert not never, f"catalogued as printed by {POINT[major]} but not seen: {never}"
