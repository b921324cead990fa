"""Benchmark: the cost of one presigned S3 URL, geofed's lean SigV4 against botocore.

``.venv/bin/python bench/signing.py [--calls N] [--rounds R]``

Every redirect to an S3 endpoint signs a URL (a multipart offer signs one per part), so the
signer sits on the hot path. Before timing anything, this checks that the lean signer's URLs are
byte-identical to botocore's ``generate_presigned_url`` for every sample key and operation, at a
frozen clock; if any byte differs it says so and exits 1, because a faster signer that S3 would
refuse is worthless. Then it times, per call (median of the rounds):

* ``botocore generate_presigned_url``: what an S3 endpoint built on boto3 would call;
* ``botocore S3SigV4QueryAuth``: botocore's signer alone on a prepared request (its lower bound);
* ``geofed SigV4Signer.presign`` and ``S3Endpoint.sign_url`` (path to key mapping included);
* ``azure generate_blob_sas`` for reference (an HMAC over a fixed string), when installed.

All in one process, one after the other, so a busy machine shifts every row alike and the
ratio still means something.
"""

from __future__ import annotations

import argparse
import calendar
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3
import botocore.auth
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from bench.report import table
from geofed.config import EndpointSettings
from geofed.endpoints.credentials import S3Keys
from geofed.endpoints.s3 import S3Endpoint
from geofed.endpoints.sigv4 import BucketAddress, SigV4Signer

SERVICE, BUCKET, REGION = "http://127.0.0.1:7480", "geofed-bench", "us-east-1"
ACCESS, SECRET = "BENCHACCESSKEY", "benchsecretkey/with+odd=chars"
KEYS = ["data/run-2024/file-000123.root", "a b/ünïcødé €.dat", "100% #1 [x]+y~z.bin", "x" * 200]
OPERATIONS: list[tuple[str, dict[str, Any], str, tuple[tuple[str, str], ...]]] = [
    ("get_object", {}, "GET", ()),
    ("head_object", {}, "HEAD", ()),
    ("put_object", {}, "PUT", ()),
    ("create_multipart_upload", {}, "POST", (("uploads", ""),)),
    (
        "upload_part",
        {"UploadId": "2~abc", "PartNumber": 9},
        "PUT",
        (("uploadId", "2~abc"), ("partNumber", "9")),
    ),
    ("complete_multipart_upload", {"UploadId": "2~abc"}, "POST", (("uploadId", "2~abc"),)),
]


def _client() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=SERVICE,
        region_name=REGION,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def check_identical() -> int:
    """Compare every sample URL with botocore at a frozen clock; the number compared, or exit 1."""
    frozen = datetime.datetime(2024, 5, 6, 7, 8, 9)
    now = float(calendar.timegm(frozen.timetuple()))
    client, signer = _client(), SigV4Signer(ACCESS, SECRET, REGION)
    address = BucketAddress(SERVICE, BUCKET, "path")
    compared = 0
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=frozen):
        for key in KEYS:
            for operation, params, method, query in OPERATIONS:
                expected = client.generate_presigned_url(
                    operation, Params={"Bucket": BUCKET, "Key": key, **params}, ExpiresIn=600
                )
                ours = signer.presign(method, address, key, 600, query, now=now)
                if ours != expected:
                    print(f"NOT byte-identical for {operation} {key!r}:")
                    print(f"  botocore {expected}\n  geofed   {ours}")
                    sys.exit(1)
                compared += 1
    return compared


def per_call(func: Callable[[int], object], calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean seconds per call of ``func(i)`` for i in range(calls)."""
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            func(i)
        results.append((time.perf_counter() - start) / calls)
    return statistics.median(results)


def candidates() -> list[tuple[str, Callable[[int], object]]]:
    client, signer = _client(), SigV4Signer(ACCESS, SECRET, REGION)
    address = BucketAddress(SERVICE, BUCKET, "path")
    settings = EndpointSettings(name="bench", kind="s3", url=SERVICE, bucket=BUCKET, region=REGION)
    endpoint = S3Endpoint(settings, S3Keys(ACCESS, SECRET))
    credentials = Credentials(ACCESS, SECRET)
    n = len(KEYS)

    def boto_presign(i: int) -> object:
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": KEYS[i % n]}, ExpiresIn=600
        )

    def boto_signer(i: int) -> object:
        request = AWSRequest(method="GET", url=f"{SERVICE}/{BUCKET}/{KEYS[i % n]}")
        S3SigV4QueryAuth(credentials, "s3", REGION, expires=600).add_auth(request)
        return request.url

    rows: list[tuple[str, Callable[[int], object]]] = [
        ("botocore generate_presigned_url", boto_presign),
        ("botocore S3SigV4QueryAuth.add_auth", boto_signer),
        ("geofed SigV4Signer.presign", lambda i: signer.presign("GET", address, KEYS[i % n], 600)),
        ("geofed S3Endpoint.sign_url", lambda i: endpoint.sign_url("GET", "/" + KEYS[i % n], 600)),
    ]
    try:
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas
    except ImportError:
        return rows
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    account_key = "YmVuY2hrZXliZW5jaGtleWJlbmNoa2V5YmVuY2hrZXk="

    def azure_sas(i: int) -> object:
        return generate_blob_sas(
            "benchaccount",
            "container",
            KEYS[i % n],
            account_key=account_key,
            permission=BlobSasPermissions(read=True),
            expiry=expiry,
        )

    rows.append(("azure generate_blob_sas (reference)", azure_sas))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5000, help="calls per round (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is kept (default 5)")
    args = parser.parse_args(argv)

    compared = check_identical()
    print(f"byte-identical to botocore generate_presigned_url: yes ({compared} URLs compared)\n")
    rows = candidates()
    for _, func in rows:  # warm up: imports, caches, botocore's loaders
        per_call(func, 50, 1)
    timings = [(name, per_call(func, args.calls, args.rounds)) for name, func in rows]
    reference = timings[0][1]
    lean = dict(timings)["geofed SigV4Signer.presign"]
    print(
        table(
            ["signer", "µs/call", "calls/s", "speed-up vs generate_presigned_url"],
            [
                [name, f"{seconds * 1e6:.1f}", f"{1 / seconds:,.0f}", f"{reference / seconds:.1f}x"]
                for name, seconds in timings
            ],
            title=f"one presigned GET URL ({args.calls} calls x {args.rounds} rounds, median)",
        )
    )
    endpoint = S3Endpoint(
        EndpointSettings(name="bench", kind="s3", url=SERVICE, bucket=BUCKET, region=REGION),
        S3Keys(ACCESS, SECRET),
    )
    parts = per_call(lambda i: endpoint.sign_multipart_parts("/big.dat", "2~abc", 22, 600), 200, args.rounds)
    print(f"\nmultipart offer for a 5 GiB upload (22 part URLs): {parts * 1e6:.0f} µs")
    print(f"lean signer vs botocore generate_presigned_url: {reference / lean:.1f}x faster per URL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
