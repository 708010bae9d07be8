"""`autotune dashboard`: one local page over a storage (:mod:`autotune.dashboard`), read-only."""
from __future__ import annotations

import socket

import click

from autotune.compare import require_plotly
from autotune.errors import UsageError
from autotune.storage import DEFAULT_STORAGE, open_storage_readonly, redact_url

__all__ = ["commands"]


@click.command("dashboard")
@click.option("--storage", default=None, help=f"SQLAlchemy URL, opened read-only (default {DEFAULT_STORAGE})")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface, for others to see it)")
@click.option("--port", type=click.IntRange(1, 65535), default=8090, show_default=True)
@click.option("--optuna-port", type=click.IntRange(1, 65535), default=None,
              help="optuna-dashboard's port, for per-study detail  [default: --port + 1]")
def dashboard(storage: str | None, host: str, port: int, optuna_port: int | None) -> None:
    """A local web page over a storage: its studies with their winners and baselines, the compare view of the
    studies ticked, each study's trials, and optuna-dashboard for per-study detail. Read-only."""
    require_plotly()
    from aiohttp import web

    from autotune.dashboard import OPTUNA_DASHBOARD_MISSING, build_app, start_optuna_dashboard

    url = storage or DEFAULT_STORAGE
    store = open_storage_readonly(url)
    if optuna_port == port:
        raise UsageError(f"--optuna-port {optuna_port} is --port too: give the two different ports")
    # both ports are taken before the page is announced: a port in use is an error, not a line saying it serves
    page_sockets = _listen(host, port)
    try:
        optuna = start_optuna_dashboard(store, host, optuna_port or port + 1)
    except UsageError:
        for sock in page_sockets:
            sock.close()
        raise
    if optuna is None:
        click.echo(f"autotune: {OPTUNA_DASHBOARD_MISSING}", err=True)
    app = build_app(store, redact_url(url), optuna.port if optuna else None)
    shown = f"[{host}]" if ":" in host else host
    detail = f"; optuna-dashboard on http://{shown}:{optuna.port}" if optuna else ""
    click.echo(f"autotune dashboard on http://{shown}:{port} (storage {redact_url(url)}, read-only{detail}); "
               "Ctrl-C stops it", err=True)
    try:
        web.run_app(app, sock=page_sockets, print=None)
    finally:
        if optuna is not None:
            optuna.stop()


def _listen(host: str, port: int) -> list[socket.socket]:
    """The page's listening sockets on HOST:PORT, one per address HOST names (localhost: IPv4 and IPv6, as aiohttp
    binds them); a taken port or an address not on this machine is a usage error."""
    sockets: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, _, _, _, address in dict.fromkeys(found):
            sockets.append(socket.create_server(address, family=family))
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}): --port P") from None
    return sockets


commands = [dashboard]
