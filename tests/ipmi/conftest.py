"""Fixtures of the IPMI tests: a lab per test module (module event loop), a fresh client per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bmd.ipmi import IPMIClient
from bmd.lab import LabSpec
from bmd.lab.ipmisim import IpmiSim, available
from tests.ipmi.helpers import FAST, Pool, running_lab


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[Pool]:
    """A lab of lab BMCs serving cipher suites 17 and 3; each test takes its own BMCs from it."""
    async with running_lab(LabSpec(count=40)) as lab:
        yield Pool(lab)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool3() -> AsyncIterator[Pool]:
    """Lab BMCs serving cipher suite 3 only (like stock pyghmi, but refusing 17 with status 0x11)."""
    async with running_lab(LabSpec(count=8, cipher_suites=(3,))) as lab:
        yield Pool(lab)


@pytest_asyncio.fixture(loop_scope="module")
async def client() -> AsyncIterator[IPMIClient]:
    c = IPMIClient(FAST)
    try:
        yield c
    finally:
        await c.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[IpmiSim]:
    """OpenIPMI's ipmi_sim on 127.0.0.1, a free port, state kept by its chassis_control hook."""
    if not available():
        pytest.skip("OpenIPMI's ipmi_sim is not installed")
    workdir: Path = tmp_path_factory.mktemp("ipmi_sim")
    async with IpmiSim(workdir) as server:
        yield server
