import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_api(tmp_path_factory):
    """One temporary Prefect API for the whole flow test session (~20 s to start)."""
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def no_meta_endpoint(monkeypatch):
    """Flow tests choose their meta-LLM themselves: a meta endpoint set in the environment of
    the machine running them must not turn the rule-based reviewer and curator into a served one."""
    monkeypatch.delenv("AUTOMEM_META_BASE_URL", raising=False)
    monkeypatch.delenv("AUTOMEM_META_MODEL", raising=False)
