"""`python -m services.memory`: run the memory service until SIGINT/SIGTERM."""

from __future__ import annotations

from corral import event_loop
from corral.config import load_settings
from corral.logs import configure_logging
from corral.tracing import configure_tracing, shutdown
from services.memory.server import serve


def main() -> None:
    settings = load_settings()
    configure_logging("memory", settings.log_level, settings.log_json)
    configure_tracing("memory", settings)
    try:
        event_loop.run(serve(settings), settings.event_loop)
    finally:
        shutdown()


if __name__ == "__main__":
    main()
