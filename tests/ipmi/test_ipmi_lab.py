"""The native client against lab BMCs (pyghmi's server, fixed): every command and every fault."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from bmd.errors import BMCAuthError, BMCTimeout
from bmd.ipmi import BootTarget, ChassisControl, CompletionCodeError, IPMIClient
from bmd.lab import Fault
from tests.ipmi.helpers import FAST, Pool, eventually, ipmi_client, target

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_every_command(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    t = target(b)
    dev = await client.get_device_id(t)
    assert (dev.device_id, dev.ipmi_version, dev.firmware_version) == (0x20, "2.0", "1.00")
    assert await client.get_power_state(t) is False
    await client.chassis_control(t, ChassisControl.POWER_ON)
    assert await client.get_power_state(t) is True
    assert (await pool.lab.state(b.name))["power"] is True
    await client.chassis_control(t, ChassisControl.POWER_CYCLE)
    await client.chassis_control(t, ChassisControl.HARD_RESET)
    await client.chassis_control(t, ChassisControl.SOFT_OFF)
    assert await client.get_power_state(t) is False
    await client.chassis_control(t, ChassisControl.POWER_ON)
    await client.chassis_control(t, ChassisControl.POWER_OFF)
    state = await pool.lab.state(b.name)
    assert state["power"] is False
    expected = {"power_on": 2, "power_cycle": 1, "power_reset": 1, "soft_off": 1, "power_off": 1}
    assert {k: state["stats"][k] for k in expected} == expected
    for device, persistent in [(BootTarget.PXE, False), (BootTarget.DISK, True), (BootTarget.BIOS, False)]:
        await client.set_boot_device(t, device, persistent=persistent)
        flags = await client.get_boot_flags(t)
        assert (flags.target, flags.persistent, flags.valid) == (device, persistent, True)
    await client.set_boot_device(t, BootTarget.NONE)
    assert (await client.get_boot_flags(t)).valid is False
    assert (await pool.lab.state(b.name))["stats"]["sessions"] == 1  # one session for all of it
    await client.close_session(t)
    assert (await pool.lab.state(b.name))["stats"]["closed"] == 1


async def test_completion_codes_are_errors(pool: Pool, client: IPMIClient) -> None:
    t = target(pool.one())
    with pytest.raises(CompletionCodeError) as info:
        await client.chassis_control(t, ChassisControl.HARD_RESET)  # the lab refuses a reset when off
    assert info.value.completion_code == 0xD5
    response = await client.call(t, 0x06, 0x99)  # no such command: completion code, no exception
    assert response.code == 0xC1


async def test_next_boot_override_is_consumed_and_persistent_one_kept(pool: Pool, client: IPMIClient) -> None:
    t = target(pool.one())
    await client.set_boot_device(t, BootTarget.PXE, persistent=False)
    await client.chassis_control(t, ChassisControl.POWER_ON)
    assert (await client.get_boot_flags(t)).valid is False  # the firmware took it
    await client.set_boot_device(t, BootTarget.PXE, persistent=True)
    await client.chassis_control(t, ChassisControl.POWER_CYCLE)
    flags = await client.get_boot_flags(t)
    assert (flags.target, flags.persistent, flags.valid) == (BootTarget.PXE, True, True)


@pytest.mark.parametrize("suites", [(17, 3), (17,), (3,)])
async def test_cipher_suites_against_a_17_capable_bmc(pool: Pool, suites: tuple[int, ...]) -> None:
    b = pool.one()
    async with ipmi_client(dataclasses.replace(FAST, cipher_suites=suites)) as c:
        await c.chassis_control(target(b), ChassisControl.POWER_ON)
        assert await c.get_power_state(target(b)) is True
        assert c.stats.suite_fallbacks == 0
    assert (await pool.lab.state(b.name))["stats"]["open_session"] == 1


async def test_suite_17_refused_falls_back_to_3(pool3: Pool, client: IPMIClient) -> None:
    b = pool3.one()
    await client.chassis_control(target(b), ChassisControl.POWER_ON)
    assert await client.get_power_state(target(b)) is True
    assert client.stats.suite_fallbacks == 1
    stats = (await pool3.lab.state(b.name))["stats"]
    assert (stats["suite_refused"], stats["open_session"], stats["sessions"]) == (1, 2, 1)


async def test_only_17_against_a_suite_3_bmc_is_a_clear_error(pool3: Pool) -> None:
    async with ipmi_client(dataclasses.replace(FAST, cipher_suites=(17,))) as c:
        with pytest.raises(Exception, match="accepts none of the cipher suites"):
            await c.get_power_state(target(pool3.one()))


async def test_sessions_are_cached_and_reopened_after_expiry(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    t = target(b)
    for _ in range(5):
        await client.get_power_state(t)
    assert (client.stats.sessions_opened, client.stats.sessions_reused) == (1, 4)
    await pool.lab.expire_sessions([b.name])  # as after a BMC reset: the old session ID is unknown
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await client.get_power_state(t) is False
    assert loop.time() - started < FAST.timeout
    assert (client.stats.sessions_opened, client.stats.sessions_expired) == (2, 1)
    assert (await pool.lab.state(b.name))["stats"]["rakp1"] == 2


async def test_lost_privilege_reopens_the_session(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    t = target(b)
    await client.chassis_control(t, ChassisControl.POWER_ON)
    await pool.lab.demote_sessions([b.name])
    await client.chassis_control(t, ChassisControl.POWER_OFF)  # 0xD4 on the old session, then a new one
    assert (client.stats.sessions_opened, client.stats.sessions_expired) == (2, 1)
    state = await pool.lab.state(b.name)
    assert state["power"] is False and state["stats"]["insufficient_privilege"] == 1


async def test_idle_sessions_are_closed_and_reopened(pool: Pool) -> None:
    b = pool.one()
    async with ipmi_client(dataclasses.replace(FAST, session_idle_timeout=0.0)) as c:
        await c.get_power_state(target(b))
        await eventually(lambda: c.get_power_state(target(b)), lambda _: c.stats.sessions_opened == 2)
    stats = (await pool.lab.state(b.name))["stats"]
    assert stats["closed"] >= 2  # the idle session got a Close Session; close() logged the last one out


async def test_dead_bmc_times_out_within_the_timeout(pool: Pool) -> None:
    b = pool.one()
    await pool.lab.set_fault([b.name], Fault("dead"))
    settings = dataclasses.replace(FAST, timeout=0.8)
    async with ipmi_client(settings) as c:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BMCTimeout):
            await c.get_power_state(target(b))
        assert loop.time() - started < settings.timeout + 0.25
    assert (await pool.lab.state(b.name))["stats"]["ignored"] >= 2  # it did retransmit


async def test_bad_password_is_an_auth_error_without_retry(pool: Pool) -> None:
    b = pool.one()
    await pool.lab.set_fault([b.name], Fault("badpass"))  # the BMC's password is no longer the inventory's
    async with ipmi_client() as c:
        for attempt in (1, 2):
            with pytest.raises(BMCAuthError, match="RAKP 2"):
                await c.get_power_state(target(b))
            assert (await pool.lab.state(b.name))["stats"]["rakp1"] == attempt  # exactly one try per call
        assert c.stats.retransmissions == 0


async def test_bmc_key_kg(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    await pool.lab.set_kg([b.name], "a-bmc-key")
    with pytest.raises(BMCAuthError, match="RAKP 4"):
        await client.get_power_state(target(b))  # right password, no Kg: the session keys differ
    t = dataclasses.replace(target(b), kg=b"a-bmc-key")
    await client.chassis_control(t, ChassisControl.POWER_ON)
    assert await client.get_power_state(t) is True


async def test_wrong_password_and_unknown_user(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    with pytest.raises(BMCAuthError):
        await client.get_power_state(target(b, password="not-the-password"))
    with pytest.raises(BMCAuthError, match="unauthorized name"):
        await client.get_power_state(target(b, username="nobody"))
    assert await client.get_power_state(target(b)) is False  # the good credentials still work
    assert (await pool.lab.state(b.name))["stats"]["rakp1"] == 3


async def test_slow_bmc_from_the_start(pool: Pool) -> None:
    """Every handshake message retransmitted: the BMC answers duplicates with its first answer."""
    b = pool.one()
    await pool.lab.set_fault([b.name], Fault("slow", 0.3))
    async with ipmi_client(dataclasses.replace(FAST, timeout=5.0, attempt_timeout=0.12)) as c:
        await c.chassis_control(target(b), ChassisControl.POWER_ON)
        assert await c.get_power_state(target(b)) is True
        assert c.stats.retransmissions > 0
    stats = (await pool.lab.state(b.name))["stats"]
    assert stats["replayed"] > 0 and stats["power_on"] == 1


async def test_retransmitted_command_runs_once(pool: Pool) -> None:
    b = pool.one()
    async with ipmi_client(dataclasses.replace(FAST, timeout=5.0, attempt_timeout=0.12)) as c:
        assert await c.get_power_state(target(b)) is False
        await pool.lab.set_fault([b.name], Fault("slow", 0.2))  # slower than one attempt, not than two
        await c.chassis_control(target(b), ChassisControl.POWER_ON)
        assert await c.get_power_state(target(b)) is True
        await c.set_boot_device(target(b), BootTarget.DISK, persistent=True)
        assert (await c.get_boot_flags(target(b))).target == BootTarget.DISK
        assert c.stats.retransmissions > 0
        assert c.stats.stale_responses > 0  # answers to retransmissions, not taken for later requests
        assert c.stats.sessions_opened == 1
    stats = (await pool.lab.state(b.name))["stats"]
    assert stats["power_on"] == 1  # same rq_seq: the BMC answered the retransmission, did not re-run it
    assert stats["duplicates"] > 0


async def test_slower_than_the_timeout_is_a_timeout(pool: Pool) -> None:
    b = pool.one()
    await pool.lab.set_fault([b.name], Fault("slow", 1.0))
    async with ipmi_client(dataclasses.replace(FAST, timeout=0.5)) as c:
        with pytest.raises(BMCTimeout):
            await c.get_power_state(target(b))


async def test_flapping_bmc_errors_then_recovers(pool: Pool) -> None:
    b = pool.one()
    t = target(b)
    async with ipmi_client(dataclasses.replace(FAST, timeout=0.6)) as c:
        assert await c.get_power_state(t) is False  # a cached session from before the flapping
        await pool.lab.set_fault([b.name], Fault("flap", 0))  # stepped by hand, starts dead
        with pytest.raises(BMCTimeout):
            await c.get_power_state(t)
        await pool.lab.flap_step([b.name])
        assert await c.get_power_state(t) is False
        await pool.lab.flap_step([b.name])
        with pytest.raises(BMCTimeout):
            await c.get_power_state(t)
        await pool.lab.flap_step([b.name])
        assert await c.get_power_state(t) is False


async def test_flapping_on_a_period(pool: Pool) -> None:
    b = pool.one()
    await pool.lab.set_fault([b.name], Fault("flap", 0.6))
    outcomes: list[str] = []

    async def probe() -> str:
        try:
            await c.get_power_state(target(b))
            outcome = "ok"
        except BMCTimeout:
            outcome = "timeout"
        outcomes.append(outcome)
        return outcome

    async with ipmi_client(dataclasses.replace(FAST, timeout=0.3, attempt_timeout=0.1)) as c:
        await eventually(probe, lambda o: o == "ok", deadline=5.0)
    assert outcomes[0] == "timeout" and outcomes[-1] == "ok"


async def test_cancelled_call_leaves_the_session_usable(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    t = target(b)
    assert await client.get_power_state(t) is False
    await pool.lab.set_fault([b.name], Fault("slow", 0.4))
    call = asyncio.ensure_future(client.chassis_control(t, ChassisControl.POWER_ON))
    await eventually(lambda: pool.lab.state(b.name), lambda s: s["stats"].get("delayed", 0) >= 1)
    call.cancel()  # the command is in the BMC's hands, its answer not back yet
    with pytest.raises(asyncio.CancelledError):
        await call
    await pool.lab.set_fault([b.name], None)
    # whatever became of the cancelled command, the session goes on and what it reads is the truth
    assert (await client.get_boot_flags(t)).valid is False
    on = await client.get_power_state(t)
    assert on == (await pool.lab.state(b.name))["power"]
    await client.chassis_control(t, ChassisControl.POWER_ON)
    assert await client.get_power_state(t) is True
    assert client.stats.sessions_opened == 1


async def test_concurrent_calls_to_one_bmc_are_serialised(pool: Pool, client: IPMIClient) -> None:
    b = pool.one()
    t = target(b)
    ids, power = await asyncio.gather(
        asyncio.gather(*(client.get_device_id(t) for _ in range(20))), client.get_power_state(t)
    )
    assert all(r.device_id == 0x20 for r in ids) and power is False
    assert client.stats.sessions_opened == 1


async def test_new_client_on_a_reused_source_port(pool: Pool) -> None:
    """pyghmi's server loop died when a new client reused an old client's UDP source port."""
    b = pool.one()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = dataclasses.replace(FAST, bind_ipv4="127.0.0.1", bind_port=port)
    first = IPMIClient(settings)
    assert await first.get_power_state(target(b)) is False
    for endpoint in first._endpoints.values():  # vanish without logging out, like a killed process
        await endpoint.close()
    async with ipmi_client(settings) as second:
        await second.chassis_control(target(b), ChassisControl.POWER_ON)
        assert await second.get_power_state(target(b)) is True
    assert (await pool.lab.state(b.name))["sessions"] >= 1
