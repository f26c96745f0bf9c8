"""The archive: the cpio newc format, its compression, and atomic output."""
