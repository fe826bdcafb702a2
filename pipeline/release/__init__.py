"""Wing ``release``: what a release engineer ships beside an image — the SPDX SBOM (``sbom``), the
in-toto/SLSA provenance (``provenance``) and the systemd-sysupdate feed (``feed``).

May import ``formats`` and the top-level modules.
"""
