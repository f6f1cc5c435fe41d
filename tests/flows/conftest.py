import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_api(tmp_path_factory):
    """One temporary Prefect API for the whole flow test session (~20 s to start)."""
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
