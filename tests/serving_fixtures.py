"""Session fixtures for the serving tests: one real release built from the bundled data.

Import them into a test module with ``from serving_fixtures import *  # noqa``. The release is
built once per session (``release_factory.build_tables`` is cached) and shared read-only;
tests that publish new releases use their own home via ``fresh_home``.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from release_factory import build_release


@pytest.fixture(scope="session")
def release_home(tmp_path_factory) -> Path:
    override = os.environ.get("RECS_TEST_RELEASE_HOME")
    if override:  # e.g. a home the Dagster pipeline published into
        return Path(override)
    home = tmp_path_factory.mktemp("serving-home")
    build_release(home, run_id="session")
    return home


@pytest.fixture(scope="session")
def recommender(release_home):
    from recs_serving import Recommender

    rec = Recommender(release_home, watch=False)
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def client(recommender):
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    app = create_app(recommender, admin_token="test-token")
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def fresh_home(tmp_path) -> Path:
    home = tmp_path / "home"
    build_release(home, run_id="first")
    return home
