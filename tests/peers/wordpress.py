"""A real WordPress (Debian's package) on PHP's built-in server with a private MariaDB
(PYTEST_DONT_REWRITE: test modules import it before pytest loads it as a plugin).

Nothing is installed at test time: ``.ci/run`` installs ``wordpress php-cli php-mysql
mariadb-server``. Without them the tests that need this site skip, except in CI where they fail.

Per session: a MariaDB data folder and server on a Unix socket only (no TCP port to clash), a
site folder linking ``/usr/share/wordpress``'s code with a plain ``wp-config.php``
(``WP_ENVIRONMENT_TYPE`` local, without which application passwords are ignored over plain
http), an install through PHP's CLI, an administrator with an application password, and
``php -S`` on a free loopback port.

A must-use plugin adds what a test needs and WordPress alone does not do:

- ``wp_mail`` is silenced (there is no sendmail here);
- **faults**: a test queues answers for the next REST requests, the way a host's rate limiter
  or a security plugin answers (429 with ``Retry-After``), a change of the response's shape
  (a field removed, as a plugin filtering ``rest_prepare_post`` would), or an answer that never
  comes in time after the request was carried out (a timeout after the write).

Maintenance mode is WordPress's own: a ``.maintenance`` file makes every request a 503 with
``Retry-After: 600`` (``wp_maintenance()``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port

WORDPRESS_SOURCE = Path("/usr/share/wordpress")
_NEEDED = ("php", "mariadbd", "mariadb-install-db", "mariadb")


@dataclass
class WordPressSite:
    """The running site: its URL, an administrator's application password, fault injection."""

    url: str
    username: str
    application_password: str
    root: Path

    def queue_fault(
        self,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
        drop_field: str | None = None,
        hang_after: int = 0,
        times: int = 1,
    ) -> None:
        """The next ``times`` REST requests answer ``status`` with ``headers`` and a JSON
        ``body``, or, with ``drop_field``, answer normally minus that post field; with
        ``hang_after``, they are carried out and then answered only after that many seconds.
        A fault with none of these lets its request through unchanged."""
        fault = {
            "status": status,
            "headers": headers or {},
            "body": body,
            "drop_field": drop_field,
            "hang_after": hang_after,
        }
        with _locked(self.root / "faults.json") as faults:
            faults.extend([fault] * times)

    def form(self, password: str | None = None) -> dict[str, str]:
        """A WordPress connection form for this site (its own password by default)."""
        return {
            "site_url": self.url,
            "username": self.username,
            "application_password": password or self.application_password,
        }

    def new_application_password(self) -> tuple[str, str]:
        """A fresh application password of the administrator: (password, uuid to revoke)."""
        with httpx.Client(auth=(self.username, self.application_password)) as wp:
            created = wp.post(
                f"{self.url}/wp-json/wp/v2/users/me/application-passwords",
                json={"name": f"connection-{os.urandom(3).hex()}"},
            )
        created.raise_for_status()
        return created.json()["password"], created.json()["uuid"]

    def revoke_application_password(self, uuid: str) -> None:
        with httpx.Client(auth=(self.username, self.application_password)) as wp:
            wp.delete(
                f"{self.url}/wp-json/wp/v2/users/me/application-passwords/{uuid}"
            ).raise_for_status()

    def rest(self, method: str, route: str, **kwargs: Any) -> Any:
        """A REST call as the administrator (what the site really holds). It goes through
        ``?rest_route=``, so it never takes a fault queued for the code under test."""
        params = {**kwargs.pop("params", {}), "rest_route": f"/{route}"}
        with httpx.Client(auth=(self.username, self.application_password)) as wp:
            response = wp.request(method, f"{self.url}/", params=params, **kwargs)
        response.raise_for_status()
        return response.json()

    def clear_faults(self) -> None:
        with _locked(self.root / "faults.json") as faults:
            faults.clear()

    @contextmanager
    def maintenance(self) -> Iterator[None]:
        """WordPress's maintenance mode for the duration of the block."""
        flag = self.root / ".maintenance"
        flag.write_text(f"<?php $upgrading = {int(time.time())};\n")
        try:
            yield
        finally:
            flag.unlink()


@contextmanager
def _locked(path: Path) -> Iterator[list[dict[str, Any]]]:
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read()
        faults: list[dict[str, Any]] = json.loads(text) if text.strip() else []
        yield faults
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(faults))


def _bin(name: str) -> str:
    """A binary from PATH, or from the sbin folders a non-root PATH may lack (mariadbd)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def _missing() -> list[str]:
    missing = [name for name in _NEEDED if _bin(name) == name]
    if not (WORDPRESS_SOURCE / "wp-settings.php").exists():
        missing.append("wordpress")
    return missing


@pytest.fixture(scope="session")
def wordpress_site() -> Iterator[WordPressSite]:
    """A fresh WordPress for the session (5-8 s to set up on two busy cores)."""
    missing = _missing()
    if missing:
        reason = f"WordPress peer needs Debian packages (missing: {', '.join(missing)})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs them")
        pytest.skip(f"{reason}: apt-get install -y wordpress php-cli php-mysql mariadb-server")
    # A short path: the MariaDB socket path must stay under ~100 characters.
    work = Path(tempfile.mkdtemp(prefix="wp-", dir="/tmp"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        socket_path = work / "db.sock"
        processes.append(_start_mariadb(work, socket_path))
        _create_database(socket_path)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        site = work / "site"
        _copy_wordpress(site, socket_path, url)
        credentials = _install(site)
        processes.append(_serve(site, port, work / "php.log"))
        _wait_for(f"{url}/wp-json/", processes[-1], work / "php.log")
        yield WordPressSite(
            url=url,
            username="admin",
            application_password=credentials["password"],
            root=site,
        )
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_faults_left_over(request: pytest.FixtureRequest) -> None:
    """A test that uses the site starts with no fault queued by an earlier one (the order of
    tests differs from run to run when they are spread over processes)."""
    if "wordpress_site" in request.fixturenames:
        site: WordPressSite = request.getfixturevalue("wordpress_site")
        site.clear_faults()


def _start_mariadb(work: Path, socket_path: Path) -> subprocess.Popen[bytes]:
    data = work / "db"
    user = _os_user()
    subprocess.run(
        [
            _bin("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={data}",
            f"--user={user}",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    with (work / "mariadb.log").open("wb") as log:
        process = subprocess.Popen(
            [
                _bin("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={socket_path}",
                "--skip-networking",
                f"--user={user}",
                f"--pid-file={work / 'mariadb.pid'}",
                f"--log-error={work / 'mariadb.err'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            err = work / "mariadb.err"
            pytest.fail(f"MariaDB did not start: {err.read_text() if err.exists() else ''}")
        time.sleep(0.05)
    return process


def _os_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _create_database(socket_path: Path) -> None:
    # mariadb-install-db made a socket-authenticated account for the OS user.
    sql = (
        "CREATE DATABASE wordpress CHARACTER SET utf8mb4;"
        "CREATE USER 'wp'@'localhost' IDENTIFIED BY 'wp';"
        "GRANT ALL ON wordpress.* TO 'wp'@'localhost';"
    )
    subprocess.run(
        [_bin("mariadb"), "--no-defaults", f"--socket={socket_path}", "-u", _os_user(), "-e", sql],
        check=True,
        capture_output=True,
    )


_CONFIG = """<?php
define('DB_NAME', 'wordpress');
define('DB_USER', 'wp');
define('DB_PASSWORD', 'wp');
define('DB_HOST', 'localhost:{socket}');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';
{keys}
define('WP_ENVIRONMENT_TYPE', 'local');
define('DISABLE_WP_CRON', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_HOME', '{url}');
define('WP_SITEURL', '{url}');
define('WP_DEBUG', false);
define('BIZ_TEST_FAULTS', __DIR__ . '/faults.json');
if (!defined('ABSPATH')) {{
    define('ABSPATH', __DIR__ . '/');
}}
require_once ABSPATH . 'wp-settings.php';
"""

_ROUTER = """<?php
// PHP's built-in server: real files as they are, everything else through WordPress.
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($path !== '/' && is_file(__DIR__ . $path)) {
    return false;
}
$_SERVER['SCRIPT_NAME'] = '/index.php';
require __DIR__ . '/index.php';
"""

_MU_PLUGIN = r"""<?php
/* Test-only: silence mail; answer queued faults for REST requests. */
function wp_mail() { return true; }

function biz_test_next_fault() {
    $handle = fopen(BIZ_TEST_FAULTS, 'c+');
    if (!$handle) { return null; }
    flock($handle, LOCK_EX);
    $text = stream_get_contents($handle);
    $faults = $text ? json_decode($text, true) : array();
    $fault = $faults ? array_shift($faults) : null;
    if ($fault) {
        ftruncate($handle, 0);
        rewind($handle);
        fwrite($handle, json_encode($faults));
    }
    flock($handle, LOCK_UN);
    fclose($handle);
    return $fault;
}

if (strpos($_SERVER['REQUEST_URI'] ?? '', '/wp-json/') !== false) {
    $biz_fault = biz_test_next_fault();
    if ($biz_fault && $biz_fault['status']) {
        http_response_code($biz_fault['status']);
        foreach ($biz_fault['headers'] as $name => $value) { header("$name: $value"); }
        header('Content-Type: application/json; charset=UTF-8');
        echo json_encode($biz_fault['body']);
        exit;
    }
    if ($biz_fault && $biz_fault['drop_field']) {
        $GLOBALS['biz_drop_field'] = $biz_fault['drop_field'];
        add_filter('rest_prepare_post', function ($response) {
            $data = $response->get_data();
            unset($data[$GLOBALS['biz_drop_field']]);
            $response->set_data($data);
            return $response;
        });
    }
    if ($biz_fault && !empty($biz_fault['hang_after'])) {
        $GLOBALS['biz_hang_after'] = (int) $biz_fault['hang_after'];
        add_filter('rest_post_dispatch', function ($response) {
            sleep($GLOBALS['biz_hang_after']);
            return $response;
        });
    }
}
"""

_INSTALL = """<?php
define('WP_INSTALLING', true);
require __DIR__ . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
$installed = wp_install('Peer site', 'admin', 'admin@example.com', true, '', 'admin-password-1');
update_option('permalink_structure', '/%postname%/');
$password = WP_Application_Passwords::create_new_application_password(
    $installed['user_id'], array('name' => 'tests')
);
echo json_encode(array('user_id' => $installed['user_id'], 'password' => $password[0]));
"""


def _copy_wordpress(site: Path, socket_path: Path, url: str) -> None:
    # The code is shared read-only with the package (linked, not copied: ~90 MB); the
    # configuration, must-use plugin and uploads are this site's own.
    site.mkdir()
    for entry in WORDPRESS_SOURCE.iterdir():
        if entry.name in ("wp-admin", "wp-includes"):
            (site / entry.name).symlink_to(entry)
        elif entry.is_file() and not entry.is_symlink():
            shutil.copy2(entry, site / entry.name)
    content = site / "wp-content"
    (content / "themes").mkdir(parents=True)
    for theme in (WORDPRESS_SOURCE / "wp-content" / "themes").iterdir():
        (content / "themes" / theme.name).symlink_to(theme)
    (content / "plugins").mkdir()
    keys = "\n".join(
        f"define('{name}', '{os.urandom(24).hex()}');"
        for name in (
            "AUTH_KEY",
            "SECURE_AUTH_KEY",
            "LOGGED_IN_KEY",
            "NONCE_KEY",
            "AUTH_SALT",
            "SECURE_AUTH_SALT",
            "LOGGED_IN_SALT",
            "NONCE_SALT",
        )
    )
    (site / "wp-config.php").write_text(_CONFIG.format(socket=socket_path, keys=keys, url=url))
    (site / "router.php").write_text(_ROUTER)
    (site / "faults.json").write_text("[]")
    (content / "mu-plugins").mkdir()
    (content / "mu-plugins" / "test-peer.php").write_text(_MU_PLUGIN)
    (content / "uploads").mkdir()


def _install(site: Path) -> dict[str, Any]:
    script = site / "install-peer.php"
    script.write_text(_INSTALL)
    done = subprocess.run(
        ["php", str(script)], cwd=site, check=False, capture_output=True, timeout=120
    )
    script.unlink()
    output = done.stdout.decode()
    if done.returncode != 0 or not output.strip().startswith("{"):
        pytest.fail(f"WordPress install failed: {output[-2000:]} {done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(output[output.index("{") :])
    return result


def _serve(site: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            ["php", "-S", f"127.0.0.1:{port}", "-t", str(site), str(site / "router.php")],
            cwd=site,
            env={**os.environ, "PHP_CLI_SERVER_WORKERS": "4"},
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: the workers outlive the master unless the group is stopped.
            start_new_session=True,
        )


def _wait_for(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"php -S exited: {log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"WordPress did not answer at {url}: {log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
