"""geofed: a dynamic data federation over S3, Azure, WebDAV and local storage endpoints."""

__version__ = "0.1.0"
