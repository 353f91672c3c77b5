"""Serial over LAN throughput on loopback: bmd's SOL client against a lab BMC (cipher suite 17).

    .venv/bin/python bench/sol.py [--bytes 50000] [--drop-every 0]

Machine → console: the lab machine prints N bytes, the client reads them all. Console → machine: the
client writes N bytes, the lab records them. One packet in flight each way (the protocol's rule), so the
figures are round trips per 200-character packet, not bandwidth. Prints bytes/s each way. Keep
--bytes under the lab BMC's 64 KiB buffer (it drops the oldest characters beyond, as a BMC does).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bmd.ipmi import BMCTarget, IPMIClient, SolSettings
from bmd.lab import Lab, LabSpec


async def main(size: int, drop_every: int) -> None:
    async with Lab(LabSpec(count=1)) as lab:
        b = lab.bmcs[0]
        await lab.sol([b.name], drop_every=drop_every)
        client = IPMIClient()
        try:
            async with client.sol(
                BMCTarget(b.host, b.port, b.username, b.password), settings=SolSettings(ack_timeout=0.2)
            ) as console:
                line = "x" * 99 + "\n"
                text = line * (size // len(line))
                started = time.perf_counter()
                await lab.sol([b.name], print_text=text)
                got = 0
                want = len(text.replace("\n", "\r\n"))
                async for chunk in console.read():
                    got += len(chunk)
                    if got >= want:
                        break
                down = time.perf_counter() - started
                data = b"y" * size
                started = time.perf_counter()
                await console.write(data)
                up = time.perf_counter() - started
                print(f"machine -> console: {got} bytes in {down:.2f} s = {got / down / 1000:.0f} kB/s")
                print(f"console -> machine: {size} bytes in {up:.2f} s = {size / up / 1000:.0f} kB/s")
                stats = (await lab.state(b.name))["sol"]["stats"]
                print(f"client retransmissions: {console.retransmissions}; lab BMC: {stats}")
        finally:
            await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=50_000)
    parser.add_argument("--drop-every", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.bytes, args.drop_every))
