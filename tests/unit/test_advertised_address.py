"""The address an executor registers with: the one the scheduler and the gateway dial back."""

from __future__ import annotations

import pytest

from corral.config import Settings
from services.executor.server import advertised_address


def test_the_configured_address_is_advertised_as_given() -> None:
    settings = Settings(executor_advertise_address="10.215.0.11:50053")
    assert advertised_address(settings, "0.0.0.0", 50053) == "10.215.0.11:50053"
    assert advertised_address(Settings(), "10.215.0.12", 50053) == "10.215.0.12:50053"


@pytest.mark.parametrize("bad", ["10.215.0.11", "executor-7:", ":50053", "host:port"])
def test_an_address_without_host_and_port_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(SystemExit, match=f"CORRAL_EXECUTOR_ADVERTISE_ADDRESS '{bad}' is not host:port"):
        advertised_address(Settings(executor_advertise_address=bad), "127.0.0.1", 50053)
