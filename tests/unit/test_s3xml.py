"""Parsing of S3 XML documents, on samples shaped like what AWS S3 and Ceph RGW send."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from geofed.endpoints.s3xml import (
    ObjectInfo,
    S3XMLError,
    complete_multipart_body,
    delete_objects_body,
    parse_delete_errors,
    parse_error,
    parse_iso_time,
    parse_list_page,
    parse_upload_id,
    xml_safe,
)

# RGW: namespace, URL-encoded keys (a space is %20), Owner and Type fields, KeyCount last.
RGW_PAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>geo</Name>
<Prefix>dir%20one/</Prefix><ContinuationToken>1%2Fabc</ContinuationToken>
<NextContinuationToken>1/next+token==</NextContinuationToken><MaxKeys>1000</MaxKeys>
<Delimiter>%2F</Delimiter><IsTruncated>true</IsTruncated><EncodingType>url</EncodingType>
<Contents><Key>dir%20one/</Key><LastModified>2024-05-06T07:08:09.000Z</LastModified>
<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>0</Size><StorageClass>STANDARD</StorageClass>
<Owner><ID>test</ID><DisplayName>test</DisplayName></Owner><Type>Normal</Type></Contents>
<Contents><Key>dir%20one/%C3%BC%2B1%25.bin</Key><LastModified>2024-05-06T07:08:10.500Z</LastModified>
<ETag>&quot;0cc175b9c0f1b6a831c399e269772661-2&quot;</ETag><Size>10485761</Size></Contents>
<CommonPrefixes><Prefix>dir%20one/sub%20dir/</Prefix></CommonPrefixes>
<CommonPrefixes><Prefix>dir%20one/z/</Prefix></CommonPrefixes>
<KeyCount>4</KeyCount></ListBucketResult>"""

# AWS without encoding-type: keys as plain (XML-escaped) text, no namespace prefix games.
AWS_LAST_PAGE = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>geo</Name><Prefix></Prefix>
<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>false</IsTruncated>
<Contents><Key>a &amp; b+c.txt</Key><LastModified>2023-12-31T23:59:59Z</LastModified>
<ETag>"etag"</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"""

EMPTY_PAGE = b"""<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>geo</Name>
<Prefix>nothing/</Prefix><KeyCount>0</KeyCount><MaxKeys>1</MaxKeys><IsTruncated>false</IsTruncated>
</ListBucketResult>"""


def test_rgw_page_with_markers_prefixes_and_continuation() -> None:
    page = parse_list_page(RGW_PAGE)
    assert page.objects == [
        ObjectInfo(
            "dir one/", 0, parse_iso_time("2024-05-06T07:08:09Z"), '"d41d8cd98f00b204e9800998ecf8427e"'
        ),
        ObjectInfo(
            "dir one/ü+1%.bin",
            10485761,
            datetime(2024, 5, 6, 7, 8, 10, 500000, tzinfo=UTC).timestamp(),
            '"0cc175b9c0f1b6a831c399e269772661-2"',
        ),
    ]
    assert page.prefixes == ["dir one/sub dir/", "dir one/z/"]
    assert page.truncated
    assert page.next_token == "1/next+token=="  # the token is opaque: never decoded
    assert page.key_count == 4


def test_aws_page_without_url_encoding_keeps_plus() -> None:
    page = parse_list_page(AWS_LAST_PAGE)
    assert [o.key for o in page.objects] == ["a & b+c.txt"]
    assert page.objects[0].mtime == datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    assert (page.truncated, page.next_token, page.prefixes) == (False, None, [])


def test_aws_url_encoding_uses_plus_for_space() -> None:
    body = AWS_LAST_PAGE.replace(b"<Key>a &amp; b+c.txt</Key>", b"<Key>a+%26+b%2Bc.txt</Key>").replace(
        b"<IsTruncated>", b"<EncodingType>url</EncodingType><IsTruncated>"
    )
    assert parse_list_page(body).objects[0].key == "a & b+c.txt"


def test_empty_page_and_missing_key_count() -> None:
    page = parse_list_page(EMPTY_PAGE)
    assert (page.key_count, page.objects, page.prefixes) == (0, [], [])
    without_count = RGW_PAGE.replace(b"<KeyCount>4</KeyCount>", b"")
    assert parse_list_page(without_count).key_count == 4


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<Error><Code>NoSuchBucket</Code></Error>",
        b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>",
        b"<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
        b'<!DOCTYPE x [<!ENTITY a "aaaa">]><ListBucketResult>&a;</ListBucketResult>',
    ],
)
def test_broken_pages_are_refused(body: bytes) -> None:
    with pytest.raises(S3XMLError):
        parse_list_page(body)


def test_error_documents() -> None:
    aws = b"""<?xml version="1.0" encoding="UTF-8"?><Error><Code>SignatureDoesNotMatch</Code>
    <Message>The request signature we calculated does not match</Message><AWSAccessKeyId>AK</AWSAccessKeyId>
    <StringToSign>AWS4-HMAC-SHA256 secret-ish details</StringToSign><RequestId>1</RequestId></Error>"""
    info = parse_error(aws)
    assert info is not None
    assert info.code == "SignatureDoesNotMatch"
    assert "details" not in info.message
    rgw = b"""<?xml version="1.0" encoding="UTF-8"?><Error><Code>NoSuchBucket</Code><BucketName>x</BucketName>
    <RequestId>tx0</RequestId><HostId>a-b</HostId></Error>"""
    rgw_info = parse_error(rgw)
    assert rgw_info is not None and (rgw_info.code, rgw_info.message) == ("NoSuchBucket", "")
    for not_an_error in (b"", b"  ", b"<html>502</html>", b"<Error></Error>", b"garbage"):
        assert parse_error(not_an_error) is None


def test_multipart_documents() -> None:
    initiate = b"""<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult
    xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key>
    <UploadId>2~abc/def+g</UploadId></InitiateMultipartUploadResult>"""
    assert parse_upload_id(initiate) == "2~abc/def+g"
    with pytest.raises(S3XMLError):
        parse_upload_id(b"<InitiateMultipartUploadResult></InitiateMultipartUploadResult>")
    assert complete_multipart_body(['"e1"', '"e&2"']) == (
        b'<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>"e1"</ETag></Part>'
        b'<Part><PartNumber>2</PartNumber><ETag>"e&amp;2"</ETag></Part></CompleteMultipartUpload>'
    )


def test_delete_objects_body_and_result() -> None:
    body, md5 = delete_objects_body(["a<b", "dir/"])
    assert b"<Quiet>true</Quiet>" in body
    assert b"<Object><Key>a&lt;b</Key></Object><Object><Key>dir/</Key></Object>" in body
    assert base64.b64decode(md5) == hashlib.md5(body).digest()
    result = b"""<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Deleted><Key>x</Key></Deleted>
    <Error><Key>y</Key><Code>AccessDenied</Code><Message>no</Message></Error></DeleteResult>"""
    assert parse_delete_errors(result) == [("y", "AccessDenied")]
    assert parse_delete_errors(b"<DeleteResult/>") == []
    assert xml_safe("ü &<>") and not xml_safe("ctl\x01")


def test_iso_times() -> None:
    assert parse_iso_time("1970-01-01T00:00:01.000Z") == 1.0
    assert parse_iso_time(None) is None
    assert parse_iso_time("yesterday") is None
