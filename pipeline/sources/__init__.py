"""Wing ``sources``: where packages come from — repository metadata, resolution, the lock file and
the download cache.

``metadata`` fetches and verifies a repository's index, ``debian``/``rpmmd`` parse it and compare
versions, ``solver`` computes the dependency closure, ``lock`` writes and checks the lock file,
``fetch`` downloads (bounded, verified, into a flock'd cache), and ``kinds`` is the registry of
source kinds (file, url, apt, packages, locked: how each is fetched, locked, named, labelled and
read). Nothing needs the target distribution's package manager on the build host. May import
``formats``, ``systemd`` and the top-level modules.
"""
