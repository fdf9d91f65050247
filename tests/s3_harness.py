"""moto's S3 server on loopback, for the tests and the benchmarks (``benchmarks/scale.py --storage s3``).

No MinIO binary can be installed here; ``moto[server]`` (the cluster extra)
serves the S3 API from PyPI. The server runs in its own process on a free
port and is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator


class S3ServerError(RuntimeError):
    """moto's S3 server did not start."""


@contextlib.contextmanager
def moto_s3(bucket: str, key: str = "test") -> Iterator[dict[str, str]]:
    """The server with ``bucket`` created; the AWS variables that reach it (access key and secret ``key``)."""
    import boto3

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.time() > deadline or proc.poll() is not None:
                raise S3ServerError(f"moto's S3 server did not start on 127.0.0.1:{port} (pip install 'moto[server]')")
            time.sleep(0.1)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": key,
               "AWS_SECRET_ACCESS_KEY": key, "AWS_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1", aws_access_key_id=key,
                     aws_secret_access_key=key).create_bucket(Bucket=bucket)
        yield env
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
