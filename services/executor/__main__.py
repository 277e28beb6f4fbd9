"""python -m services.executor"""

from __future__ import annotations

import asyncio

from corral.config import load_settings
from corral.logs import configure_logging
from corral.tracing import configure_tracing, shutdown
from services.executor.server import serve


def main() -> None:
    settings = load_settings()
    configure_logging("executor", settings.log_level, settings.log_json)
    configure_tracing("executor", settings)
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown()


if __name__ == "__main__":
    main()
