"""The lean SigV4 signer against botocore, byte for byte.

botocore is the reference implementation S3 services are tested against. Every presigned URL here
is compared as a whole string with ``generate_presigned_url`` (fixed clock), so a single differing
byte (encoding, parameter order, host spelling, signature) fails the test. Header signing is
compared with botocore's ``S3SigV4Auth`` on the exact URL the endpoint sends.
"""

from __future__ import annotations

import calendar
import datetime
import hashlib
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from geofed.config import CredentialSettings, EndpointSettings
from geofed.endpoints.credentials import S3Keys
from geofed.endpoints.s3 import S3Endpoint
from geofed.endpoints.sigv4 import (
    EMPTY_SHA256,
    BucketAddress,
    SigV4Signer,
    canonical_host,
    canonical_query,
    encode_key,
)
from geofed.runtime import build_endpoint
from geofed.signing import URLSigner

ACCESS = "AKIDEXAMPLE/with+odd=chars"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
BUCKET = "geo-bucket-1"
DOTTED = "geo.bucket-1"

KEYS = [
    "a",
    "dir/sub/file.txt",
    "dir/",
    "with space",
    "  leading and trailing  ",
    "ünïcødé €.dat",
    "日本語/ファイル",
    "emoji 😀.bin",
    "plus+sign",
    "percent%20literal",
    "100% #1 [x].bin",
    "tilde~and-dash_dot.",
    "sub-delims !$&'()*+,;=",
    "gen-delims :/?#[]@",
    'quote"back\\slash`caret^{brace}|pipe<lt>gt',
    "a//double//slash",
    "./dot/../segments/.",
    "-leading-dash",
    "x" * 900,
    "ctl\x01char\ttab",
]
TIMES = [
    datetime.datetime(2024, 5, 6, 7, 8, 9),
    datetime.datetime(2023, 12, 31, 23, 59, 59),
    datetime.datetime(2024, 1, 1, 0, 0, 0),
]
# (botocore operation, extra parameters, method, operation query pairs as the endpoint passes them)
OPERATIONS: list[tuple[str, dict[str, Any], str, tuple[tuple[str, str], ...]]] = [
    ("get_object", {}, "GET", ()),
    ("head_object", {}, "HEAD", ()),
    ("put_object", {}, "PUT", ()),
    ("delete_object", {}, "DELETE", ()),
    ("create_multipart_upload", {}, "POST", (("uploads", ""),)),
    (
        "upload_part",
        {"UploadId": "2~Zx/+=abc.def_ghi", "PartNumber": 7},
        "PUT",
        (("uploadId", "2~Zx/+=abc.def_ghi"), ("partNumber", "7")),
    ),
    (
        "complete_multipart_upload",
        {"UploadId": "2~Zx/+=abc.def_ghi"},
        "POST",
        (("uploadId", "2~Zx/+=abc.def_ghi"),),
    ),
    ("abort_multipart_upload", {"UploadId": "u p"}, "DELETE", (("uploadId", "u p"),)),
]
# (service URL, addressing, region, bucket): an IP with a port (RGW), a host name with odd case and
# an explicit default port, a path prefix in front of the service, and virtual-hosted style. (botocore
# falls back to path style for a dotted bucket over https, whose name would break the certificate
# check; geofed does what the configuration says, so that case is not compared.)
SERVICES = [
    ("http://127.0.0.1:7480", "path", "us-east-1", DOTTED),
    ("https://S3.Example.TEST:443", "path", "eu-west-3", BUCKET),
    ("http://rgw.example.test:8080/s3", "path", "default", DOTTED),
    ("https://s3.Example.test", "virtual", "us-east-1", BUCKET),
    ("http://s3.example.test:7480", "virtual", "ap-south-2", DOTTED),
]


def _epoch(when: datetime.datetime) -> float:
    return float(calendar.timegm(when.timetuple()))


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime.datetime]]:
    """botocore's clock, frozen at ``holder[0]`` (tests change it in place)."""
    holder = [TIMES[0]]
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: holder[0])
    yield holder


def _boto_client(url: str, addressing: str, region: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        config=Config(signature_version="s3v4", s3={"addressing_style": addressing}),
    )


@pytest.mark.parametrize(("url", "addressing", "region", "bucket"), SERVICES)
def test_presigned_urls_are_byte_identical_to_botocore(
    url: str, addressing: str, region: str, bucket: str, fixed_clock: list[datetime.datetime]
) -> None:
    client = _boto_client(url, addressing, region)
    signer = SigV4Signer(ACCESS, SECRET, region)
    address = BucketAddress(url, bucket, addressing)
    compared = 0
    for when in TIMES:
        fixed_clock[0] = when
        for key in KEYS:
            for operation, params, method, query in OPERATIONS:
                for expires in (1, 600, 604800):
                    expected = client.generate_presigned_url(
                        operation, Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
                    )
                    ours = signer.presign(method, address, key, expires, query, now=_epoch(when))
                    assert ours == expected, f"{operation} {key!r} at {when}"
                    compared += 1
    assert compared == len(TIMES) * len(KEYS) * len(OPERATIONS) * 3


def test_virtual_hosted_urls_put_the_bucket_in_the_host(fixed_clock: list[datetime.datetime]) -> None:
    """Guard against comparing two path-style URLs: botocore silently falls back to path style
    for IP addresses and dotted buckets over https."""
    for url, addressing, region, bucket in SERVICES:
        if addressing == "virtual":
            expected = _boto_client(url, addressing, region).generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "k"}
            )
            assert expected.split("/")[2].startswith(f"{bucket}.s3.")


def test_endpoint_urls_are_byte_identical_to_botocore(fixed_clock: list[datetime.datetime]) -> None:
    """What S3Endpoint hands to clients: lifetime rounding, key mapping, multipart parameter order."""
    settings = EndpointSettings(
        name="s3", kind="s3", url="http://127.0.0.1:7480", bucket=BUCKET, region="us-east-1"
    )
    endpoint = S3Endpoint(settings, S3Keys(ACCESS, SECRET))
    endpoint._signer.clock = lambda: _epoch(TIMES[0])
    client = _boto_client("http://127.0.0.1:7480", "path", "us-east-1")
    path, key, upload_id = "/data/ünï code+1.bin", "data/ünï code+1.bin", "2~abc/def+="

    def boto(operation: str, **params: Any) -> str:
        url: str = client.generate_presigned_url(
            operation, Params={"Bucket": BUCKET, "Key": key, **params}, ExpiresIn=300
        )
        return url

    for method, operation in (
        ("GET", "get_object"),
        ("head", "head_object"),
        ("PUT", "put_object"),
        ("DELETE", "delete_object"),
    ):
        assert endpoint.sign_url(method, path, 300.7) == boto(operation)
    assert endpoint.sign_multipart_create(path, 300) == boto("create_multipart_upload")
    parts = endpoint.sign_multipart_parts(path, upload_id, 3, 300)
    assert parts == tuple(boto("upload_part", UploadId=upload_id, PartNumber=n) for n in (1, 2, 3))
    assert endpoint.sign_multipart_complete(path, upload_id, 300) == boto(
        "complete_multipart_upload", UploadId=upload_id
    )
    with pytest.raises(ValueError):
        endpoint.sign_url("PROPFIND", path, 300)


@pytest.mark.parametrize(("url", "addressing", "region", "bucket"), SERVICES)
def test_header_signing_matches_botocore(
    url: str, addressing: str, region: str, bucket: str, fixed_clock: list[datetime.datetime]
) -> None:
    """The Authorization header for the URL geofed really sends, as a SigV4 verifier recomputes it."""
    signer = SigV4Signer(ACCESS, SECRET, region)
    address = BucketAddress(url, bucket, addressing)
    cases: list[tuple[str, str, list[tuple[str, str]], bytes, dict[str, str]]] = [
        ("HEAD", "dir/ünï code+%.txt", [], b"", {}),
        (
            "GET",
            "",
            [
                ("list-type", "2"),
                ("prefix", "dir with space/+ü/"),
                ("delimiter", "/"),
                ("max-keys", "1000"),
                ("encoding-type", "url"),
                ("continuation-token", "1/ab+cd=="),
            ],
            b"",
            {},
        ),
        ("DELETE", "a//b", [], b"", {}),
        ("PUT", "dir/", [], b"", {"Content-Type": "application/x-directory"}),
        ("POST", "", [("delete", "")], b"<Delete/>", {"Content-MD5": "abc==", "Content-Type": "text/xml"}),
    ]
    for method, key, query, body, extra in cases:
        payload = hashlib.sha256(body).hexdigest()
        sent_url, headers = signer.sign_headers(
            method, address, key, query, payload_sha256=payload, headers=extra, now=_epoch(TIMES[0])
        )
        request = AWSRequest(method=method, url=sent_url, headers=dict(extra), data=body)
        S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", region).add_auth(request)
        assert headers["Authorization"] == request.headers["Authorization"], (method, key)
        assert headers["x-amz-date"] == request.headers["X-Amz-Date"]
        assert headers["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]
        assert headers["Host"] == botocore.auth._host_from_url(sent_url)


def test_encoding_rules() -> None:
    assert encode_key("a b/ü+%~*") == "a%20b/%C3%BC%2B%25~%2A"
    assert canonical_query([("b", "2"), ("a-b", "x"), ("a", "1 +/")]) == "a=1%20%2B%2F&a-b=x&b=2"
    assert canonical_host("https://User@S3.Example.COM:443/x") == "s3.example.com"
    assert canonical_host("http://[::1]:7480") == "[::1]:7480"
    path_style = BucketAddress("http://h:1/base/", "bkt")
    assert (path_style.path(""), path_style.path("k/")) == ("/base/bkt", "/base/bkt/k/")
    assert BucketAddress("https://h", "bkt", "virtual").path("") == "/"
    with pytest.raises(ValueError):
        BucketAddress("https://h", "bkt", "dns")


def test_signing_key_is_derived_once_per_day(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = SigV4Signer(ACCESS, SECRET, "us-east-1")
    address = BucketAddress("http://127.0.0.1:7480", BUCKET)
    derivations = 0
    original = signer._key_and_scope.__func__  # type: ignore[attr-defined]

    def counting(self: SigV4Signer, date: str) -> Any:
        nonlocal derivations
        if self._cache[0] != date:
            derivations += 1
        return original(self, date)

    monkeypatch.setattr(SigV4Signer, "_key_and_scope", counting)
    day = _epoch(TIMES[0])
    for second in range(0, 3600, 7):
        signer.presign("GET", address, "k", 60, now=day + second)
    assert derivations == 1
    signer.presign("GET", address, "k", 60, now=day + 86400)
    assert derivations == 2


def test_expiry_bounds_and_empty_payload() -> None:
    signer = SigV4Signer(ACCESS, SECRET, "us-east-1")
    address = BucketAddress("http://127.0.0.1:7480", BUCKET)
    for bad in (0, -1, 604801):
        with pytest.raises(ValueError):
            signer.presign("GET", address, "k", bad)
    _, headers = signer.sign_headers("HEAD", address, "k")
    assert headers["x-amz-content-sha256"] == EMPTY_SHA256


def test_the_secret_never_shows() -> None:
    keys = S3Keys("AK", "TOPSECRETVALUE123")
    signer = SigV4Signer(keys.access_key, keys.secret_key, "us-east-1")
    settings = EndpointSettings(
        name="s3",
        kind="s3",
        url="http://127.0.0.1:7480",
        bucket=BUCKET,
        credentials=CredentialSettings(access_key="AK", secret_key="TOPSECRETVALUE123"),  # type: ignore[arg-type]
    )
    endpoint = S3Endpoint(settings)
    for text in (repr(signer), str(signer), repr(endpoint), repr(keys), repr(settings)):
        assert "TOPSECRETVALUE123" not in text
    url = endpoint.sign_url("GET", "/k", 60)
    assert "TOPSECRETVALUE123" not in url


def test_runtime_builds_s3_endpoints() -> None:
    settings = EndpointSettings(
        name="s3",
        kind="s3",
        url="http://127.0.0.1:7480",
        bucket=BUCKET,
        credentials=CredentialSettings(access_key="AK", secret_key="SK"),  # type: ignore[arg-type]
    )
    endpoint = build_endpoint(settings, URLSigner("0123456789abcdef0123"))
    assert isinstance(endpoint, S3Endpoint)
    assert endpoint.capabilities.multipart_upload
