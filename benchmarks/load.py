"""A bounded load test on loopback: drivers report, send photos and book, as the platform would push them.

    python benchmarks/load.py [--drivers 200] [--photos 4] [--paced-drivers 40] [--rate 10]
    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test python benchmarks/load.py

The production topology with real processes: the service under gunicorn (config/gunicorn.conf.py,
``INBOX_PROCESS_INLINE=true``: photos are processed and answered by the web workers right after the
push is stored) and an ``accident-service scheduler``; photos in S3 (moto's server); the WeChat
platform emulator with its rules on (allowances, template fields, followers), which pushes signed
plain-mode messages and serves the photos.

Drivers come in pairs. The reporter clicks the menu, sends ``--photos`` photos (the checklist's own
items, then extras), the location, plate and phone; the other driver scans the case's QR code as soon
as the reporter has it and does the same in parallel. Whoever gets the slot list picks "1"; if that
seat was just taken, one of the new list's times at random (as people would; up to 30 times). Every
driver waits for the answer to each step before the next, as people do. Two phases:

* ``burst``: ``--drivers`` drivers at once. Photos per second sustained (downloaded, checked, stored
  and answered: from the first photo pushed to the last photo's answer), webhook p50/p99 over every
  push, and from the last input that booked to both drivers holding the booking notice (p50/p95).
* ``paced``: ``--paced-drivers`` more drivers whose photos are pushed at ``--rate`` per second in all:
  a photo's answer time p50/p95 at that rate.

Beside them, the floor, in the same run: a bare loop doing each photo's download (the same emulator),
check and two storage writes (original and thumbnail, the same store), through the service's own
functions (``download_media``, ``photos.intake.prepare_photo``), in as many processes and threads as
the web service has, over the burst's first ``FLOOR_PHOTOS`` photos. Then the checks: every photo
stored once (its original and thumbnail in the bucket, one Photo row per push, no media id twice,
nothing else stored for the drivers' cases), every case booked, no slot over its capacity, no send
refused by the platform (45047, 45015, 47003 or any other), no unreadable answer. Prints one JSON
object (``summary``: the issue's figures beside their targets; per phase, the CPU seconds each part of
the topology used); exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from processes import gunicorn, temporary_database  # noqa: E402

APP_ID, APP_SECRET, PUSH_TOKEN = "wx-load-test", "load-secret", "load-token"
BUCKET = "evidence"
PLACE = (23.1066, 113.3245)  # by Canton Tower: the example stations are near
OFFER = re.compile(r"^1\. ", re.M)
OPTION = re.compile(r"^\d\. ", re.M)
PICKS = 30  # a driver's tries at the list (every try but the last refused: a seat someone else just took)
STEP_TIMEOUT = 60.0  # seconds a driver waits for one answer before the run is declared broken
FLOOR_PHOTOS = 480  # the floor runs over the burst's first photos: enough for a steady figure
REFUSALS = (45047, 45015, 47003)  # allowance spent, window closed, template fields wrong: never expected
TARGETS = {"photo_throughput_ratio_floor": 0.5, "paced_photo_reply_p95_ms": 2000.0,
           "last_input_to_both_notices_p95_ms": 1000.0}
_STOP = threading.Event()  # set on an interrupt: every driver stops within a second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", type=int, default=200, help="drivers in the burst (pairs: an even number)")
    parser.add_argument("--photos", type=int, default=4, help="photos each driver sends (at least 3)")
    parser.add_argument("--paced-drivers", type=int, default=40, help="drivers in the paced phase (0: none)")
    parser.add_argument("--rate", type=float, default=10.0, help="photos per second in the paced phase")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (GUNICORN_THREADS)")
    parser.add_argument("--seconds", type=float, default=600, help="a bound on the whole run")
    args = parser.parse_args()
    if args.drivers < 2 or args.drivers % 2 or args.paced_drivers % 2 or args.photos < 3:
        raise SystemExit("--drivers and --paced-drivers are even numbers (pairs), --drivers at least 2; --photos at "
                         "least 3 (the reporter's own checklist items)")
    started = time.monotonic()
    deadline = started + args.seconds
    with ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        database_url = stack.enter_context(temporary_database(data_dir, "load"))
        platform, env = stack.enter_context(_Topology(data_dir, database_url, args))
        images = _images(2 * args.photos)
        cpu = _Cpu(database_url.rsplit("/", 1)[-1])
        burst = _play(platform, _pairs("burst", args.drivers // 2), images, deadline=deadline, cpu=cpu)
        paced = _play(platform, _pairs("paced", args.paced_drivers // 2), images, deadline=deadline,
                      pacer=_Pacer(args.rate), cpu=cpu) if args.paced_drivers else None
        settled = _settle(cpu)
        floor = _floor(env, [photo.media_id for photo in burst.photos][:FLOOR_PHOTOS], workers=args.workers,
                       threads=args.threads, cpu=cpu) | {"waited_for_quiet_s": settled}
        checks = _checks(database_url, env["S3_ENDPOINT_URL"], platform, burst, paced)
    figures = {
        "database": database_url.split(":", 1)[0], "web_workers": args.workers, "threads": args.threads,
        "summary": _summary(burst, paced, floor, checks, args.rate),
        "burst": burst.figures(), "paced": paced.figures() | {"rate_asked": args.rate} if paced else None,
        "floor": floor,
        "photo_throughput_ratio_floor": round(burst.photos_per_s() / floor["photos_per_s"], 3),
        "checks": checks, "seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    if not checks["passed"]:
        raise SystemExit(1)


# --- the topology --------------------------------------------------------------------------------

class _Topology:
    def __init__(self, data_dir: Path, database_url: str, args: argparse.Namespace) -> None:
        self.data_dir, self.database_url, self.args = data_dir, database_url, args
        self.stack = ExitStack()

    def __enter__(self):
        from accident_service.sandbox import console
        from accident_service.sandbox.emulator import WeChatEmulator
        from tests.support.servers import MotoS3Server, stop_process

        stack = self.stack.__enter__()
        try:
            moto = MotoS3Server()
            moto.start()
            stack.callback(moto.stop)
            platform = WeChatEmulator(APP_ID, APP_SECRET, PUSH_TOKEN, None, push_timeout=STEP_TIMEOUT)
            for kind in console.TEMPLATE_KINDS:
                platform.register_template(console.template_id(kind), console.NOTICE_TEMPLATE_KEYWORDS)
            platform.start()
            stack.callback(platform.stop)
            env = self._env(platform, moto.url)
            cli = str(Path(sys.executable).with_name("accident-service"))
            for command in (["db", "upgrade"], ["import-stations", str(REPO / "config" / "stations.example.yaml")],
                            ["generate-slots", "--days", "7"]):
                subprocess.run([cli, *command], env=env, check=True, cwd=REPO, capture_output=True, timeout=120)
            platform.callback_url = stack.enter_context(gunicorn("wsgi:app", env, self.data_dir)) + "/wechat"
            with open(self.data_dir / "scheduler.log", "wb") as log:
                scheduler = subprocess.Popen([cli, "scheduler"], env=env, cwd=REPO, stdout=log,
                                             stderr=subprocess.STDOUT)
            stack.callback(stop_process, scheduler)
            return platform, env
        except BaseException:
            self.stack.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc_info):
        return self.stack.__exit__(*exc_info)

    def _env(self, platform, s3_url: str) -> dict[str, str]:
        from accident_service.sandbox import console

        templates = {f"WECHAT_TEMPLATE_{kind.upper()}": console.template_id(kind) for kind in console.TEMPLATE_KINDS}
        env = {**os.environ, "APP_ENV": "development", "DATA_DIR": str(self.data_dir),
               "DATABASE_URL": self.database_url, "AUTO_MIGRATE": "false", "SECRET_KEY": "load-test",
               "STORAGE_URL": f"s3://{BUCKET}", "S3_ENDPOINT_URL": s3_url, "S3_CREATE_BUCKET": "true",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "WECHAT_APP_ID": APP_ID, "WECHAT_APP_SECRET": APP_SECRET, "WECHAT_TOKEN": PUSH_TOKEN,
               "WECHAT_ENCODING_AES_KEY": "", "WECHAT_API_BASE_URL": platform.api_base_url,
               "INBOX_PROCESS_INLINE": "true", "LOG_LEVEL": "WARNING", "REDIS_URL": "",
               "WEB_CONCURRENCY": str(self.args.workers), "GUNICORN_THREADS": str(self.args.threads), **templates}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn's master makes its own
        return env


def _images(count: int) -> list[bytes]:
    """Distinct sharp 1600×1200 JPEGs (a photo as WeChat sends it, compressed), reused across cases."""
    from accident_service.sandbox.images import make_jpeg

    return [make_jpeg(f"load-{n}", 1600, 1200) for n in range(count)]


# --- the drivers -------------------------------------------------------------------------------------

@dataclass
class _Photo:
    media_id: str
    pushed: float
    answered: float = math.nan


@dataclass
class _Pair:
    number: int
    reporter: str
    other: str
    plate_a: str
    plate_b: str
    phone_a: str
    phone_b: str
    qr_scene: str | None = None
    booked_by_input_at: float | None = None
    both_told_at: float | None = None
    picker_told_at: float | None = None  # the answer to the pick that booked
    other_told_at: float | None = None  # the other driver's booking notice
    error: str | None = None
    picks_refused: int = 0
    photos: list[_Photo] = field(default_factory=list)


def _pairs(phase: str, count: int) -> list[_Pair]:
    tag = "B" if phase == "burst" else "P"
    return [_Pair(n, f"oLoad{tag}A{n:05d}", f"oLoad{tag}B{n:05d}", f"粤A{tag}{n:04d}", f"粤B{tag}{n:04d}",
                  f"138{'0' if phase == 'burst' else '1'}{n:07d}", f"139{'0' if phase == 'burst' else '1'}{n:07d}")
            for n in range(count)]


class _Pacer:
    """Hands out push times ``1/rate`` apart, across all threads (the paced phase's photos)."""

    def __init__(self, rate: float) -> None:
        self.interval, self.next_at, self.lock = 1.0 / rate, time.monotonic(), threading.Lock()

    def wait(self) -> None:
        with self.lock:
            at = self.next_at = max(self.next_at + self.interval, time.monotonic())
        time.sleep(max(0.0, at - time.monotonic()))


@dataclass
class _Phase:
    pairs: list[_Pair]
    pushes_ms: list[float]
    started: float
    ended: float
    cpu: dict = field(default_factory=dict)

    @property
    def photos(self) -> list[_Photo]:
        return [photo for pair in self.pairs for photo in pair.photos]

    def photos_per_s(self) -> float:
        answered = [p for p in self.photos if not math.isnan(p.answered)]
        if not answered:
            return 0.0
        return len(answered) / (max(p.answered for p in answered) - min(p.pushed for p in answered))

    def figures(self) -> dict:
        photos = self.photos
        replies = [1000 * (p.answered - p.pushed) for p in photos if not math.isnan(p.answered)]
        told = [1000 * (pair.both_told_at - pair.booked_by_input_at) for pair in self.pairs
                if pair.both_told_at is not None]
        picker = [1000 * (pair.picker_told_at - pair.booked_by_input_at) for pair in self.pairs
                  if pair.both_told_at is not None]
        other = [1000 * (pair.other_told_at - pair.booked_by_input_at) for pair in self.pairs
                 if pair.both_told_at is not None]
        span = max(p.answered for p in photos) - min(p.pushed for p in photos) if replies else math.nan
        return {"drivers": 2 * len(self.pairs), "pushes": len(self.pushes_ms),
                "webhook_p50_ms": _percentile(self.pushes_ms, 0.50),
                "webhook_p99_ms": _percentile(self.pushes_ms, 0.99),
                "photos": len(photos), "photos_answered": len(replies), "photo_seconds": round(span, 2),
                "photos_per_s": round(self.photos_per_s(), 2),
                "photo_reply_p50_ms": _percentile(replies, 0.50), "photo_reply_p95_ms": _percentile(replies, 0.95),
                "cases_booked": len(told), "picks_refused": sum(pair.picks_refused for pair in self.pairs),
                "last_input_to_both_notices_p50_ms": _percentile(told, 0.50),
                "last_input_to_both_notices_p95_ms": _percentile(told, 0.95),
                "last_input_to_picker_answer_p95_ms": _percentile(picker, 0.95),
                "last_input_to_other_notice_p95_ms": _percentile(other, 0.95),
                "errors": [pair.error for pair in self.pairs if pair.error][:5],
                "seconds": round(self.ended - self.started, 1), "cpu": self.cpu}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)], 1)


def _play(platform, pairs: list[_Pair], images: list[bytes], *, deadline: float, pacer: _Pacer | None = None,
          cpu: _Cpu | None = None) -> _Phase:
    pushes_ms: list[float] = []
    for pair in pairs:  # the photos are the platform's before anyone sends them
        for role, driver in (("a", pair.reporter), ("b", pair.other)):
            offset = 0 if role == "a" else len(images) // 2
            for n in range(len(images) // 2):
                platform.add_media(f"{driver}-{n}", images[offset + n])
    before = cpu.sample() if cpu else None
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2 * len(pairs)) as pool:
        runs = []
        for pair in pairs:
            qr_ready = threading.Event()
            runs.append(pool.submit(_driver, platform, pair, pair.reporter, qr_ready, pushes_ms, pacer, deadline,
                                    len(images) // 2))
            runs.append(pool.submit(_driver, platform, pair, pair.other, qr_ready, pushes_ms, pacer, deadline,
                                    len(images) // 2))
        try:
            for run in runs:
                run.result()
        except BaseException:
            _STOP.set()  # an interrupt (run_all's time bound, ^C): the drivers stop, then the servers
            raise
    ended = time.monotonic()
    for pair in pairs:  # both drivers done, neither was offered a slot: say what they last read
        if pair.error is None and pair.booked_by_input_at is None:
            last = {openid: [str(m["text"])[:100] for m in platform.sent_to(openid)[-3:]]
                    for openid in (pair.reporter, pair.other)}
            pair.error = f"case never offered a slot list; last messages: {last}"[:600]
    return _Phase(pairs, pushes_ms, started, ended, cpu.since(before, ended - started) if cpu else {})


def _driver(platform, pair: _Pair, openid: str, qr_ready: threading.Event, pushes_ms: list[float],
            pacer: _Pacer | None, deadline: float, photos: int) -> None:
    """One driver's story; a failure is recorded on the pair (and fails the checks), not raised."""
    reporter = openid == pair.reporter
    conversation = _Conversation(platform, openid, pushes_ms, deadline)
    try:
        if reporter:
            answer = conversation.push(platform.post_click, "REPORT_ACCIDENT")
            pair.qr_scene = _join_scene(platform, conversation, answer)
            qr_ready.set()
        else:
            while not qr_ready.wait(timeout=1.0):
                if _STOP.is_set() or time.monotonic() > deadline:
                    raise TimeoutError("the reporter's QR code never came")
            conversation.push(platform.post_scan, pair.qr_scene, False)
        for n in range(photos):
            if pacer is not None:
                pacer.wait()
            photo = _Photo(f"{openid}-{n}", time.monotonic())
            pair.photos.append(photo)
            conversation.push(platform.post_image, photo.media_id)
            photo.answered = conversation.last_arrival
        answer = conversation.push(platform.post_location, *PLACE, "广州塔附近")
        answer = conversation.push(platform.post_text, pair.plate_a if reporter else pair.plate_b)
        answer = conversation.push(platform.post_text, pair.phone_a if reporter else pair.phone_b)
        choose = random.Random(openid)  # people pick different times; all picking "1" only tests one slot's seats
        for attempt in range(PICKS):  # the list went to whoever made the case ready; a seat taken meanwhile: again
            if not OFFER.search(answer):
                return
            pair.picks_refused += bool(attempt)
            picked_at = time.monotonic()
            options = len(OPTION.findall(answer))
            answer = conversation.push(platform.post_text, str(choose.randint(1, options) if attempt else 1))
            if "预约成功" in answer:
                pair.booked_by_input_at = picked_at
                other = pair.other if reporter else pair.reporter
                told = _wait_for_text(platform, other, "预约成功", deadline)
                pair.picker_told_at, pair.other_told_at = conversation.last_arrival, told
                pair.both_told_at = max(conversation.last_arrival, told)
                return
        raise RuntimeError(f"no booking after {PICKS} picks; last answer: {answer[:80]!r}")
    except Exception as exc:  # noqa: BLE001 - the run goes on; the checks report it
        pair.error = f"{openid}: {type(exc).__name__}: {exc}"[:300]
        qr_ready.set()


class _Conversation:
    """Push, then wait for the driver's next message (their answer): one message per push."""

    def __init__(self, platform, openid: str, pushes_ms: list[float], deadline: float) -> None:
        self.platform, self.openid, self.pushes_ms, self.deadline = platform, openid, pushes_ms, deadline
        self.seen = 0
        self.last_arrival = math.nan

    def push(self, post, *args) -> str:
        before = time.monotonic()
        response = post(self.openid, *args)
        self.pushes_ms.append(1000 * (time.monotonic() - before))
        if response.status_code != 200 or response.text != "success":
            raise RuntimeError(f"push answered {response.status_code} {response.text[:80]!r}")
        return self.next_message()

    def next_message(self) -> str:
        records = _received(self.platform, self.openid, self.seen + 1, self.deadline)
        self.seen = len(records)
        self.last_arrival = records[-1]["monotonic"]
        return "\n".join(str(record["text"]) for record in records[-1:])


def _received(platform, openid: str, count: int, deadline: float) -> list[dict]:
    """The emulator's records once ``openid`` has ``count`` messages: waits up to STEP_TIMEOUT (and the run's
    deadline), in slices of a second so that an interrupted run's drivers stop at once."""
    step_ends = min(time.monotonic() + STEP_TIMEOUT, deadline)
    while True:
        if _STOP.is_set():
            raise RuntimeError("run interrupted")
        try:
            return platform.wait_for_received(openid, count, max(0.05, min(1.0, step_ends - time.monotonic())))
        except TimeoutError:
            if time.monotonic() >= step_ends:
                raise


def _join_scene(platform, conversation: _Conversation, answer: str) -> str:
    """The scene of the case's join QR code, from the link in the reporter's answer."""
    ticket = re.search(r"showqrcode\?ticket=([^\s&]+)", answer)
    if ticket is None:
        raise RuntimeError(f"no join QR code in the reporter's answer: {answer[:120]!r}")
    scene = platform.scene_for_ticket(ticket.group(1))
    if scene is None:
        raise RuntimeError("the platform does not know the join QR code's ticket")
    return scene


def _wait_for_text(platform, openid: str, needle: str, deadline: float) -> float:
    """When ``openid`` got a message containing ``needle`` (a text or a template card)."""
    count = 1
    while True:
        records = _received(platform, openid, count, deadline)
        for record in records:
            if needle in str(record["text"]):
                return record["monotonic"]
        count = len(records) + 1


# --- the floor -----------------------------------------------------------------------------------------

def _floor(env: dict[str, str], media_ids: list[str], *, workers: int, threads: int, cpu: _Cpu | None = None) -> dict:
    """The same download, check and two storage writes per photo, in ``workers`` processes × ``threads``."""
    chunks = [media_ids[n::workers] for n in range(workers)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_floor_runtime, initargs=(env,)) as pool:
        list(pool.map(_floor_ready, range(workers)))  # started, imported and connected before the clock runs
        before = cpu.sample() if cpu else None
        started = time.monotonic()
        done = sum(pool.map(_floor_chunk, chunks, [threads] * workers))
        seconds = time.monotonic() - started
        used = cpu.since(before, seconds) if cpu else {}  # the floor's own processes: "other_children"
    return {"photos": done, "seconds": round(seconds, 2), "photos_per_s": round(done / seconds, 2), "cpu": used}


_runtime = None


def _floor_runtime(env: dict[str, str]) -> None:
    global _runtime
    from accident_service.runtime import build_runtime
    from accident_service.settings import load_settings

    os.environ.update(env)  # boto3 takes its credentials from the environment, as in the service
    _runtime = build_runtime(load_settings({}, environ=env))


def _floor_ready(_: int) -> bool:
    _runtime.wechat.client.current_token()
    return True


def _floor_chunk(media_ids: list[str], threads: int) -> int:
    from accident_service.photos.intake import prepare_photo
    from accident_service.wechat.processing import download_timeout

    settings = _runtime.settings

    def one(media_id: str) -> int:
        media = _runtime.wechat.download_media(media_id, max_bytes=settings.PHOTO_MAX_BYTES,
                                               timeout=download_timeout(settings))
        prepared = prepare_photo(_runtime, media.data, media_id=media_id, case_no=f"FLOOR-{media_id}",
                                 received_at=datetime.now(UTC))
        return int(prepared.rejection is None)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(one, media_ids))


def _settle(cpu: _Cpu, *, bound: float = 30.0) -> float:
    """Wait (at most ``bound`` seconds) until the service is idle, so the floor has the machine to itself.

    After the drivers are done, the web's lanes may still be working through queued hand-offs of messages
    the scheduler already processed (each a claim attempt and a dispatch round); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < bound:
        before = cpu.sample()
        time.sleep(0.5)
        used = cpu.since(before, 0.5)["seconds"]
        if sum(used.get(part, 0.0) for part in ("web", "scheduler", "postgresql")) < 0.1:
            break
    return round(time.monotonic() - started, 1)


# --- the summary ------------------------------------------------------------------------------------------

def _summary(burst: _Phase, paced: _Phase | None, floor: dict, checks: dict, rate: float) -> dict:
    """The issue's figures in one place, each beside its target."""
    pushes = burst.pushes_ms + (paced.pushes_ms if paced else [])
    burst_figures, paced_figures = burst.figures(), paced.figures() if paced else {}
    summary = {
        "webhook_p50_ms": _percentile(pushes, 0.50), "webhook_p99_ms": _percentile(pushes, 0.99),
        "pushes": len(pushes),
        "photos_per_s": round(burst.photos_per_s(), 2), "floor_photos_per_s": floor["photos_per_s"],
        "photo_throughput_ratio_floor": round(burst.photos_per_s() / floor["photos_per_s"], 3),
        "paced_rate_photos_per_s": rate, "paced_photo_reply_p95_ms": paced_figures.get("photo_reply_p95_ms"),
        "burst_photo_reply_p95_ms": burst_figures["photo_reply_p95_ms"],
        "last_input_to_both_notices_p95_ms": burst_figures["last_input_to_both_notices_p95_ms"],
        "paced_last_input_to_both_notices_p95_ms": paced_figures.get("last_input_to_both_notices_p95_ms"),
        "last_input_to_picker_answer_p95_ms": burst_figures["last_input_to_picker_answer_p95_ms"],
        "last_input_to_other_notice_p95_ms": burst_figures["last_input_to_other_notice_p95_ms"],
        "notices_of": "both parties: the driver whose pick booked and the other driver of the case",
        "photos_stored_once": not (checks["duplicate_photo_rows"] or checks["photos_not_stored"]
                                   or checks["objects_missing"] or checks["objects_extra"]
                                   or checks["photo_rows"] != checks["photos_sent"]),
        "overbooked_slots": checks["overbooked_slots"], "refused_sends": sum(checks["refused_sends"].values()),
        "refused_45047_45015_47003": checks["refused_45047_45015_47003"], "targets": TARGETS,
    }
    summary["targets_met"] = {
        name: summary[name] is not None and (summary[name] >= target if name.endswith("ratio_floor")
                                             else summary[name] < target)
        for name, target in TARGETS.items()}
    return summary


class _Cpu:
    """CPU seconds used during a phase by each part of the topology (from /proc), and by the whole machine.

    ``load_client`` is this process: the drivers and the platform emulator (pushes, media, sends);
    ``postgresql``: the backends of the run's database; ``other``: the rest of the machine's busy time.
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self.tick = os.sysconf("SC_CLK_TCK")

    def sample(self) -> dict[str, float]:
        parents, used, names = {}, {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                names[int(entry.name)] = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = int(stat[1])
            used[int(entry.name)] = (int(stat[11]) + int(stat[12])) / self.tick
        totals: dict[str, float] = defaultdict(float)
        me = os.getpid()
        for pid, seconds in used.items():
            part = self._part(pid, me, parents, names[pid])
            if part:
                totals[part] += seconds
        with open("/proc/stat") as stat:
            ticks = [int(value) for value in stat.readline().split()[1:]]
        totals["machine_busy"] = (sum(ticks) - ticks[3] - ticks[4]) / self.tick  # all but idle and iowait
        return dict(totals)

    def _part(self, pid: int, me: int, parents: dict[int, int], command: str) -> str | None:
        if pid == me:
            return "load_client"
        if command.startswith("postgres:") and f" {self.database} " in command:
            return "postgresql"
        ancestor = parents.get(pid)
        while ancestor and ancestor != me:
            ancestor = parents.get(ancestor)
        if ancestor != me:
            return None
        for part, word in (("web", "gunicorn"), ("scheduler", "scheduler"), ("moto", "moto.server")):
            if word in command:
                return part
        return "other_children"

    def since(self, before: dict[str, float], seconds: float) -> dict:
        after = self.sample()
        used = {part: round(after.get(part, 0.0) - before.get(part, 0.0), 1) for part in after}
        used["other"] = round(used.pop("machine_busy") - sum(used.values()), 1)  # other sessions, the kernel
        return {"seconds": used, "cores_busy": round(sum(used.values()) / seconds, 2) if seconds else None}


# --- the checks -----------------------------------------------------------------------------------------

def _checks(database_url: str, s3_url: str, platform, burst: _Phase, paced: _Phase | None) -> dict:
    import boto3
    from sqlalchemy import create_engine, text

    phases = [burst, *([paced] if paced else [])]
    pairs = [pair for phase in phases for pair in phase.pairs]
    drivers = [openid for pair in pairs for openid in (pair.reporter, pair.other)]
    photos_sent = sum(len(phase.photos) for phase in phases)
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT c.case_no, p.object_key, p.thumb_key, p.status, p.media_id FROM photo p JOIN accident_case c "
            "ON c.id = p.case_id")).all()
        overbooked = connection.execute(text("SELECT count(*) FROM slot WHERE booked > capacity")).scalar_one()
        seats = connection.execute(text(
            "SELECT count(*) FROM (SELECT a.slot_id FROM appointment a JOIN slot s ON s.id = a.slot_id "
            "WHERE a.status IN ('booked', 'confirmed', 'checked_in') GROUP BY a.slot_id, s.capacity "
            "HAVING count(*) > s.capacity) x")).scalar_one()
        booked = connection.execute(text(
            "SELECT count(*) FROM accident_case WHERE status IN ('booked', 'confirmed')")).scalar_one()
        inbox = dict(connection.execute(text(
            "SELECT status, count(*) FROM inbound_message GROUP BY status")).all())
        worker = ("CASE WHEN leased_by LIKE 'web-%' THEN 'web' WHEN leased_by LIKE 'sched-%' THEN 'scheduler' "
                  "ELSE coalesce(leased_by, 'none') END")
        processed_by = {  # who did the work: the web's inline lanes or the scheduler's sweeps (the last lease)
            "photos": dict(connection.execute(text(
                f"SELECT {worker}, count(*) FROM inbound_message WHERE msg_type = 'image' GROUP BY 1")).all()),
            "other_messages": dict(connection.execute(text(
                f"SELECT {worker}, count(*) FROM inbound_message WHERE msg_type <> 'image' GROUP BY 1")).all()),
            "sends": dict(connection.execute(text(f"SELECT {worker}, count(*) FROM notification GROUP BY 1")).all()),
        }
    engine.dispose()
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    stored = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        stored |= {item["Key"] for item in page.get("Contents", []) if "/FLOOR-" not in item["Key"]}
    expected = {key for row in rows for key in (row.object_key, row.thumb_key) if key}
    sent_media = {photo.media_id for phase in phases for photo in phase.photos}
    stored_media = [row.media_id for row in rows]
    refusals = platform.refusal_counts()
    checks = {
        "photos_sent": photos_sent, "photo_rows": len(rows),
        "photo_rows_accepted": sum(1 for row in rows if row.status == "accepted"),
        "duplicate_photo_rows": len(stored_media) - len(set(stored_media)),
        "photos_not_stored": len(sent_media - set(stored_media)), "objects_in_bucket": len(stored),
        "objects_missing": len(expected - stored), "objects_extra": len(stored - expected),
        "overbooked_slots": overbooked + seats, "cases_booked": booked, "cases": len(pairs),
        "inbox": inbox, "processed_by": processed_by, "refused_sends": {str(k): v for k, v in refusals.items()},
        "refused_45047_45015_47003": sum(refusals.get(code, 0) for code in REFUSALS),
        "unreadable_answers": len(platform.reply_errors), "driver_errors": sum(1 for pair in pairs if pair.error),
        "drivers": len(drivers),
    }
    checks["passed"] = (checks["photo_rows"] == photos_sent == checks["photo_rows_accepted"]
                        and not checks["objects_missing"] and not checks["objects_extra"]
                        and not checks["duplicate_photo_rows"] and not checks["photos_not_stored"]
                        and not checks["overbooked_slots"] and booked == len(pairs)
                        and set(inbox) == {"done"} and not checks["refused_sends"]
                        and not checks["unreadable_answers"] and not checks["driver_errors"])
    return checks


if __name__ == "__main__":
    main()
