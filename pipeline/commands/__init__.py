"""Wing ``commands``: one thin module per CLI verb — parse options, call a stage, a reader or the
host model, print (human lines or the one JSON envelope of :mod:`.clikit`).

``cli`` is the entry point and imports a verb's module only when that verb runs. May import every
wing below it; nothing imports ``commands``.
"""
