"""One lab process: serves many LabBmc on loopback UDP, driven by JSON lines on stdin.

Started by :class:`bmd.lab.fleet.Lab` as ``python -m bmd.lab.worker``. The first stdin line is the
configuration ``{"suites": [...], "bmcs": [{"name", "host", "port", "username", "password", "power",
"fault", "machine"}]}`` (``machine``: see :func:`bmd.lab.machines.make_machine`); the worker binds every
BMC and prints ``{"event": "ready", "bmcs": [{"name", "host", "port"}]}`` (or ``{"event": "error",
"message"}``). Then each stdin line is a request ``{"id", "op", ...}``
answered by one stdout line ``{"id", "ok", "result"|"error"}``. End of stdin (the parent closed it or
died) stops the worker.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import sys
import traceback
from typing import Any

from bmd.lab.bmc import LabBmc
from bmd.lab.faults import Fault
from bmd.lab.machines import make_machine

RECEIVE_BUFFER = 1 << 20


class BmcProtocol(asyncio.DatagramProtocol):
    def __init__(self, bmc: LabBmc) -> None:
        self.bmc = bmc
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.bmc.attach(transport, sock.getsockname()[1])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        bmc = self.bmc
        if bmc.is_down():
            bmc.stats["ignored"] += 1
            return
        delay = bmc.delay
        if delay > 0:
            bmc.stats["delayed"] += 1
            self.loop.call_later(delay, self.handle, data, addr)
        else:
            self.handle(data, addr)

    def handle(self, data: bytes, addr: Any) -> None:
        try:
            self.bmc.handle_datagram(data, addr)
        except Exception:  # noqa: BLE001 - one bad datagram must not stop the BMC
            self.bmc.stats["errors"] += 1
            traceback.print_exc(file=sys.stderr)


class Worker:
    def __init__(self) -> None:
        self.bmcs: dict[str, LabBmc] = {}
        self.transports: list[asyncio.BaseTransport] = []

    async def start(self, config: dict[str, Any]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        suites = tuple(config.get("suites", (17, 3)))
        bound = []
        for spec in config["bmcs"]:
            machine = make_machine(spec.get("machine"))
            if machine is not None:
                await machine.open()
            bmc = LabBmc(spec["name"], spec["username"], spec["password"], suites, bool(spec.get("power")), machine)
            if spec.get("fault"):
                bmc.set_fault(Fault.from_json(spec["fault"]))
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(BmcProtocol, bmc), local_addr=(spec["host"], spec["port"])
            )
            self.transports.append(transport)
            self.bmcs[bmc.name] = bmc
            bound.append({"name": bmc.name, "host": spec["host"], "port": bmc.port})
        return bound

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        for bmc in self.bmcs.values():
            if bmc.machine is not None:
                try:
                    bmc.machine.close()  # a VM is killed by PID
                except Exception:  # noqa: BLE001 - the other machines still get closed
                    traceback.print_exc(file=sys.stderr)

    def _select(self, msg: dict[str, Any]) -> list[LabBmc]:
        names = msg.get("names")
        if names is None:
            return list(self.bmcs.values())
        missing = [n for n in names if n not in self.bmcs]
        if missing:
            raise KeyError(f"unknown BMC(s) {missing}")
        return [self.bmcs[n] for n in names]

    def handle(self, msg: dict[str, Any]) -> Any:
        op = msg.get("op")
        bmcs = self._select(msg)
        if op == "state":
            return {b.name: b.snapshot() for b in bmcs}
        if op == "fault":
            fault = Fault.from_json(msg["fault"]) if msg.get("fault") else None
            for b in bmcs:
                b.set_fault(fault)
            return None
        if op == "flap_step":
            for b in bmcs:
                b.flap_steps += 1
            return None
        if op == "expire":
            for b in bmcs:
                b.expire_sessions()
            return None
        if op == "kg":
            for b in bmcs:
                b.kg = msg["kg"].encode() if msg.get("kg") else None
            return None
        if op == "demote":
            for b in bmcs:
                b.demote_sessions()
            return None
        if op == "set_state":
            for b in bmcs:
                if msg.get("power") is not None:
                    b.power = bool(msg["power"])
                if msg.get("boot") is not None:
                    boot = msg["boot"]
                    b.set_boot(int(boot["selector"]), bool(boot.get("persistent")), bool(boot.get("valid", True)))
            return None
        if op == "connect":
            for b in bmcs:
                if b.machine is not None:
                    b.machine.connect(msg.get("boot_url"), msg.get("bmd_address"))
            return None
        if op == "sol":
            for b in bmcs:
                if msg.get("drop_every") is not None:
                    b.sol_drop_every = int(msg["drop_every"])
                    if b.sol is not None:
                        b.sol.drop_every = b.sol_drop_every
                if msg.get("print"):
                    b.serial_print(str(msg["print"]))
            return None
        if op == "reset_stats":
            for b in bmcs:
                b.stats.clear()
            return None
        raise ValueError(f"unknown op {op!r}")


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = Worker()
    try:
        line = await reader.readline()
        if not line:
            return 0
        try:
            bound = await worker.start(json.loads(line))
        except OSError as err:
            _write({"event": "error", "message": str(err), "errno": err.errno})
            return 1
        except Exception as err:  # noqa: BLE001 - e.g. a machine that cannot be made: the parent says why
            _write({"event": "error", "message": f"{type(err).__name__}: {err}"})
            return 1
        _write({"event": "ready", "bmcs": bound})
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                reading = asyncio.ensure_future(reader.readline())
                done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if reading not in done:
                    reading.cancel()
                    return 0
                line = reading.result()
                if not line:
                    return 0
                msg = json.loads(line)
                try:
                    _write({"id": msg.get("id"), "ok": True, "result": worker.handle(msg)})
                except Exception as err:  # noqa: BLE001 - the error goes back to the caller
                    _write({"id": msg.get("id"), "ok": False, "error": f"{type(err).__name__}: {err}"})
        finally:
            stopping.cancel()
    finally:
        worker.close()


def main() -> None:
    from bmd.logs import configure_logging

    configure_logging("json", "info", stream=sys.stderr)  # stdout is the control channel
    sys.exit(asyncio.run(serve()))


if __name__ == "__main__":
    main()
