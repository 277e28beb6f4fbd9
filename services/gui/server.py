"""The gui service's process: GuiService on a unix socket, inside the sandbox.

It runs on the sandbox's own interpreter (sandbox/runtime/.venv, /app/.venv inside), which has
grpcio, protobuf, python-xlib and Pillow but not the rest of Corral's dependencies, so this
module imports only those and the generated stubs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from corral.v1 import gui_pb2, gui_pb2_grpc
from services.gui.display import Screen
from services.gui.input import Input
from services.gui.servicer import GuiServicer

SERVICE_NAME = gui_pb2.DESCRIPTOR.services_by_name["GuiService"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
log = logging.getLogger("corral.gui")


async def serve(socket_path: str, display_name: str) -> None:
    screen = Screen(display_name)
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    gui_pb2_grpc.add_GuiServiceServicer_to_server(GuiServicer(screen, Input(display_name)), server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
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
