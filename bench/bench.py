"""Benchmark plexauth against the floor: a bare urllib3 + json.loads client.

Run from the checkout, with an interpreter that has urllib3:

    .venv/bin/python bench/bench.py

It measures, side by side and interleaved (so that a busy machine slows both):

- cold import: ``python -c "import plexauth"`` vs ``"import urllib3"`` vs ``pass``;
- one-shot: a whole process that imports the client and makes one
  ``GET /user`` (a cron run), wall time and peak RSS;
- warm: 2 000 calls in one process against a local keep-alive server, for
  ``get_token_details``, the sign-in POST and ``get_transient_token`` (JSON
  and XML), each against the same request made with bare urllib3.

The server runs in its own process; it reports the CPU time it spent, to show
that it was not the bottleneck.  Figures and ratios only: nothing passes or
fails.  The last line is ``bench: import=X.XX call=Y.YY oneshot=Z.ZZ rss=W.WW``,
each plexauth's cost divided by the floor's (lower is better, 1.00 = equal).
"""

from __future__ import annotations

import json
import os
import py_compile
import selectors
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import urllib3

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = os.path.join(os.path.dirname(HERE), "plexauth.py")
TOKEN = "bench-token-0123456789"  # noqa: S105 (a made-up token for the local server)

COLD_RUNS = 30
ONESHOT_RUNS = 30
WARM_CALLS = 2000
WARM_REPEATS = 15

# --------------------------------------------------------------------------- the server

ACCOUNT: dict[str, Any] = {
    "id": 13692262, "uuid": "dae343c1f45beb4f", "username": "Username", "title": "UsernameTitle",
    "email": "username@email.com", "friendlyName": "friendlyUsername", "locale": None, "confirmed": True,
    "joinedAt": 1556281940, "emailOnlyAuth": False, "hasPassword": True, "protected": False,
    "thumb": "https://plex.tv/users/a4f43c1ebfde43a5/avatar?c=8372075101", "authToken": "CxoUzBTSV5hsxjTpFKaf",
    "mailingListStatus": "active", "mailingListActive": False, "scrobbleTypes": "", "country": "US",
    "subscriptionDescription": None, "restricted": False, "anonymous": None, "home": True, "guest": False,
    "homeSize": 2, "homeAdmin": True, "maxHomeSize": 15, "rememberExpiresAt": 1716281940,
    "profile": {
        "autoSelectAudio": True, "defaultAudioLanguage": "ja", "defaultSubtitleLanguage": "en",
        "autoSelectSubtitle": 1, "defaultSubtitleAccessibility": 0, "defaultSubtitleForced": 1,
        "watchedIndicator": 1, "mediaReviewsVisibility": 1, "defaultAudioLanguages": ["ja", "en"],
        "defaultSubtitleLanguages": ["en"], "mediaReviewsLanguages": ["en", "de"],
    },
    "entitlements": ["android", "roku", "xbox_one", "ios", "windows", "xbox_360", "web", "linux", "mac"],
    "roles": ["plexpass"],
    "services": [
        {"identifier": f"service-{i}", "endpoint": f"https://service-{i}.provider.plex.tv",
         "token": f"service-token-{i:04d}-abcdefghij", "secret": f"service-secret-{i:04d}", "status": "online"}
        for i in range(6)
    ],
    "adsConsent": None, "adsConsentSetAt": None, "adsConsentReminderAt": None, "experimentalFeatures": False,
    "twoFactorEnabled": False, "backupCodesCreated": False,
    "subscription": {
        "active": True, "subscribedAt": "2021-04-12T18:21:12Z", "status": "Active", "paymentService": "braintree",
        "plan": "lifetime",
        "features": ["Android - Dolby Vision", "Android - PiP", "CU Sunset", "HRK_enable_EUR", "TREBLE-show-features",
                     "ad-countdown-timer", "adaptive_bitrate", "amazon-loop-debug", "avod-ad-analysis",
                     "avod-new-media", "blacklist_get_signin", "boost-voices", "camera_upload", "client-radio-stations",
                     "cloudflare-turnstile-required", "cloudsync", "collections", "comments_and_replies_push_settings",
                     "community_access_plex_tv", "companions_sonos", "content_filter", "custom-home-removal",
                     "disable_home_user_friendships", "disable_sharing_friendships", "downloads-gating", "drm_support",
                     "dvr", "dvr-block-unsupported-countries", "epg-recent-channels", "exclude restrictions",
                     "federated-auth", "friend_request_push_notifications", "grandfather-sync", "guided-upgrade",
                     "hardware_transcoding", "home", "hwtranscode", "imagga-v2", "increase-password-complexity",
                     "ios14-privacy-banner", "iterable-notification-tokens", "item_clusters", "keep-payment-method",
                     "kevin-bacon", "korea-consent", "le_isrg_root_x1", "lets_encrypt", "lightning-dvr-pivot",
                     "live-tv-support-incomplete-segments", "livetv", "lyrics", "metadata_search", "music-analysis",
                     "music_videos", "new_plex_pass_prices", "news-provider-sunset-modal", "nominatim", "pass",
                     "photos-favorites", "photos-metadata-edition", "photosV6-edit", "photosV6-tv-albums",
                     "pms_health", "premium-dashboard", "premium_music_metadata", "radio", "rate-limit-client-token",
                     "scrobbling-service-plex-tv", "session_bandwidth_restrictions", "session_kick",
                     "shared_server_notification", "shared_source_notification", "signin_notification",
                     "signin_with_apple", "silence-removal", "sleep-timer", "spring_serve_ad_provider",
                     "sync", "sweet-fades", "transcoder_cache", "tuner-sharing", "two-factor-authentication",
                     "unsupported-tuners", "upgrade-3ds2", "visualizers", "vod-schema", "vod_cloudflare",
                     "volume-leveling", "watch-together-invite", "watchlist-rss", "web_server_dashboard", "webhooks"],
    },
    "subscriptions": [{"active": True, "subscribedAt": "2021-04-12T18:21:12Z", "status": "Active",
                       "paymentService": "braintree", "plan": "lifetime", "features": ["webhooks", "sync"]}],
    "pastSubscriptions": [], "trials": [], "attributionPartner": None,
}
ACCOUNT_BODY = json.dumps(ACCOUNT).encode()
TRANSIENT_JSON = json.dumps({"MediaContainer": {"size": 0, "token": "transient-0123456789abcdef"}}).encode()
TRANSIENT_XML = (b'<?xml version="1.0" encoding="UTF-8"?>\n'
                 b'<MediaContainer size="0" token="transient-0123456789abcdef"></MediaContainer>\n')


def response(status: str, body: bytes, content_type: str) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


ANSWERS = {
    b"GET /api/v2/user": response("200 OK", ACCOUNT_BODY, "application/json"),
    b"POST /api/v2/users/signin": response("201 Created", ACCOUNT_BODY, "application/json"),
    b"GET /json/security/token": response("200 OK", TRANSIENT_JSON, "application/json"),
    b"GET /xml/security/token": response("200 OK", TRANSIENT_XML, "text/xml"),
}


def serve() -> None:
    """A single-threaded keep-alive server with canned answers; prints its
    port, then answers until stdin closes.  ``GET /stats`` gives its CPU time."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    print(listener.getsockname()[1], flush=True)
    buffers: dict[socket.socket, bytes] = {}
    served = 0
    while True:
        for key, _ in selector.select():
            if key.fileobj is sys.stdin:
                return
            if key.fileobj is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buffers[conn] = b""
                selector.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj  # type: ignore[assignment]
            data = conn.recv(65536)
            if not data:
                selector.unregister(conn)
                del buffers[conn]
                conn.close()
                continue
            data = buffers[conn] + data
            while b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(rest) < length:
                    break
                data = rest[length:]
                method, target = head.split(b" ", 2)[:2]
                key_ = method + b" " + target.split(b"?", 1)[0]
                if key_ == b"GET /stats":
                    body = json.dumps({"cpu": time.process_time(), "served": served}).encode()
                    conn.sendall(response("200 OK", body, "application/json"))
                    continue
                served += 1
                conn.sendall(ANSWERS.get(key_) or response("404 Not Found", b"", "text/plain"))
            buffers[conn] = data


class Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.process.stdout.readline())}"

    def cpu(self) -> float:
        return float(json.loads(urllib3.PoolManager().request("GET", self.url + "/stats").data)["cpu"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


# --------------------------------------------------------------------------- the clients

HEADERS = {
    "Accept": "application/json",
    "X-Plex-Client-Identifier": "bench-client",
    "X-Plex-Product": "plexauth",
    "X-Plex-Version": "0.1.0",
    "X-Plex-Token": TOKEN,
}

# One process per operation holds both clients and times them in turn
# (REPEATS blocks of N calls each, after 50 untimed calls of each), so that
# both see the same machine at nearly the same moment (in A B B A order); it
# prints the seconds
# of each block as JSON.
WARM = """
import sys, time, json
sys.path.insert(0, {folder!r})
import urllib3
import plexauth
from xml.etree import ElementTree

config = plexauth.Config(client_identifier="bench-client", token={token!r}, server_url={url!r} + {prefix!r},
                         plex_tv_url={url!r} + "/api/v2")

def with_plexauth():
    if {op!r} == "user":
        return plexauth.get_token_details(config).username
    if {op!r} == "signin":
        return plexauth.post_users_sign_in_data(config, "me@example.com", "password").auth_token
    return plexauth.get_transient_token(config)

pool = urllib3.PoolManager()
headers = {headers!r}
form = {{"login": "me@example.com", "password": "password", "rememberMe": "false"}}
signin_headers = dict(headers)
del signin_headers["X-Plex-Token"]

def with_urllib3():
    if {op!r} == "user":
        return json.loads(pool.request("GET", {url!r} + "/api/v2/user", headers=headers).data)["username"]
    if {op!r} == "signin":
        answer = pool.request_encode_body("POST", {url!r} + "/api/v2/users/signin", fields=form,
                                          headers=signin_headers, encode_multipart=False)
        return json.loads(answer.data)["authToken"]
    data = pool.request("GET", {url!r} + {prefix!r} + "/security/token?type=delegation&scope=all",
                        headers=headers).data
    if {prefix!r} == "/xml":
        return ElementTree.fromstring(data).get("token")
    return json.loads(data)["MediaContainer"]["token"]

assert with_plexauth() == with_urllib3()
clients = {{"urllib3": with_urllib3, "plexauth": with_plexauth}}
for call in clients.values():
    for _ in range(50):
        call()
times = {{name: [] for name in clients}}
order = list(clients)
for _ in range({repeats}):
    for name in order:  # A B, then B A: a drifting machine weighs on both alike
        call = clients[name]
        started = time.perf_counter()
        for _ in range({calls}):
            call()
        times[name].append(time.perf_counter() - started)
    order.reverse()
print(json.dumps(times))
"""

ONESHOT = {
    "plexauth": """
import sys
sys.path.insert(0, {folder!r})
import plexauth
config = plexauth.Config(client_identifier="bench-client", token={token!r}, plex_tv_url={url!r} + "/api/v2")
plexauth.get_token_details(config).username
""",
    "urllib3": """
import sys
sys.path.insert(0, {folder!r})
import json, urllib3
json.loads(urllib3.PoolManager().request("GET", {url!r} + "/api/v2/user", headers={headers!r}).data)["username"]
""",
}

# --------------------------------------------------------------------------- measuring


def run(code: str, env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) and stdout of ``python -I -c code``."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-I", "-c", code], stdout=subprocess.PIPE, text=True,
                               env=None if env is None else {**os.environ, **env})
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status
    if process.returncode != 0:
        raise SystemExit(f"benchmark child failed ({process.returncode}):\n{code}")
    return wall, usage.ru_maxrss, out


def interleaved(codes: dict[str, str], repeats: int,
                env: dict[str, str] | None = None) -> dict[str, list[tuple[float, int, str]]]:
    results: dict[str, list[tuple[float, int, str]]] = {name: [] for name in codes}
    for code in codes.values():  # one untimed run each: page cache, pyc files
        run(code, env)
    for _ in range(repeats):
        for name, code in codes.items():
            results[name].append(run(code, env))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired(ours: list[tuple[float, int, str]], floor: list[tuple[float, int, str]], field: int) -> float:
    """The median ratio of runs made one after the other (field 0: wall time,
    1: peak RSS): steadier than a ratio of medians on a machine whose speed
    drifts."""
    return median([float(a[field]) / float(b[field]) for a, b in zip(ours, floor)])


def importtime_top(folder: str, count: int = 10) -> list[tuple[int, int, str]]:
    """(self µs, cumulative µs, module) of what ``import plexauth`` adds to urllib3."""
    code = (f"import sys; sys.path.insert(0, {folder!r}); import urllib3; sys.stderr.write('--mark--\\n'); "
            "import plexauth")
    err = subprocess.run([sys.executable, "-I", "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True).stderr
    rows = []
    for line in err.split("--mark--\n", 1)[1].splitlines():
        if line.startswith("import time:") and "|" in line:
            own, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
            if own.isdigit():
                rows.append((int(own), int(cumulative), name))
    return sorted(rows, reverse=True)[:count]


def cold_import(folder: str) -> float:
    cold = interleaved(
        {"python -c pass": "pass",
         "import urllib3": f"import sys; sys.path.insert(0, {folder!r}); import urllib3",
         "import plexauth": f"import sys; sys.path.insert(0, {folder!r}); import plexauth"},
        COLD_RUNS,
    )
    times = {name: median([r[0] for r in runs]) * 1000 for name, runs in cold.items()}
    ratio = paired(cold["import plexauth"], cold["import urllib3"], 0)
    print(f"\ncold import, median of {COLD_RUNS} interleaved runs (whole process; the ratio is the median of"
          " the ratios of runs made one after the other)")
    for name, ms in times.items():
        print(f"  {name:<18} {ms:8.1f} ms")
    print(f"  plexauth adds {times['import plexauth'] - times['import urllib3']:.1f} ms to urllib3: ratio {ratio:.2f}")
    # Whole processes vary by several ms from run to run; timed inside one, the import itself does not.
    inner = interleaved({"inner": f"import sys, time; sys.path.insert(0, {folder!r}); import urllib3; "
                                  "started = time.perf_counter(); import plexauth; "
                                  "print(time.perf_counter() - started)"}, COLD_RUNS)["inner"]
    own = median([float(r[2]) for r in inner]) * 1000
    print(f"  import plexauth after urllib3, timed inside the process: {own:.1f} ms "
          f"({own / times['import urllib3']:.1%} of importing urllib3)")
    print("  what it adds (python -X importtime, self µs / cumulative µs):")
    for own, cumulative, name in importtime_top(folder):
        print(f"    {own:7d} {cumulative:7d}  {name}")
    return ratio


def one_shot(fill: dict[str, Any], label: str = "", env: dict[str, str] | None = None) -> tuple[float, float]:
    shots = interleaved({name: code.format(**fill) for name, code in ONESHOT.items()}, ONESHOT_RUNS, env)
    wall = {name: median([r[0] for r in runs]) * 1000 for name, runs in shots.items()}
    rss = {name: median([float(r[1]) for r in runs]) / 1024 for name, runs in shots.items()}
    ratios = paired(shots["plexauth"], shots["urllib3"], 0), paired(shots["plexauth"], shots["urllib3"], 1)
    print(f"\none-shot process (import + one GET /user{label}), median of {ONESHOT_RUNS} interleaved runs "
          "(ratios: medians of paired runs)")
    print(f"  {'':<10} {'wall ms':>9} {'peak RSS MiB':>13}")
    for name in ONESHOT:
        print(f"  {name:<10} {wall[name]:9.1f} {rss[name]:13.1f}")
    print(f"  ratio      {ratios[0]:9.2f} {ratios[1]:13.2f}")
    return ratios


def https_server(folder: str) -> tuple[str, dict[str, str], Callable[[], None]]:
    """A local TLS server (a trustme certificate) that answers ``GET /user``;
    its URL, the environment that makes both clients trust it, and how to
    stop it.  Both load the system's CA store with the test CA added to it
    (SSL_CERT_FILE), as a cron run to plex.tv loads the system's store."""
    import trustme  # noqa: PLC0415 (a test extra: only the HTTPS run needs it)

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ACCOUNT_BODY)))
            self.end_headers()
            self.wfile.write(ACCOUNT_BODY)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    paths = ssl.get_default_verify_paths()
    store = paths.cafile or paths.openssl_cafile
    bundle = os.path.join(folder, "ca-bundle.pem")
    with open(bundle, "wb") as out:
        if store and os.path.isfile(store):
            with open(store, "rb") as system:
                out.write(system.read())
        out.write(ca.cert_pem.bytes())

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    return f"https://127.0.0.1:{httpd.server_address[1]}", {"SSL_CERT_FILE": bundle}, stop


def warm(fill: dict[str, Any], server: Server) -> dict[str, float]:
    print(f"\nwarm calls: {WARM_REPEATS} interleaved blocks of {WARM_CALLS} calls per client, in one process "
          f"per operation; median µs/call, and the median ratio of back-to-back blocks")
    print(f"  {'operation':<24} {'urllib3 µs/call':>16} {'plexauth µs/call':>17} {'ratio':>6} {'server busy':>12}")
    ratios = {}
    for op, prefix, label in (("user", "", "get_token_details"), ("signin", "", "sign-in POST"),
                              ("token", "/json", "transient token JSON"), ("token", "/xml", "transient token XML")):
        code = WARM.format(op=op, prefix=prefix, calls=WARM_CALLS, repeats=WARM_REPEATS, **fill)
        before = server.cpu()
        blocks = json.loads(run(code)[2])
        busy = server.cpu() - before
        per_call = {name: median(seconds) / WARM_CALLS * 1e6 for name, seconds in blocks.items()}
        # The median of the ratios of blocks run back to back: steadier than a ratio of medians
        # when the machine's speed drifts during the run.
        ratios[label] = median([ours / floor for ours, floor in zip(blocks["plexauth"], blocks["urllib3"])])
        # The server's CPU time over the clients' timed time (it also served the untimed calls, so this
        # overstates it): far below 100 % means the clients, not the server, set the pace.
        timed = sum(sum(seconds) for seconds in blocks.values())
        print(f"  {label:<24} {per_call['urllib3']:16.1f} {per_call['plexauth']:17.1f} {ratios[label]:6.2f} "
              f"{busy / timed:11.0%}")
    return ratios


def main(warm_only: bool = False) -> None:
    started = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="plexauth-bench-")
    shutil.copy(MODULE, folder)
    py_compile.compile(os.path.join(folder, "plexauth.py"), doraise=True)  # as pip would, for a fair import
    server = Server()
    try:
        version = getattr(urllib3, "__version__", "?")
        print(f"python {sys.version.split()[0]}, urllib3 {version}, {os.cpu_count()} CPUs, plexauth from {MODULE}")
        fill = {"folder": folder, "token": TOKEN, "url": server.url, "headers": HEADERS}
        import_ratio, (oneshot_ratio, rss_ratio), https_ratio = 0.0, (0.0, 0.0), 0.0
        if not warm_only:
            import_ratio, (oneshot_ratio, rss_ratio) = cold_import(folder), one_shot(fill)
            url, env, stop = https_server(folder)
            try:
                https_ratio = one_shot({**fill, "url": url}, " over HTTPS, the system's CA store loaded", env)[0]
            finally:
                stop()
        call_ratio = warm(fill, server)["get_token_details"]
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\ntargets: import <= 1.20, warm get_token_details <= 1.15, one-shot over HTTPS <= 1.10 "
          f"(took {time.perf_counter() - started:.0f} s)")
    print(f"bench: import={import_ratio:.2f} call={call_ratio:.2f} oneshot={oneshot_ratio:.2f} "
          f"oneshot_https={https_ratio:.2f} rss={rss_ratio:.2f}")


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    elif sys.argv[1:] in ([], ["--warm-only"], ["--quick"]):
        if "--quick" in sys.argv:  # CI: shows that the script runs; its figures mean little
            COLD_RUNS = ONESHOT_RUNS = WARM_REPEATS = 2
            WARM_CALLS = 100
        main(warm_only="--warm-only" in sys.argv)  # --warm-only: for work on the per-call cost
    else:
        raise SystemExit("usage: bench.py [--warm-only | --quick]")
