"""The serial line of a lab machine, as its BMC's Serial-over-LAN sees it.

A line has listeners (called with every chunk the machine prints), ``write`` (typing into the machine)
and ``send_break``. A QEMU machine's line is its :class:`~bmd.lab.console.ConsoleRelay` (the VM's real
serial port); a simulated machine's is a :class:`SimSerial`: it prints a banner and what the simulated
firmware and agent do, echoes what is typed and answers a line with a prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Listener = Callable[[bytes], None]


class SerialLine(Protocol):
    def listen(self, listener: Listener) -> None: ...

    def unlisten(self, listener: Listener) -> None: ...

    def write(self, data: bytes) -> None: ...

    def send_break(self) -> None: ...


class SimSerial:
    """A simulated serial console: text the machine prints, an echo of typed characters, a prompt."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.listeners: list[Listener] = []
        self.typed = bytearray()  # everything typed into the machine (tests read it)
        self.breaks = 0

    def listen(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def unlisten(self, listener: Listener) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)

    def print(self, text: str) -> None:
        """The machine prints a line."""
        self._emit(text.encode(errors="replace").replace(b"\n", b"\r\n"))

    def _emit(self, data: bytes) -> None:
        for listener in list(self.listeners):
            listener(data)

    def prompt(self) -> bytes:
        return f"{self.name} login: ".encode()

    def write(self, data: bytes) -> None:
        self.typed += data
        echo = data.replace(b"\r", b"\r\n")
        if b"\r" in data:
            echo += self.prompt()
        self._emit(echo)

    def send_break(self) -> None:
        self.breaks += 1
        self.print(f"[{self.name}: break received]\n")
