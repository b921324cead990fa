"""WLCG HTTP third-party copy: the copy engine, its remote HTTP side, and the marker format.

* :mod:`~geofed.transfer.engine` -- :class:`~geofed.transfer.engine.TransferEngine`: one per
  process; copies between endpoints and remote URLs in bounded memory, verified, cleaned up;
* :mod:`~geofed.transfer.remote` -- GET/PUT/HEAD/DELETE of remote URLs for a copy;
* :mod:`~geofed.transfer.markers` -- the performance markers and final lines of a COPY response;
* :mod:`~geofed.transfer.settings` -- :class:`~geofed.transfer.settings.TransferSettings`.

The ``COPY`` handler is :mod:`geofed.frontend.copy`.
"""
