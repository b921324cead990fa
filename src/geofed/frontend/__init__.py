"""The HTTP surface of geofed: redirects, WebDAV answers, listings, the data route and status."""
