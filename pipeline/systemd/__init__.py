"""Wing ``systemd``: the pure model of systemd — release files, matching rules by version, search
paths, partition types, and the messages systemd prints (``explain``).

No I/O on a host or an image: the facts come from :mod:`pipeline.host`. Imports only
``errors``.
"""
