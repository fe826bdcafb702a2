"""Where the tests keep what they fetch once (systemd .debs of other versions, third-party RPMs).

Not the invoking user's home: a test run must not depend on whose account runs it or on $HOME
existing. ``$SYSEXT_PIPELINE_TEST_CACHE`` when set; as root ``/var/cache/sysext-pipeline-tests``
(kept between CI runs of clean clones on one machine, like apt's own cache); otherwise a
per-user directory under the system's temporary directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def test_cache_dir() -> Path:
    explicit = os.environ.get("SYSEXT_PIPELINE_TEST_CACHE")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/cache/sysext-pipeline-tests")
    return Path(tempfile.gettempdir()) / f"sysext-pipeline-tests-{os.geteuid()}"


TEST_CACHE = test_cache_dir()
