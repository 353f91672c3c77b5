"""Lifecycle: database, bus, driver, periodic loops and API started in one place and stopped in one place.

``serve(settings, stop)`` runs until ``stop`` is set (signals set it in production, tests set it
directly), then stops everything within ``service.graceful_timeout`` seconds: the API stops accepting,
loops are cancelled and awaited, drivers closed, the database disposed. Under ``bmd serve`` a signal also
arms a hard deadline (:func:`exit_after`): whatever still runs then, the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from bmd.api.app import create_app
from bmd.bus import Bus
from bmd.config import Settings
from bmd.console_log import ConsoleLogs
from bmd.console_recorder import ConsoleRecorder
from bmd.context import AppContext
from bmd.db.engine import make_engine, make_sessionmaker
from bmd.db.migrate import check_schema
from bmd.db.reservations import drop_own
from bmd.drivers.baremetal import BareMetalDriver
from bmd.drivers.dhcp import build_provider
from bmd.drivers.factory import DriverFactory
from bmd.errors import DatabaseError
from bmd.health import DB_PROBE, DatabaseProbe
from bmd.logs import NodeNames, use_node_names
from bmd.node_events import NodeEvents, read_views, remember_names
from bmd.pg_bus import NodeListener, listen_dsn
from bmd.provision.conductor import Conductor
from bmd.provision.recovery import DeployTimeouts, recover
from bmd.provision.reservations import Reservations
from bmd.provision.steps import Provisioner
from bmd.scheduler.manager import HostManager, SchedulerRefresh
from bmd.secrets import load_api_token, load_secret_box
from bmd.systemd import Notifier
from bmd.tasks.adoption import NodeAdoption
from bmd.tasks.heartbeat import ServiceHeartbeat, register_service
from bmd.tasks.node_ownership import NodeOwnership
from bmd.tasks.report_driver_status import TOPIC, ReportDriverStatus
from bmd.tasks.runner import Runner
from bmd.tasks.steps import StepFailureCounter
from bmd.tasks.sync_power_states import SyncPowerStates
from bmd.tasks.update_available_resource import UpdateAvailableResource
from bmd.tls import server_context

if TYPE_CHECKING:
    from bmd.lab import Lab

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    scheme: str = "http"  # https when api.tls_cert is set

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def api_url(ctx: AppContext) -> str | None:
    """Where this service's API answers the others (``services.api_url``): api.public_url, or the bound address."""
    return ctx.settings.api.public_url or ctx.conductor.p.public_url or None


def build_runner(ctx: AppContext, probe: DatabaseProbe) -> None:
    """Every periodic loop; the database probe has its own unpooled engine (a pool saturated by requests
    is load, not a dead database) and thread, which the caller made and closes."""
    s = ctx.settings
    ctx.runner.add(probe)
    ctx.runner.add(
        ServiceHeartbeat(ctx.sessionmaker, s.service.host, s.service.heartbeat_interval, s.service.groups, api_url(ctx))
    )
    if s.service.ownership == "ring":
        ctx.runner.add(NodeOwnership(ctx.sessionmaker, s.service.service_down_time, s.service.heartbeat_interval))
        ctx.runner.add(NodeAdoption(ctx.conductor, s.service.heartbeat_interval))
    failures = ctx.step_failures
    ctx.runner.add(ReportDriverStatus(ctx.driver, ctx.bus, s.service.my_ip, s.tasks.host_state_interval, failures))
    ctx.runner.add(UpdateAvailableResource(ctx.driver, ctx.sessionmaker, s.tasks.update_resources_interval, failures))
    ctx.runner.add(SyncPowerStates(ctx.sessionmaker, ctx.power, s.service.host, s.tasks, failures=failures))
    ctx.runner.add(DeployTimeouts(ctx.conductor, s.deploy.deploy_timeout_check_interval))
    ctx.runner.add(SchedulerRefresh(ctx.scheduler, s.tasks.host_state_interval))
    for task in ctx.dhcp.periodic():  # the DHCP provider's own loops (dnsmasq: log rotation)
        ctx.runner.add(task)


@contextlib.asynccontextmanager
async def open_context(settings: Settings, *, public_url: str = "") -> AsyncIterator[AppContext]:
    """Build the service's parts (checking the schema first), each given everything it needs; on exit close
    what was built here and dispose the database. ``public_url`` is how deploy agents reach this service
    when ``api.public_url`` is not set (the address of the socket the API serves on)."""
    engine = make_engine(settings.database)
    try:
        try:
            await check_schema(engine)
        except DatabaseError:
            raise
        except Exception as err:
            raise DatabaseError(f"database {engine.url.render_as_string()} is unreachable: {err}") from err
        bus = Bus()
        names = NodeNames()  # node id -> uuid and name in every log event that names a node
        shared = settings.bus.backend == "postgresql"  # and NOTIFY the other services of this database
        node_events = NodeEvents(bus, names, notify_from=settings.service.host if shared else None)
        sessionmaker = make_sessionmaker(engine, node_events)  # bm_nodes writes publish on "nodes"
        async with sessionmaker() as session:
            remember_names(names, await read_views(session))
        secret_box = load_secret_box(settings.secrets.key_file)
        drivers = DriverFactory(settings, secret_box)
        power = drivers.power
        failures = StepFailureCounter()
        dhcp = build_provider(settings, public_url)
        console_logs = ConsoleLogs(Path(settings.service.state_dir) / "console")
        recorder = ConsoleRecorder(console_logs, drivers.console, bus, settings)
        driver = BareMetalDriver(settings, sessionmaker, drivers)
        ctx = AppContext(
            settings=settings,
            engine=engine,
            sessionmaker=sessionmaker,
            bus=bus,
            runner=Runner(timeout_factor=settings.tasks.pass_timeout_factor, jitter=settings.tasks.jitter),
            secret_box=secret_box,
            api_token=load_api_token(settings.api.token_file),
            driver=driver,
            power=power,
            conductor=Conductor(
                Provisioner(
                    settings, sessionmaker, drivers, public_url=public_url, console_logs=console_logs, dhcp=dhcp
                ),
                recorder,
                # several services on one database: each node job holds the node's reservation
                Reservations(sessionmaker, settings.service.host, settings.service.service_down_time)
                if settings.service.ownership == "ring"
                else None,
            ),
            scheduler=HostManager(settings, sessionmaker, bus, driver, failures),
            console_logs=console_logs,
            step_failures=failures,
            dhcp=dhcp,
            # the other services' node changes, on this service's "nodes" topic
            node_listener=NodeListener(
                listen_dsn(settings.database.url), settings.service.host, sessionmaker, node_events
            )
            if shared
            else None,
        )
        async with sessionmaker.begin() as session:
            await drop_own(session, settings.service.host)  # left by an earlier run of ours, killed mid-action
            await register_service(
                session, settings.service.host, settings.service.groups, settings.api.public_url or public_url or None
            )
        probe_engine = make_engine(settings.database, pooled=False)
        probe = DatabaseProbe(probe_engine)
        build_runner(ctx, probe)
        use_node_names(names)
        try:
            if ctx.node_listener is not None:
                await ctx.node_listener.start()
            await dhcp.start()
            yield ctx
        finally:
            use_node_names(None)
            if ctx.node_listener is not None:
                await ctx.node_listener.close()
            await ctx.conductor.close()
            await recorder.close()
            await dhcp.stop()
            await drivers.close()
            bus.close()
            await asyncio.to_thread(probe.close)
            await probe_engine.dispose()
    finally:
        await engine.dispose()


WARM_PASSES = ("report_driver_status", "scheduler_refresh")


async def warm_scheduler(ctx: AppContext) -> None:
    """The passes the scheduler needs before the service says it is ready, then one database probe, so a
    ready bmd schedules at once and its /healthz starts from a fresh probe. Not
    ``update_available_resource``: the scheduler never reads its ``compute_nodes`` rows, and its first pass
    (about 4 s at 100,000 nodes) runs as soon as the loops start."""
    await ctx.runner.run_pass("report_driver_status")
    ctx.scheduler.take_capabilities(ctx.bus.latest(TOPIC) or [])
    await ctx.runner.run_pass("scheduler_refresh")
    await ctx.scheduler.prepare_flavors()
    await ctx.runner.run_pass(DB_PROBE)


async def _start(ctx: AppContext) -> dict[str, float | None]:
    """Recovery, then the first capability passes; how long each took (for ``service_started``)."""
    mono = time.perf_counter()
    await recover(ctx.conductor)
    recovery = time.perf_counter() - mono
    await warm_scheduler(ctx)
    took = {"recovery_s": round(recovery, 3), "warm_up_s": round(time.perf_counter() - mono - recovery, 3)}
    records = ctx.runner.records
    return took | {f"{name}_s": records[name].last_duration for name in WARM_PASSES}


async def _watchdog(notifier: Notifier, stop: asyncio.Event) -> None:
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while not stop.is_set():
        notifier.watchdog()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stop.wait()


async def _run_until(ctx: AppContext, stop: asyncio.Event, notifier: Notifier) -> None:
    """Run the loops and the watchdog until ``stop``; then cancel and await them."""
    loops_stop = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        loops = group.create_task(ctx.runner.run(loops_stop), name="periodic-runner")
        group.create_task(_watchdog(notifier, loops_stop), name="watchdog")
        bus = group.create_task(ctx.scheduler.consume_bus(), name="scheduler-bus")
        nodes = group.create_task(ctx.scheduler.follow_nodes(), name="scheduler-nodes")
        await stop.wait()
        log.info("service_stopping")
        ctx.mark_stopping()  # /readyz 503 while the API drains
        notifier.stopping()
        loops_stop.set()
        loops.cancel()
        bus.cancel()
        nodes.cancel()


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[AppContext, Endpoint], Awaitable[None] | None] | None = None,
    notifier: Notifier | None = None,
) -> None:
    notifier = notifier or Notifier()
    tls = server_context(settings.api)  # before the socket: a bad certificate stops start-up naming the key
    scheme = settings.api.scheme
    # The socket first: its port is in the URL the deploy agents are given, so every part is built knowing it.
    sock = bind_api_socket(settings.api.host, settings.api.port)
    port = sock.getsockname()[1]
    endpoint = Endpoint(settings.api.host, port, scheme)
    try:
        async with open_context(settings, public_url=f"{scheme}://{settings.service.my_ip}:{port}") as ctx:
            web_runner = web.AppRunner(
                create_app(ctx),
                access_log=None,
                shutdown_timeout=settings.service.graceful_timeout / 2,
                keepalive_timeout=settings.api.keepalive_timeout,
            )
            await web_runner.setup()
            try:
                await web.SockSite(web_runner, sock, ssl_context=tls).start()
                # /livez answers from here; /readyz and /healthz say "starting" until the service is ready
                log.info("api_listening", host=settings.service.host, api=endpoint.url)
                took = await _start(ctx)
                ctx.mark_ready()
                log.info("service_started", host=settings.service.host, api=endpoint.url, **took)
                notifier.ready()
                if on_ready is not None:
                    result = on_ready(ctx, endpoint)
                    if inspect.isawaitable(result):
                        await result
                await _run_until(ctx, stop, notifier)
            finally:
                try:
                    async with asyncio.timeout(settings.service.graceful_timeout):
                        await web_runner.cleanup()
                except TimeoutError:
                    log.warning("api_stop_timed_out", timeout=settings.service.graceful_timeout)
    finally:
        sock.close()
    log.info("service_stopped")


def bind_api_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one), SO_REUSEADDR as aiohttp's sites set."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    return socket.create_server((host, port), family=family, backlog=128)


def install_signal_handlers(stop: asyncio.Event, deadline: float) -> None:
    """SIGTERM and SIGINT set ``stop`` and arm the stop's hard deadline (:func:`exit_after`)."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            stop.set()
            exit_after(deadline)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def exit_after(seconds: float) -> threading.Thread:
    """End the process ``seconds`` from now unless it has ended by then (``stop_timed_out``, exit 1). The
    orderly stop cancels every pass, but a step that never yields the event loop or a close that hangs would
    hold the process past ``service.graceful_timeout``; this thread keeps that promise."""

    def expire() -> None:
        time.sleep(seconds)
        log.error("stop_timed_out", timeout=seconds)
        os._exit(1)  # not sys.exit: that only ends this thread

    # a daemon thread: a process that stopped in time exits without waiting for it
    timer = threading.Thread(target=expire, name="stop-deadline", daemon=True)
    timer.start()
    return timer


async def main(
    settings: Settings, lab_count: int = 0, machines: str = "sim", boot_mode: str = "bios", memory_mb: int = 256
) -> None:
    """``bmd serve``; with ``lab_count`` a lab of that many BMCs runs beside it (see :func:`serve_lab`)."""
    stop = asyncio.Event()
    install_signal_handlers(stop, settings.service.graceful_timeout)
    if not lab_count:
        await serve(settings, stop)
        return
    await serve_lab(settings, stop, count=lab_count, machines=machines, boot_mode=boot_mode, memory_mb=memory_mb)


LabReady = Callable[["Lab", AppContext, Endpoint], Awaitable[None] | None]


async def serve_lab(
    settings: Settings,
    stop: asyncio.Event,
    *,
    count: int,
    machines: str = "sim",
    boot_mode: str = "bios",
    memory_mb: int = 256,
    on_ready: LabReady | None = None,
) -> None:
    """``bmd serve --lab N``: a lab of ``count`` BMCs beside the daemon, enrolled, each with a machine behind
    it (``machines``: sim | qemu | none) that a deploy really boots; the demo image, placeholder deploy files
    when no ramdisk was built, PXE IPs and the flavor ``lab`` are set up (see :mod:`bmd.lab.quickstart`).
    ``on_ready(lab, ctx, endpoint)`` runs once all that is done (tests)."""
    from bmd.lab import Lab, LabSpec
    from bmd.lab.enroll import enroll_inventory
    from bmd.lab.quickstart import lab_dir, lab_settings, prepare_bmd

    if machines != "none":
        settings = await asyncio.to_thread(lab_settings, settings, machines)
    spec = LabSpec(
        count=count,
        machines=machines,  # type: ignore[arg-type]  # checked by LabSpec
        boot_mode=boot_mode,  # type: ignore[arg-type]
        memory_mb=memory_mb,
        machine_dir=lab_dir(settings) / "machines" if machines == "qemu" else None,
    )
    async with Lab(spec) as lab:

        async def enroll(ctx: AppContext, endpoint: Endpoint) -> None:
            host = "127.0.0.1" if endpoint.host in ("0.0.0.0", "::", "") else endpoint.host
            base = settings.api.public_url or f"{endpoint.scheme}://{settings.service.my_ip}:{endpoint.port}"
            await lab.connect(boot_url=f"{base.rstrip('/')}/images", bmd_address=f"{host}:{endpoint.port}")
            ctx.extras["lab"] = {  # /healthz shows it (bmd status)
                "bmcs": len(lab.bmcs),
                "machines": machines,
                "boot_mode": boot_mode,
                "first_bmc": lab.bmcs[0].address if lab.bmcs else None,
                "last_bmc": lab.bmcs[-1].address if lab.bmcs else None,
            }
            added: dict[str, int] = {}
            if machines != "none":  # PXE addresses first: with inspection.on_enroll the nodes boot at once
                added = await prepare_bmd(endpoint.url, ctx.api_token, len(lab.bmcs))
            # the lab's own nodes: its BMCs listen on fresh ports at every start, so their addresses move
            result = await enroll_inventory(endpoint.url, ctx.api_token, lab.inventory(), replace=True)
            log.info("lab_enrolled", bmcs=len(lab.bmcs), machines=machines, **result)
            if machines != "none":
                log.info("lab_ready", flavor="lab", demo_image=str(lab_dir(settings) / "images" / "demo.img"), **added)
            if on_ready is not None:
                called = on_ready(lab, ctx, endpoint)
                if inspect.isawaitable(called):
                    await called

        await serve(settings, stop, on_ready=enroll)
