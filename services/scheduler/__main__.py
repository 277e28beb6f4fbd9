"""python -m services.scheduler"""

import asyncio

from corral.config import load_settings
from corral.logs import configure_logging

from .server import serve

settings = load_settings()
configure_logging("scheduler", settings.log_level, settings.log_json)
asyncio.run(serve(settings))
