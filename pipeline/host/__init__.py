"""Wing ``host``: reading a host or a ``--root`` tree — its facts (os-release, systemd version,
what it accepts: ``facts``), the extension images installed on it (``images``) and the signatures
it trusts (``signature``).

What systemd would then do with them is the pure model in :mod:`pipeline.systemd`. May import
``image``, ``sources`` (Debian control-file parsing), ``systemd``, ``formats`` and the top-level
modules.
"""
