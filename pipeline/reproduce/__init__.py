"""Wing ``reproduce``: proving a build — ``verify`` (rebuild from a manifest, compare byte for
byte), ``vary`` (rebuild under varied environments) and ``diff`` (why two builds differ).

May import ``stages`` and every wing below it; never ``commands`` or ``host``.
"""
