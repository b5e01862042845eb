"""The S3 server under test really enforces conditional writes (before anything relies on
them), and :class:`tlog.bucket.S3Store` reports them as the publisher expects."""

from __future__ import annotations

import httpx
import pytest

from tlog.bucket import BucketError, PreconditionFailed, S3Store

from ..s3support import SeaweedS3


def _store(s3: SeaweedS3, bucket: str, prefix: str = "p") -> S3Store:
    return S3Store(f"s3://{bucket}/{prefix}", client=s3.client())


def test_server_enforces_if_none_match(seaweedfs: SeaweedS3) -> None:
    import botocore.exceptions

    c = seaweedfs.client()
    b = seaweedfs.bucket()
    c.put_object(Bucket=b, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=b, Key="k", Body=b"second", IfNoneMatch="*")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert c.get_object(Bucket=b, Key="k")["Body"].read() == b"first"


def test_server_enforces_if_match(seaweedfs: SeaweedS3) -> None:
    import botocore.exceptions

    c = seaweedfs.client()
    b = seaweedfs.bucket()
    e1 = c.put_object(Bucket=b, Key="cp", Body=b"one")["ETag"]
    e2 = c.put_object(Bucket=b, Key="cp", Body=b"two", IfMatch=e1)["ETag"]
    assert e2 != e1
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=b, Key="cp", Body=b"stale", IfMatch=e1)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        c.put_object(Bucket=b, Key="absent", Body=b"x", IfMatch=e1)
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] in (404, 412)
    assert c.get_object(Bucket=b, Key="cp")["Body"].read() == b"two"


def test_store_create_replace_get_keys(seaweedfs: SeaweedS3) -> None:
    b = seaweedfs.bucket()
    s = _store(seaweedfs, b, "logs/one")
    assert s.get("checkpoint", 1 << 20) is None
    e1 = s.create("tile/0/000", b"x" * 32, "application/octet-stream", "immutable")
    with pytest.raises(PreconditionFailed):
        s.create("tile/0/000", b"y" * 32, "application/octet-stream", "immutable")
    got = s.get("tile/0/000", 1 << 20)
    assert got == (b"x" * 32, e1)
    # A read stops one byte past its limit: the caller sees the object is too long.
    assert s.get("tile/0/000", 16) == (b"x" * 17, e1)
    e2 = s.replace("tile/0/000", b"z", e1, "text/plain", "no-cache")
    with pytest.raises(PreconditionFailed):
        s.replace("tile/0/000", b"w", e1, "text/plain", "no-cache")
    assert s.get("tile/0/000", 1 << 20) == (b"z", e2)
    # Keys are relative to the prefix, and only the prefix's.
    _store(seaweedfs, b, "logs/two").create("other", b"o", "text/plain", "no-cache")
    assert list(s.keys()) == ["tile/0/000"]


def test_writes_need_credentials_reads_do_not(seaweedfs: SeaweedS3) -> None:
    b = seaweedfs.bucket()
    _store(seaweedfs, b).create("checkpoint", b"note\n", "text/plain; charset=utf-8", "x")
    r = httpx.put(f"{seaweedfs.public_url(b, 'p')}/checkpoint", content=b"forged")
    assert r.status_code == 403
    r = httpx.get(f"{seaweedfs.public_url(b, 'p')}/checkpoint")
    assert r.status_code == 200 and r.content == b"note\n"


def test_unreachable_store_is_a_bucket_error(seaweedfs: SeaweedS3) -> None:
    from ..support import free_port

    s = S3Store(
        "s3://nothing/here",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        timeout=2.0,
    )
    with pytest.raises(BucketError) as exc:
        s.get("checkpoint", 1 << 20)
    assert not isinstance(exc.value, PreconditionFailed)


@pytest.mark.parametrize("url", ["http://b/p", "s3://", "s3://b/../x", "s3://b/p?x=1"])
def test_bucket_url_is_strict(url: str) -> None:
    with pytest.raises(ValueError):
        S3Store(url, client=object())  # type: ignore[arg-type]
