"""Package resolution from repository metadata (Debian archives, rpm-md) and the lock file.

``metadata`` fetches and verifies a repository's index, ``debian``/``rpmmd`` parse it and compare
versions, ``solver`` computes the dependency closure, ``lock`` writes and checks the lock file.
Nothing needs the target distribution's package manager on the build host.
"""
