"""geofed benchmarks: each compares geofed with a reference server in the same run (see README.md)."""
