"""python -m services.scheduler"""

from corral import event_loop
from corral.config import load_settings
from corral.logs import configure_logging
from corral.tracing import configure_tracing, shutdown

from .server import serve

settings = load_settings()
configure_logging("scheduler", settings.log_level, settings.log_json)
configure_tracing("scheduler", settings)
try:
    event_loop.run(serve(settings), settings.event_loop)
finally:
    shutdown()
