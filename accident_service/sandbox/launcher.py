"""``accident-service sandbox``: the whole service on one machine, without a WeChat account.

One process holds the WeChat platform emulator (strict: its rules are always on), the SMS
emulator, the service (the app factory's app, served by werkzeug's threaded server), the
scheduler's jobs (APScheduler in the background) and the two-phone page (sandbox/phones.py).
Everything a phone does goes to the real ``/wechat`` endpoint, signed and AES-encrypted, as the
platform would send it; what the service sends comes back through the emulators' APIs.

It seeds a demo station (demo_station.yaml) with slots for the coming days and a demo desk
officer there. It is refused in production and whenever real WeChat or SMS credentials are
in the environment: the sandbox plays the platform itself, and must never talk to the real one.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import select
from werkzeug.serving import LISTEN_QUEUE, get_sockaddr, make_server, select_address_family

from accident_service.sandbox import console
from accident_service.sandbox.emulator import WeChatEmulator
from accident_service.sandbox.sms_emulator import SmsEmulator
from accident_service.settings import bind_address
from accident_service.settings_checks import lower_case
from accident_service.web import EXTENSION_KEY

log = logging.getLogger(__name__)

DEMO_STATION_FILE = Path(__file__).with_name("demo_station.yaml")
DEMO_USERNAME = "demo"
DEMO_PASSWORD = "sandbox-demo"  # printed at start; the sandbox refuses production, so this never guards real data
SLOT_DAYS = 7
APP_ID, APP_SECRET, PUSH_TOKEN = "wx-sandbox", "sandbox-app-secret", "sandbox-token"
SMS_APP_ID, SMS_SECRET_ID, SMS_SECRET_KEY, SMS_SIGN = "1400999999", "AKIDsandbox", "sandbox-sms-key", "交警快处"
#: Variables that mean a real account: the sandbox refuses to start beside them.
REAL_CREDENTIALS = ("WECHAT_APP_ID", "WECHAT_APP_SECRET", "WECHAT_TOKEN", "WECHAT_ENCODING_AES_KEY",
                    "WECHAT_API_BASE_URL", "SMS_SDK_APP_ID", "SMS_SECRET_ID", "SMS_SECRET_KEY", "SMS_ENDPOINT_URL")


class SandboxRefused(RuntimeError):
    """The environment is not one the sandbox may run in; the message says why and what to do."""


def refusal(environ: Mapping[str, str]) -> str | None:
    """Why the sandbox may not start with ``environ``, or None."""
    if lower_case(environ.get("APP_ENV", "")) == "production":  # as the settings read it
        return "APP_ENV is production: the sandbox plays WeChat and SMS itself; run `accident-service serve` instead"
    present = [name for name in REAL_CREDENTIALS if environ.get(name, "").strip()]
    if present:
        return (f"{', '.join(present)} {'is' if len(present) == 1 else 'are'} set: the sandbox never talks to the "
                "real WeChat or SMS platforms; unset them, or run `accident-service serve` for the real account")
    return None


@dataclass
class Sandbox:
    """A running sandbox; ``stop()`` ends every part of it."""

    url: str
    app: Flask
    wechat: WeChatEmulator
    sms: SmsEmulator
    _stops: list[Any] = field(default_factory=list)

    @property
    def desk_url(self) -> str:
        return self.url + "/desk/"

    def stop(self) -> None:
        for stop in reversed(self._stops):
            try:
                stop()
            except Exception:  # stopping the rest matters more than one part's complaint
                log.exception("stopping a sandbox part failed")
        self._stops.clear()


def settings_for(wechat: WeChatEmulator, sms: SmsEmulator, aes_key: str, data_dir: str) -> dict[str, Any]:
    """The service's settings in the sandbox: embedded defaults, with the emulators as the platforms."""
    templates = {f"WECHAT_TEMPLATE_{kind.upper()}": console.template_id(kind) for kind in console.TEMPLATE_KINDS}
    sms_templates = {f"SMS_TEMPLATE_{kind.upper()}": console.sms_template_id(kind)
                     for kind in console.SMS_TEMPLATE_TEXTS}
    return {"APP_ENV": "development", "DATA_DIR": data_dir, "AUTO_MIGRATE": True,
            "WECHAT_APP_ID": APP_ID, "WECHAT_APP_SECRET": APP_SECRET, "WECHAT_TOKEN": PUSH_TOKEN,
            "WECHAT_ENCODING_AES_KEY": aes_key, "WECHAT_REQUIRE_ENCRYPTION": True,
            "WECHAT_API_BASE_URL": wechat.api_base_url, "INBOX_PROCESS_INLINE": True,
            "SMS_SDK_APP_ID": SMS_APP_ID, "SMS_SECRET_ID": SMS_SECRET_ID, "SMS_SECRET_KEY": SMS_SECRET_KEY,
            "SMS_SIGN_NAME": SMS_SIGN, "SMS_ENDPOINT_URL": sms.endpoint_url, **templates, **sms_templates}


def start(bind: str = "127.0.0.1:8000", *, data_dir: str | None = None,
          environ: Mapping[str, str] | None = None) -> Sandbox:
    """Start every part (port 0 in ``bind`` picks a free one). Raises SandboxRefused, SettingsError (a ``bind``
    serve would refuse too, or one not HOST:PORT), OSError (what the system said to the bind), or the driver's
    error for a database not reachable now."""
    environ = os.environ if environ is None else environ
    reason = refusal(environ)
    if reason:
        raise SandboxRefused(reason)
    host, port = listen_address(bind)  # before anything starts
    # werkzeug logs every request line, query string included (the platform's openid): not here.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    data_dir = data_dir or environ.get("DATA_DIR") or "./var/sandbox"
    aes_key = base64.b64encode(secrets.token_bytes(32)).decode("ascii")[:43]
    wechat = WeChatEmulator(APP_ID, APP_SECRET, PUSH_TOKEN, aes_key)  # pushes in safe (AES) mode
    for kind in console.TEMPLATE_KINDS:
        wechat.register_template(console.template_id(kind), console.NOTICE_TEMPLATE_KEYWORDS)
    sms = SmsEmulator(SMS_SECRET_ID, SMS_SECRET_KEY, SMS_APP_ID, sign_names=(SMS_SIGN,))
    for kind, text in console.SMS_TEMPLATE_TEXTS.items():
        sms.register_template(console.sms_template_id(kind), text)
    sandbox = None
    stops: list[Any] = []
    try:
        wechat.start()
        stops.append(wechat.stop)
        sms.start()
        stops.append(sms.stop)
        app = _service_app(settings_for(wechat, sms, aes_key, data_dir))
        stops.append(app.extensions[EXTENSION_KEY].close)
        server = _listen(host, port, app)
        url = f"http://{f'[{host}]' if ':' in host else host}:{server.port}"
        sandbox = Sandbox(url, app, wechat, sms)
        wechat.callback_url = url + "/wechat"
        _seed(app)
        from accident_service.sandbox import phones

        phones.install(app, sandbox)
        stops.append(_start_scheduler(app))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  name="sandbox-http", daemon=True)
        thread.start()
        stops.append(lambda: (server.shutdown(), server.server_close(), thread.join(timeout=5)))
    except BaseException:
        for stop in reversed(stops):
            stop()
        raise
    sandbox._stops = stops
    return sandbox


def listen_address(bind: str) -> tuple[str, int]:
    """``bind`` as serve's ``--bind`` (BIND) takes it, checked by the same rule (settings.bind_address: a port from
    0 to 65535, a host alone meaning port 8000), as host and port; raises SettingsError naming BIND otherwise,
    ``unix:PATH`` and ``fd://N`` (gunicorn's forms; werkzeug's server here listens on TCP) included."""
    bind = bind_address(bind, tcp_only=True)
    host, port = (bind, "8000") if ":" not in bind or bind.endswith("]") else bind.rpartition(":")[::2]
    return host.strip("[]"), int(port)


def _listen(host: str, port: int, app: Flask):
    """werkzeug's threaded server on a socket bound here: werkzeug's own bind prints the system's reason and
    exits, and the reason (port taken, not this machine's address, a port below 1024) is the caller's to say."""
    family = select_address_family(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:  # the server keeps a duplicate of it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug's bind does
        sock.bind(get_sockaddr(host, port, family))
        sock.listen(LISTEN_QUEUE)
        return make_server(host, port, app, threaded=True, fd=sock.fileno())


def _service_app(settings: dict[str, Any]) -> Flask:
    from accident_service import create_app
    from accident_service.settings import load_settings

    # The environment's other settings (LOG_LEVEL, a DATABASE_URL...) still apply; the platforms are the emulators'.
    return create_app(load_settings(settings))


def _seed(app: Flask) -> None:
    """The demo station, its slots for the coming days, and the demo officer (password reset each start)."""
    from accident_service.booking.slots import generate_slots
    from accident_service.booking.station_file import load_station_file
    from accident_service.booking.stations import import_stations
    from accident_service.desk.accounts import create_staff, set_password
    from accident_service.models import StaffUser

    runtime = app.extensions[EXTENSION_KEY]
    specs = load_station_file(DEMO_STATION_FILE)
    with runtime.unit_of_work() as session:
        import_stations(session, specs)
        generate_slots(session, days=SLOT_DAYS, now=runtime.clock.now(), station_codes=[s.code for s in specs])
        user = session.scalar(select(StaffUser).where(StaffUser.username == DEMO_USERNAME))
        if user is None:
            create_staff(session, username=DEMO_USERNAME, password=DEMO_PASSWORD, role="officer",
                         station_code=specs[0].code, clock=runtime.clock)
        else:
            set_password(user, DEMO_PASSWORD)


def _start_scheduler(app: Flask):
    from apscheduler.schedulers.background import BackgroundScheduler

    from accident_service import jobs

    runtime = app.extensions[EXTENSION_KEY]
    scheduler = jobs.build_scheduler(runtime, worker_id=f"sandbox-{os.getpid()}",
                                     scheduler=BackgroundScheduler(timezone="UTC"))
    scheduler.start()
    return lambda: scheduler.shutdown(wait=False)
