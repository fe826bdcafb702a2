"""Wing ``formats``: package archive readers (deb, rpm, and the ar/tar/cpio/compression layers
under them) and ELF architecture sniffing. Every package format yields the same :class:`Entry`
stream (see entry.py). Imports only ``errors``.
"""
