"""S3 XML documents: ListObjectsV2 pages, error documents, multi-object deletes, multipart and copy
answers.

Pure parsing and building, no I/O, so it is tested on hand-written samples of what S3 and Ceph RGW
answer. A listing page holds at most ``max-keys`` (1000) entries, so a page is parsed whole; the
endpoint streams by yielding each page's entries before fetching the next.

The XML comes from a server we do not control: it goes through ``defusedxml`` with DTDs forbidden
(S3 never sends one), which stops entity expansion bombs and external entities. Elements are
matched by local name, so documents with or without the S3 namespace parse alike.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import unquote_plus
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

# Characters XML 1.0 cannot carry at all, even escaped: keys holding them cannot go in a document.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


class S3XMLError(ValueError):
    """A body that is not the S3 document it should be."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One ``<Contents>`` of a listing."""

    key: str
    size: int | None
    mtime: float | None
    etag: str | None


@dataclass(frozen=True, slots=True)
class ListPage:
    """One ListObjectsV2 answer. Keys and prefixes are decoded when the server URL-encoded them."""

    objects: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    next_token: str | None = None
    key_count: int = 0
    storage_classes: dict[str, str] = field(default_factory=dict)
    """The ``StorageClass`` of the listed keys that have one other than STANDARD (a copy of such
    an object must name it again, or S3 makes the copy STANDARD)."""


@dataclass(frozen=True, slots=True)
class S3ErrorInfo:
    """The ``<Code>`` and ``<Message>`` of an S3 error document (never the request details)."""

    code: str
    message: str


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _parse(body: bytes, root_name: str) -> Element:
    try:
        root: Element = fromstring(body, forbid_dtd=True)
    except (ParseError, DefusedXmlException) as exc:
        raise S3XMLError(f"not a valid {root_name} document: {exc}") from exc
    if _local(root.tag) != root_name:
        raise S3XMLError(f"expected <{root_name}>, got <{_local(root.tag)}>")
    return root


def _children(element: Element) -> dict[str, Element]:
    """The direct children by local name (the last one wins; S3 does not repeat scalar fields)."""
    return {_local(child.tag): child for child in element}


def _text(children: dict[str, Element], name: str) -> str | None:
    child = children.get(name)
    return None if child is None else (child.text or "")


def parse_iso_time(value: str | None) -> float | None:
    """Seconds since the epoch of an ISO 8601 ``LastModified`` (``2024-05-06T07:08:09.000Z``)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_list_page(body: bytes) -> ListPage:
    """A ``<ListBucketResult>`` (ListObjectsV2), with ``encoding-type=url`` keys decoded.

    Decoding uses ``unquote_plus`` as botocore does: AWS encodes a space as ``+`` and ``+`` as
    ``%2B``; RGW encodes a space as ``%20``, which ``unquote_plus`` decodes too.
    """
    root = _parse(body, "ListBucketResult")
    top = _children(root)
    encoded = (_text(top, "EncodingType") or "").lower() == "url"

    def decode(value: str) -> str:
        return unquote_plus(value) if encoded else value

    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    storage_classes: dict[str, str] = {}
    for child in root:
        name = _local(child.tag)
        if name == "Contents":
            fields = _children(child)
            key = _text(fields, "Key")
            if key is None:
                raise S3XMLError("a <Contents> without <Key>")
            objects.append(
                ObjectInfo(
                    key=decode(key),
                    size=_int(_text(fields, "Size")),
                    mtime=parse_iso_time(_text(fields, "LastModified")),
                    etag=_text(fields, "ETag") or None,
                )
            )
            storage_class = (_text(fields, "StorageClass") or "").strip()
            if storage_class and storage_class != "STANDARD":
                storage_classes[objects[-1].key] = storage_class
        elif name == "CommonPrefixes":
            prefix = _text(_children(child), "Prefix")
            if prefix is not None:
                prefixes.append(decode(prefix))
    truncated = (_text(top, "IsTruncated") or "").strip().lower() == "true"
    token = _text(top, "NextContinuationToken") or None
    if truncated and token is None:
        raise S3XMLError("a truncated ListObjectsV2 answer without <NextContinuationToken>")
    count = _int(_text(top, "KeyCount"))
    return ListPage(
        objects=objects,
        prefixes=prefixes,
        truncated=truncated,
        next_token=token,
        key_count=len(objects) + len(prefixes) if count is None else count,
        storage_classes=storage_classes,
    )


def parse_error(body: bytes) -> S3ErrorInfo | None:
    """The code and message of an ``<Error>`` document, or None when the body is not one.

    Only these two fields are kept: AWS puts the string to sign and the canonical request into
    SignatureDoesNotMatch errors, which have no place in a log line.
    """
    if not body.strip():
        return None
    try:
        root = _parse(body, "Error")
    except S3XMLError:
        return None
    fields = _children(root)
    code = (_text(fields, "Code") or "").strip()
    if not code:
        return None
    return S3ErrorInfo(code=code, message=(_text(fields, "Message") or "").strip()[:200])


def parse_upload_id(body: bytes) -> str:
    """The ``UploadId`` of an ``<InitiateMultipartUploadResult>``."""
    upload_id = _text(_children(_parse(body, "InitiateMultipartUploadResult")), "UploadId")
    if not upload_id:
        raise S3XMLError("an InitiateMultipartUploadResult without <UploadId>")
    return upload_id


def parse_copy_etag(body: bytes) -> str:
    """The ``ETag`` of a ``<CopyObjectResult>`` (CopyObject) or ``<CopyPartResult>`` (UploadPartCopy),
    quoted as S3 writes ETags in headers (RGW leaves the quotes out of these documents).

    S3 may answer 200 and still fail a long copy, with an ``<Error>`` body: that is not a copy
    result, so this raises S3XMLError (the caller checks :func:`parse_error` first).
    """
    try:
        root = _parse(body, "CopyObjectResult")
    except S3XMLError:
        root = _parse(body, "CopyPartResult")
    etag = (_text(_children(root), "ETag") or "").strip()
    if not etag:
        raise S3XMLError(f"a <{_local(root.tag)}> without <ETag>")
    return etag if etag.startswith('"') else f'"{etag}"'


def parse_complete_multipart(body: bytes) -> None:
    """Check that a 200 answer to CompleteMultipartUpload is a ``<CompleteMultipartUploadResult>``
    (S3 sends 200 early and may then report a failure as an ``<Error>`` body)."""
    _parse(body, "CompleteMultipartUploadResult")


def complete_multipart_body(etags: Iterable[str]) -> bytes:
    """A ``<CompleteMultipartUpload>`` listing parts 1..n with their ETags, in order."""
    parts = "".join(
        f"<Part><PartNumber>{number}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
        for number, etag in enumerate(etags, start=1)
    )
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


def xml_safe(key: str) -> bool:
    """Whether ``key`` can be written into an XML 1.0 document (a few control characters cannot)."""
    return _XML_INVALID.search(key) is None


def delete_objects_body(keys: Iterable[str]) -> tuple[bytes, str]:
    """(body, Content-MD5) of a quiet multi-object delete; every key must be :func:`xml_safe`.

    S3 requires the MD5 of this body, which is why it is computed here with the body.
    """
    objects = "".join(f"<Object><Key>{escape(key)}</Key></Object>" for key in keys)
    body = f'<?xml version="1.0" encoding="UTF-8"?><Delete><Quiet>true</Quiet>{objects}</Delete>'.encode()
    md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
    return body, md5


def parse_delete_errors(body: bytes) -> list[tuple[str, str]]:
    """The (key, code) of each ``<Error>`` in a ``<DeleteResult>``; empty when all went."""
    root = _parse(body, "DeleteResult")
    errors = []
    for child in root:
        if _local(child.tag) == "Error":
            fields = _children(child)
            errors.append((_text(fields, "Key") or "", _text(fields, "Code") or ""))
    return errors
