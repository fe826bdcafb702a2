"""Wing ``image``: writers and readers of what a build produces — file systems (``fsinfo``) and
Discoverable Disk Images with verity and signatures (``ddi``).

Readers treat every image as hostile unless told it is the project's own fresh output. May import
``systemd`` (partition types), ``formats`` and the top-level modules.
"""
