"""Run by ``.cache/rucio-venv/bin/python`` (not geofed's venv): drive one Rucio RSE protocol through a
list of steps and write what each step returned, as JSON, to the file the request names.

Only the standard library and rucio-clients are imported here (this file is not part of the test
package's import graph). The request comes as JSON on standard input::

    {"rse_settings": {...}, "output": "/tmp/.../result.json",
     "steps": [{"op": "upload", "scope": "user.test", "name": "f.dat", "source_dir": "/tmp/..."},
               {"op": "exists", ...}, {"op": "stat", ...}, {"op": "digest", ...},
               {"op": "download", ..., "dest": "/tmp/.../f.dat"}, {"op": "delete", ...}]}

Each result is ``{"op", "ok", "value"}`` or ``{"op", "ok": false, "error", "traceback"}``; every step
runs even when an earlier one failed, so a test sees the whole picture. Results go to a file, not
standard output, because Rucio's protocols ``print`` (webdav's ``get`` on a missing Content-Length).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def _lfn(step: dict[str, Any]) -> dict[str, Any]:
    return {"scope": step["scope"], "name": step["name"]}


def _pfn(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> str:
    return str(next(iter(rsemanager.lfns2pfns(rse, _lfn(step), operation="write").values())))


def _plain(value: Any) -> Any:
    """Rucio's results as JSON: exceptions become their text, keys become strings."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def op_pfn(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    return _pfn(rsemanager, rse, step)


def op_upload(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    from rucio.common.checksum import adler32, md5

    source = os.path.join(step["source_dir"], step["name"])
    lfn = {
        **_lfn(step),
        "filesize": os.path.getsize(source),
        "adler32": adler32(source),
        "md5": md5(source),
    }
    result = rsemanager.upload(rse, lfn, source_dir=step["source_dir"])
    return {"lfn": lfn, "result": _plain(result)}


def op_exists(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    return rsemanager.exists(rse, _lfn(step))


def _connected(rsemanager: Any, rse: dict[str, Any], operation: str) -> Any:
    protocol = rsemanager.create_protocol(rse, operation)
    protocol.connect()
    return protocol


def op_stat(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    protocol = _connected(rsemanager, rse, "read")
    try:
        return _plain(protocol.stat(_pfn(rsemanager, rse, step)))
    finally:
        protocol.close()


def op_digest(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    """``HEAD`` + ``Want-Digest`` with python-requests (as Rucio's webdav protocol sends its
    requests), the proxy as client certificate and the test CA trusted. Rucio's webdav ``stat``
    asks for no checksum at all, so this is how a test reads the federation's checksum there."""
    import requests

    proxy = os.environ["X509_USER_PROXY"]
    response = requests.head(
        _pfn(rsemanager, rse, step),
        headers={"Want-Digest": step.get("want", "ADLER32")},
        cert=(proxy, proxy),
        verify=os.environ["REQUESTS_CA_BUNDLE"],
        timeout=30,
    )
    return {"status": response.status_code, "digest": response.headers.get("Digest")}


def op_download(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    protocol = _connected(rsemanager, rse, "read")
    try:
        protocol.get(_pfn(rsemanager, rse, step), step["dest"])
        return step["dest"]
    finally:
        protocol.close()


def op_delete(rsemanager: Any, rse: dict[str, Any], step: dict[str, Any]) -> Any:
    return _plain(rsemanager.delete(rse, _lfn(step)))


OPS = {
    "pfn": op_pfn,
    "upload": op_upload,
    "exists": op_exists,
    "stat": op_stat,
    "digest": op_digest,
    "download": op_download,
    "delete": op_delete,
}


def main() -> None:
    request = json.load(sys.stdin)
    rse = request["rse_settings"]
    results: list[dict[str, Any]] = []
    try:
        from rucio.rse import rsemanager
    except Exception as exc:  # a broken rucio venv: say so in the results
        results.append({"op": "import", "ok": False, "error": f"{type(exc).__name__}: {exc}"})
    else:
        for step in request["steps"]:
            try:
                value = OPS[step["op"]](rsemanager, rse, step)
            except Exception as exc:
                results.append(
                    {
                        "op": step["op"],
                        "ok": False,
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc(),
                    }
                )
            else:
                results.append({"op": step["op"], "ok": True, "value": value})
    with open(request["output"], "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()
