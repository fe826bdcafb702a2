"""Wing ``stages``: the build, one stage a module, in the order the data goes through them.

``build`` runs them: sources (lock, fetch) → ``extract`` (archives into ``staging``) →
``layout`` (where a kind may put files) → ``normalize`` → ``pitfalls`` → ``package`` (through
``sorted_tree`` to the image writers) → ``manifest``; ``uptodate`` skips all of it when nothing
changed. May import ``sources``, ``image``, ``release``, ``systemd``, ``formats`` and the top-level
modules; never ``commands``, ``reproduce`` or ``host``.
"""
