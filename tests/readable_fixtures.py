"""Session fixtures for the readable-answers, web-page, SQL and business-rule tests: one
release pair (previous, current) with catalog attributes, user history and evaluation, built
once per worker (the test modules share the xdist group ``readable``)."""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import readable_release


@pytest.fixture(scope="session")
def readable_home(tmp_path_factory) -> Path:
    import os

    if os.environ.get("RECS_TEST_READABLE_HOME"):  # a home built earlier by readable_release.build (development)
        return Path(os.environ["RECS_TEST_READABLE_HOME"])
    # One build per test session even when xdist splits these modules over workers: the
    # workers share the base temp's parent; the first builds under a lock, the others reuse it.
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    home = root / "readable-home"
    with open(root / "readable-home.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (home / ".built").exists():
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir(parents=True)
            readable_release.build(home)
            (home / ".built").touch()
    return home


@pytest.fixture(scope="session")
def readable_versions(readable_home) -> tuple[str, str]:
    from recs_serving import release as release_format

    versions = release_format.list_versions(readable_home)
    return versions[-2], versions[-1]


@pytest.fixture(scope="session")
def readable_rec(readable_home):
    from recs_serving import Recommender

    rec = Recommender(readable_home, watch=False)
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def readable_client(readable_rec):
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    with TestClient(create_app(readable_rec, admin_token="test-token", cors_origins="https://shop.example")) as c:
        yield c


@pytest.fixture()
def rules_home(readable_home, tmp_path):
    """A copy of the readable home (hard links) whose business rules a test may write."""
    home = tmp_path / "rules-home"
    shutil.copytree(readable_home, home, copy_function=lambda s, d: __import__("os").link(s, d))
    return home


class LiveServer:
    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
