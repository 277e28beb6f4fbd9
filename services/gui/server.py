"""The gui service's process: GuiService on a unix socket, inside the sandbox.

It runs on the sandbox's own interpreter (sandbox/runtime/.venv, /app/.venv inside), which has
grpcio, protobuf, python-xlib and Pillow but not the rest of Corral's dependencies, so this
module imports only those, the generated stubs and corral.grpc_server (whose interceptor maps
corral.errors to status codes here too; it does without structlog).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

from corral.grpc_server import add_reflection_and_health, mark_serving, new_server
from corral.v1 import gui_pb2, gui_pb2_grpc
from services.gui.display import Screen
from services.gui.input import Input
from services.gui.servicer import GuiServicer

SERVICE_NAME = gui_pb2.DESCRIPTOR.services_by_name["GuiService"].full_name
log = logging.getLogger("corral.gui")


async def serve(socket_path: str, display_name: str) -> None:
    screen = Screen(display_name)
    server = new_server(authorize=False)  # a unix socket in the run directory, only its executor reaches it
    gui_pb2_grpc.add_GuiServiceServicer_to_server(GuiServicer(screen, Input(display_name)), server)
    health_servicer = add_reflection_and_health(server, [SERVICE_NAME])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    await mark_serving(health_servicer, [SERVICE_NAME])
    log.info("gui service listening on %s for display %s", socket_path, display_name)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(2)
    screen.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m services.gui")
    parser.add_argument("--socket", required=True, help="unix socket path to listen on")
    parser.add_argument("--display", default=os.environ.get("DISPLAY", ":0"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gui %(levelname)s %(message)s")
    asyncio.run(serve(args.socket, args.display))
