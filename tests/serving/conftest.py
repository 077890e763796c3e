import pytest

from serving_support import ServerProcess, build_fixture, server_env


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A fresh store, two model versions and a running server (real socket) per test module."""
    root = tmp_path_factory.mktemp("serving")
    fx = build_fixture(root)
    server = ServerProcess(server_env(fx), log_path=root / "server.log").start()
    fx["server"] = server
    fx["url"] = server.url
    fx["root"] = root
    yield fx
    server.stop()
