"""Storage endpoints: one module per kind behind the small interface of :mod:`geofed.endpoints.base`."""
