"""An S3-compatible server for the tests: moto's server mode on loopback, on a free port.

``moto[server]`` and ``s3fs`` are in the ``test`` extra: a missing one is an import error
(the S3 tests fail), never a skip. The server speaks the real S3 HTTP API, so everything below
goes through s3fs, aiobotocore and HTTP exactly as against a cloud bucket, and a subprocess
(the CLI) reaches it the way a user's would: through ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import s3fs  # noqa: F401  (the test extra; imported here so that its absence fails loudly)
from moto.server import ThreadedMotoServer

# test modules import the fixtures by these names: ``from s3_server import S3, s3_fixture,
# s3_endpoint_fixture``; tests take them as ``s3`` (a fresh bucket) and ``s3_endpoint``

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3:
    """A fresh bucket on the test server."""

    endpoint: str
    bucket: str

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{name}"

    @property
    def env(self) -> dict[str, str]:
        """What a user exports to point every S3 client (botocore, s3fs) at this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    @property
    def storage_options(self) -> dict[str, object]:
        """The same, as fsspec storage options (``storage_options=`` of the chain and DCP)."""
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}


@pytest.fixture(scope="session", name="s3_endpoint")
def s3_endpoint_fixture() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(name="s3")
def s3_fixture(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3:
    """A new bucket, with this process's S3 clients pointed at the server by environment."""
    bucket = S3(s3_endpoint, f"dk-{uuid.uuid4().hex[:12]}")
    for k, v in bucket.env.items():
        monkeypatch.setenv(k, v)
    import fsspec

    fsspec.filesystem("s3").mkdir(bucket.bucket)
    return bucket
