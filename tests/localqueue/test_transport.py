"""The emulator transport in this process: where the shared emulator keeps its state, the
EMULATOR settings' errors, emulator_connected, and starting a stopped emulator again."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cloudtask import ConfigurationError
from cloudtask.conf import build_settings, get_settings
from cloudtask.emulator.persist import make_state_dir, stop_running
from cloudtask.transports import emulator as emulator_transport
from cloudtask.transports import get_transport
from cloudtask.transports.emulator import (
    MAX_LOG_SIZE,
    EmulatorTransport,
    emulator_connected,
    find_running,
    keep_up,
    start_background,
    state_dir,
)
from tests.api.conftest import BASE
from tests.tasks import add
from tests.waiting import poll

from .conftest import ROOT, WAIT, Env, emulator_pids

#: Nothing listens there; the tests' tasks are due in an hour anyway.
NOWHERE = "http://127.0.0.1:9/_tasks/"


@pytest.mark.parametrize(
    ("emulator", "message"),
    [
        ({"PERSIST": "yes"}, 'CLOUDTASK["EMULATOR"]["PERSIST"] must be True or False, not'),
        ({"STATE_DIR": 5}, 'CLOUDTASK["EMULATOR"]["STATE_DIR"] must be a directory path'),
        ({"STATE_DIR": ""}, 'CLOUDTASK["EMULATOR"]["STATE_DIR"] must be a directory path'),
        ({"IDLE_TIMEOUT": 0}, 'CLOUDTASK["EMULATOR"]["IDLE_TIMEOUT"] must be a positive number'),
        ({"IDLE_TIMEOUT": "1h"}, 'CLOUDTASK["EMULATOR"]["IDLE_TIMEOUT"] must be a positive'),
    ],
)
def test_emulator_setting_errors_name_the_key(emulator: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        build_settings({"EMULATOR": emulator})
    assert message in str(caught.value)


def test_the_state_directory(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given: relative to the project directory (the settings package's parent), whatever the
    # current directory.
    monkeypatch.chdir(tmp_path)
    assert state_dir({"STATE_DIR": "var/emulator"}) == ROOT / "var" / "emulator"
    assert state_dir({"STATE_DIR": tmp_path / "abs"}) == tmp_path / "abs"

    # Default: beside the SQLite database...
    database = tmp_path / "db" / "site.sqlite3"
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(database)}
    with pytest.warns(UserWarning, match="DATABASES"):
        settings.DATABASES = {"default": sqlite}
    assert state_dir({"STATE_DIR": None}) == tmp_path / "db" / ".cloudtask"

    # ...else in the user's cache, one directory per settings module and project directory.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    digest = hashlib.sha256(f"tests.settings\0{ROOT}".encode()).hexdigest()[:12]
    expected = tmp_path / "cache" / "cloudtask" / f"{ROOT.name}-{digest}"
    for database_settings in (
        {**sqlite, "NAME": ":memory:"},
        {"ENGINE": "django.db.backends.postgresql", "NAME": "shop"},
    ):
        with pytest.warns(UserWarning, match="DATABASES"):
            settings.DATABASES = {"default": database_settings}
        assert state_dir({"STATE_DIR": None}) == expected


def test_connected_once_and_again_after_a_restart(settings: Any, state_dir: Path) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "EMULATOR": {"STATE_DIR": str(state_dir), "LOG": False},
    }
    connected: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        # Runs before the first task goes out: the emulator holds nothing yet.
        kwargs["held"] = Env(state_dir, NOWHERE).held()
        connected.append({"sender": sender, **kwargs})

    emulator_connected.connect(receiver)
    try:
        add(a=1).schedule(countdown=3600)
        add(a=2).schedule(countdown=3600)
        first = find_running(state_dir)
        assert first is not None
        assert connected == [
            {
                "sender": EmulatorTransport,
                "signal": emulator_connected,
                "address": first.address,
                "project": BASE["PROJECT"],
                "location": BASE["LOCATION"],
                "held": 0,
            }
        ]
        transport = get_transport()
        assert isinstance(transport, EmulatorTransport)
        # The site verifies the emulator's OIDC tokens with its certificates.
        assert transport.oidc_certs_url() == first.certs_url
        assert transport.dashboard_url() == first.dashboard_url

        # Stopped behind the transport's back (idle, killed): the next call starts it again,
        # once, with the tasks it held.
        assert stop_running(state_dir)
        add(a=3).schedule(countdown=3600)
        second = find_running(state_dir)
        assert second is not None and second.pid != first.pid
        assert [call["address"] for call in connected] == [first.address, second.address]
        assert Env(state_dir, NOWHERE).held() == 3
        assert transport.oidc_certs_url() == second.certs_url
    finally:
        emulator_connected.disconnect(receiver)


def test_an_emulator_gone_behind_a_live_pid_is_started_again(
    settings: Any, state_dir: Path, tmp_path: Path
) -> None:
    env = Env(state_dir, NOWHERE)
    # Another process starts the emulator and stays, without reaping it once it stops.
    starter = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, "-m", "tests.localqueue.send", str(tmp_path / "n"), "x", "3600", "stay"],
        cwd=ROOT,
        env=env.vars,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        first = json.loads(starter.stdout.readline())
        settings.CLOUDTASK = {
            **BASE,
            "TRANSPORT": "emulator",
            # The starter's project and location (tests/localqueue/settings.py): one count.
            "PROJECT": "localqueue-project",
            "LOCATION": "local",
            "URL": NOWHERE,
            "EMULATOR": {"STATE_DIR": str(state_dir), "LOG": False},
        }
        add(a=1).schedule(countdown=3600)
        assert get_transport().connect().pid == first["pid"]  # type: ignore[attr-defined]

        # Stopped: a zombie of the starter, so its pid still answers; gRPC does not.
        assert stop_running(state_dir)
        add(a=2).schedule(countdown=3600)
        second = find_running(state_dir)
        assert second is not None and second.pid != first["pid"]
        assert env.held() == 3
    finally:
        starter.communicate("", timeout=WAIT)


def test_an_emulator_started_in_a_race_it_lost_does_not_outlive_the_winner(
    settings: Any, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "EMULATOR": {"STATE_DIR": str(state_dir), "LOG": False},
    }
    winner = start_background(get_settings())
    # This process looked just before the winner published its address (two processes sending
    # their first task at once): it starts an emulator of its own, then finds the winner.
    looks = iter([None])
    real_find_running = find_running
    monkeypatch.setattr(
        emulator_transport, "find_running", lambda d: next(looks, real_find_running(d))
    )
    assert start_background(get_settings()).pid == winner.pid
    # Its own emulator is gone already: slow to start, it would otherwise reach the lock once
    # the winner let go of it, and take the directory over after a stop.
    assert emulator_pids(state_dir) == {winner.pid}
    assert stop_running(state_dir)
    poll(lambda: not emulator_pids(state_dir), WAIT, "the stopped emulator to exit")
    assert find_running(state_dir) is None


def test_async_sends_start_and_restart_it_off_the_event_loop(
    settings: Any, state_dir: Path
) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "EMULATOR": {"STATE_DIR": str(state_dir), "LOG": False},
    }

    async def send() -> str | None:
        handle = await add(a=1).aschedule(countdown=3600)
        return handle.task_id

    first_id = asyncio.run(send())
    first = find_running(state_dir)
    assert first is not None and first_id
    assert stop_running(state_dir)
    asyncio.run(send())
    second = find_running(state_dir)
    assert second is not None and second.pid != first.pid
    assert Env(state_dir, NOWHERE).held() == 2


def test_a_receiver_error_is_raised_at_every_send_until_it_is_fixed(settings: Any) -> None:
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "EMULATOR": {"LOG": False, "PERSIST": False},
    }
    broken = True

    def receiver(**kwargs: Any) -> None:
        if broken:
            raise ConfigurationError('CLOUDTASK["QUEUES"]["default"] is wrong')

    emulator_connected.connect(receiver)
    try:
        for _ in range(2):
            with pytest.raises(ConfigurationError, match="QUEUES"):
                add(a=1).delay()
        broken = False
        assert get_settings().emulator["PERSIST"] is False
        transport = get_transport()
        assert isinstance(transport, EmulatorTransport)
        address = transport.connect().address
        assert transport.emulator.address == address  # the one inside this process
    finally:
        emulator_connected.disconnect(receiver)


def test_a_serving_site_keeps_its_emulator_up_and_starts_it_again(
    settings: Any, state_dir: Path
) -> None:
    # An emulator that stops after 1 s without a call, and a site serving for a while.
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "EMULATOR": {"STATE_DIR": str(state_dir), "LOG": False, "IDLE_TIMEOUT": 1.0},
    }
    stop = threading.Event()
    site = threading.Thread(target=keep_up, args=(get_transport(),), kwargs={"stop": stop})
    site.start()
    try:
        first = poll(lambda: find_running(state_dir), what="the emulator started by the site")
        started = json.loads((state_dir / "emulator.json").read_text())["started"]
        # Three idle timeouts later it still runs: the site's calls keep it up.
        poll(lambda: time.time() > started + 3.0, what="three idle timeouts")
        running = find_running(state_dir)
        assert running is not None and running.pid == first.pid

        # Killed, it is started again without any task being sent.
        os.kill(first.pid, signal.SIGKILL)
        second = poll(
            lambda: (found := find_running(state_dir)) and found.pid != first.pid and found,
            what="the emulator started again",
        )
        assert second.state_dir == state_dir
    finally:
        stop.set()
        site.join()


def test_a_process_whose_settings_differ_from_the_running_emulators_is_told(
    settings: Any, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emulator = {"STATE_DIR": str(state_dir), "LOG": False}
    settings.CLOUDTASK = {**BASE, "TRANSPORT": "emulator", "URL": NOWHERE, "EMULATOR": emulator}
    add(a=1).schedule(countdown=3600)
    running = find_running(state_dir)
    assert running is not None

    # Another process (here: new settings) with another dedup window and location.
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "LOCATION": "elsewhere",
        "EMULATOR": {**emulator, "DEDUP_WINDOW": 60},
    }
    with caplog.at_level(logging.WARNING, logger="cloudtask.emulator"):
        add(a=2).schedule(countdown=3600)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "cloudtask.emulator"]
    assert warning == (
        f"The project's background Cloud Tasks emulator (pid {running.pid}, {running.address}) "
        f"was started with other settings: CLOUDTASK[\"LOCATION\"] is 'elsewhere', it runs with "
        f'{BASE["LOCATION"]!r}; CLOUDTASK["EMULATOR"]["DEDUP_WINDOW"] is 60, it runs with '
        "3600.0. Run `manage.py cloudtask_emulator --stop`; the next task starts it with these "
        "(its tasks are kept)."
    )


def test_a_log_grown_too_large_is_kept_aside_when_the_emulator_starts(
    settings: Any, state_dir: Path
) -> None:
    make_state_dir(state_dir)
    log = state_dir / "emulator.log"
    log.write_text("x" * (MAX_LOG_SIZE + 1))
    settings.CLOUDTASK = {
        **BASE,
        "TRANSPORT": "emulator",
        "URL": NOWHERE,
        "EMULATOR": {"STATE_DIR": str(state_dir)},
    }
    add(a=1).schedule(countdown=3600)
    assert (state_dir / "emulator.log.1").stat().st_size == MAX_LOG_SIZE + 1
    assert log.stat().st_size < MAX_LOG_SIZE
