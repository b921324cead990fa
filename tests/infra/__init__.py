"""Real test infrastructure on loopback: WebDAV servers, a latency proxy and GeoIP databases."""
