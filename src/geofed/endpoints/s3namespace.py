"""The namespace of the ``s3`` endpoint kind: stat, list, delete and directories on a flat key space.

S3 has no directories, so this module gives it the ones a WebDAV federation expects, the way S3
consoles and s3fs do:

* a path is a **directory** when no object has its key but some key starts with ``key/``: a real
  object below it, or a zero-byte **marker** object ``key/`` (what ``mkcol`` writes, so that an
  empty directory can exist). Markers make their directory exist and are hidden from listings;
* parents are virtual: writing ``a/b/c`` makes ``a`` and ``a/b`` exist, so ``mkcol`` never fails
  for a missing parent and ``makedirs`` is one marker PUT;
* deleting a directory deletes every key under ``key/``, page by page, marker included.

These rules are one concept (the directory emulation), so they live together here, apart from the
byte transfers (:mod:`~geofed.endpoints.s3io`) and the copies (:mod:`geofed.endpoints.s3`), which
only use them. :class:`S3Namespace` is a base class of :class:`geofed.endpoints.s3.S3Endpoint`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from geofed.endpoints.base import Entry, StatResult
from geofed.endpoints.davxml import parse_http_date, parse_length
from geofed.endpoints.s3client import MAX_LIST_BODY, S3Client, _user_metadata
from geofed.endpoints.s3xml import S3XMLError, delete_objects_body, parse_delete_errors, xml_safe
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound

MARKER_CONTENT_TYPE = "application/x-directory"


class S3Namespace(S3Client):
    """Stat, list, delete, mkcol and makedirs of one bucket, directories emulated with key prefixes."""

    # -- stat -----------------------------------------------------------------------------------

    @staticmethod
    def _file_stat(headers: Mapping[str, str]) -> StatResult:
        return StatResult(
            is_dir=False,
            size=parse_length(headers.get("Content-Length")),
            mtime=parse_http_date(headers.get("Last-Modified")),
            etag=headers.get("ETag"),
            content_type=headers.get("Content-Type"),
            metadata=_user_metadata(headers),
        )

    async def stat(self, path: str) -> StatResult | None:
        """HeadObject; on 404, a one-key listing of ``key/`` tells whether it is a directory.

        The root is the bucket and always a directory (whether the bucket exists is the probe's
        business). A directory's mtime is its marker's, when it has one.
        """
        if path == "/":
            return StatResult(is_dir=True)
        key = self._key(path)
        headers = await self._head(path, key)
        if headers is not None:
            return self._file_stat(headers)
        page = await self._list_page(f"LIST {path}/", key + "/", max_keys=1)
        if page.key_count == 0:
            return None
        first = page.objects[0] if page.objects else None
        marker_mtime = first.mtime if first is not None and first.key == key + "/" else None
        return StatResult(is_dir=True, mtime=marker_mtime)

    # -- list -----------------------------------------------------------------------------------

    async def list(self, path: str) -> AsyncIterator[Entry]:
        """ListObjectsV2 with delimiter ``/``, one page at a time, entries yielded page by page.

        An empty first page means no such directory (PathNotFound), except at the root (an empty
        bucket). When a file ``x`` and keys under ``x/`` both exist, ``stat`` says "file", so the
        directory ``x`` is left out. Since ``x`` sorts before ``x/``, only the names that are a
        prefix of the current position can still meet their directory: ``files`` holds those and
        is pruned after every page, so memory stays bounded however long the listing.
        """
        prefix = "" if path == "/" else self._key(path) + "/"
        what = f"LIST {path}"
        token: str | None = None
        files: set[str] = set()
        first = True
        while True:
            page = await self._list_page(what, prefix, delimiter="/", token=token)
            if first and page.key_count == 0 and prefix:
                raise PathNotFound(self.name, f"{what}: no such directory")
            first = False
            for obj in page.objects:
                name = obj.key[len(prefix) :]
                # Skip the directory's own marker, and what a server that ignored the prefix or the
                # delimiter would add.
                if not name or "/" in name or not obj.key.startswith(prefix):
                    continue
                files.add(name)
                yield Entry(name, StatResult(is_dir=False, size=obj.size, mtime=obj.mtime, etag=obj.etag))
            for common in page.prefixes:
                name = common[len(prefix) : -1]
                if name and "/" not in name and common.startswith(prefix) and name not in files:
                    yield Entry(name, StatResult(is_dir=True))
            if not page.truncated:
                return
            last = [obj.key for obj in page.objects[-1:]] + page.prefixes[-1:]
            if last:
                position = max(last)[len(prefix) :]
                files = {name for name in files if name + "/" >= position}
            token = page.next_token

    # -- changes --------------------------------------------------------------------------------

    async def delete(self, path: str) -> None:
        """DeleteObject for a file; for a directory, every key under ``key/``, a page per request.

        S3 answers 204 to a DELETE of a missing key, so existence is checked first (HEAD, then the
        listing itself): deleting nothing is PathNotFound, as for the other endpoint kinds.
        """
        if path == "/":
            raise EndpointRefused(self.name, "DELETE /: refusing to delete the endpoint's root", 403)
        key = self._key(path)
        async with self._request("HEAD", key, what=f"HEAD {path}") as resp:
            if resp.status not in (200, 404):
                raise await self._error(f"HEAD {path}", resp)
            is_file = resp.status == 200
        if is_file:
            await self._delete_one(path, key)
            return
        token: str | None = None
        deleted = 0
        while True:
            page = await self._list_page(f"LIST {path}/", key + "/", token=token)
            keys = [obj.key for obj in page.objects]
            if keys:
                await self._delete_many(path, keys)
                deleted += len(keys)
            if not page.truncated:
                break
            token = page.next_token
        if not deleted:
            raise PathNotFound(self.name, f"DELETE {path}: no such file or directory")

    async def _delete_one(self, path: str, key: str) -> None:
        what = f"DELETE {path}"
        async with self._request("DELETE", key, what=what) as resp:
            if resp.status not in (200, 204):
                raise await self._error(what, resp)

    async def _delete_many(self, path: str, keys: Sequence[str]) -> None:
        """A quiet multi-object delete (POST ?delete, up to 1000 keys); keys XML cannot carry go one
        by one. Any key the server could not delete makes the whole delete a refusal."""
        what = f"DELETE {path}/"
        for key in (k for k in keys if not xml_safe(k)):
            await self._delete_one(path, key)
        safe = [k for k in keys if xml_safe(k)]
        if not safe:
            return
        body, md5 = delete_objects_body(safe)
        headers = {"Content-MD5": md5, "Content-Type": "application/xml"}
        async with self._request(
            "POST", "", (("delete", ""),), what=what, body=body, headers=headers
        ) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
            answer = await self._read(resp, what, MAX_LIST_BODY)
        try:
            errors = parse_delete_errors(answer)
        except S3XMLError as exc:
            raise EndpointUnavailable(self.name, f"{what}: {exc}") from exc
        if errors:
            codes = ", ".join(sorted({code for _, code in errors}))
            raise EndpointRefused(self.name, f"{what}: {len(errors)} keys not deleted ({codes})", 403)

    async def mkcol(self, path: str) -> bool:
        """Write the marker ``key/``; False when a file or directory already has this path.

        A missing parent is not an error: S3 parents are virtual and appear with their children.
        """
        if path == "/" or await self.stat(path) is not None:
            return False
        await self._put_marker(path)
        return True

    async def makedirs(self, path: str) -> None:
        """One marker PUT, without mkcol's existence check: parents are virtual, and writing a marker
        over an existing one (or into a directory that only has children) changes nothing visible.
        This runs before every redirected PUT, so it is worth the round trips saved."""
        if path != "/":
            await self._put_marker(path)

    async def _put_marker(self, path: str) -> None:
        what = f"PUT {path}/"
        headers = {"Content-Type": MARKER_CONTENT_TYPE}
        async with self._request("PUT", self._key(path) + "/", what=what, headers=headers) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
