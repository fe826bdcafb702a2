"""One model of systemd: release files, matching rules, search paths, partition types."""
