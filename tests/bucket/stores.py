"""Stores the bucket tests put under a publisher or its probe: one that ignores the
conditional writes (:class:`IgnoringStore`), and a writer with only some S3 permissions on
the session's real SeaweedFS (:func:`limited_store`): an IAM policy (``weed shell
s3.policy``) allowing just the given actions on one bucket, attached to a new user of its
own (``s3.configure``), as an operator would give a writer that may not delete."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from harness.s3 import weed_shell
from tlog.bucket import S3Store

from ..s3support import SeaweedS3, weed_binary

READ, WRITE, LIST, DELETE = "s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject"


class _Over:
    """Reads, listings and deletes passed to the real store underneath; the writes are the
    subclass's."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner

    def get(self, key: str, limit: int) -> tuple[bytes, str] | None:
        return self.inner.get(key, limit)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    def delete(self, key: str) -> None:
        self.inner.delete(key)


class IgnoringStore(_Over):
    """An S3 store that ignores If-None-Match and If-Match (as s3rver or local-s3-server
    do): every write is unconditional. Built on the real SeaweedFS, without the headers."""

    def _put(self, key: str, data: bytes, content_type: str, cache_control: str) -> str:
        r = self.inner._s3.put_object(
            Bucket=self.inner.bucket,
            Key=self.inner.prefix + key,
            Body=data,
            ContentType=content_type,
            CacheControl=cache_control,
        )
        return str(r["ETag"])

    def create(self, key: str, data: bytes, content_type: str, cache_control: str) -> str:
        return self._put(key, data, content_type, cache_control)

    def replace(
        self, key: str, data: bytes, etag: str, content_type: str, cache_control: str
    ) -> str:
        return self._put(key, data, content_type, cache_control)


def _shell(s3: SeaweedS3, script: str) -> str:
    weed = weed_binary()
    assert weed is not None  # the server runs, so its binary is there
    r = weed_shell(weed, s3, script)
    return r.stdout.decode("utf-8", "replace") + r.stderr.decode("utf-8", "replace")


def limited_client(s3: SeaweedS3, bucket: str, actions: list[str]) -> Any:
    """A boto3 client of a new user allowed only ``actions`` on ``bucket`` and its objects
    (returned once the server answers that user: a write where allowed, else a read)."""
    name = f"w{uuid.uuid4().hex[:12]}"
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": actions,
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    path = s3.workdir / f"{name}.policy.json"
    path.write_text(json.dumps(policy))
    out = _shell(s3, f"s3.policy -put -name={name} -file={path}\n")
    secret = uuid.uuid4().hex
    out += _shell(
        s3,
        f"s3.configure -user={name} -access_key={name} -secret_key={secret} "
        f"-policies={name} -apply\n",
    )
    assert f'"{name}"' in out, out
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=name,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
    )
    deadline = time.monotonic() + 30
    while True:  # the S3 server picks the new user up from the filer shortly
        try:
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            return client
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code == "AccessDenied" and LIST not in actions:
                return client  # known, and refused as asked
            if time.monotonic() > deadline:
                raise AssertionError(f"user {name} not taken up: {exc}\n{out}") from None
            time.sleep(0.2)


def limited_store(s3: SeaweedS3, bucket: str, prefix: str, actions: list[str]) -> S3Store:
    return S3Store(f"s3://{bucket}/{prefix}", client=limited_client(s3, bucket, actions))


class OwnEtagRefusingStore(_Over):
    """A store whose replaces never match (a gateway that rewrites the ``If-Match`` value,
    say): every replace, even on the object's current ETag, is refused (412) by the real
    SeaweedFS underneath; creates, reads and deletes pass through."""

    def create(self, key: str, data: bytes, content_type: str, cache_control: str) -> str:
        return self.inner.create(key, data, content_type, cache_control)

    def replace(
        self, key: str, data: bytes, etag: str, content_type: str, cache_control: str
    ) -> str:
        mangled = '"' + "f" * 32 + '"'  # never the object's
        return self.inner.replace(key, data, mangled, content_type, cache_control)
