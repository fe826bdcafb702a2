"""sysext-pipeline: reproducible, signed systemd-sysext/confext images from RPM and DEB packages."""

__version__ = "0.1.0"
