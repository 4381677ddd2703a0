"""A real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver, kube-controller-manager.

Like controller-runtime's envtest, but with the controller-manager (so Deployments expand into pods, garbage
collection, namespace deletion and service-account tokens work) and optionally kube-scheduler. Pods still need
a kubelet: see ``tests.support.kubelet``.

Binaries come from ``KUBEBUILDER_ASSETS`` or from the cache ``scripts/k8s-bin.sh`` (``make k8s-bin``) fills.
Everything else (certificates, kubeconfig, etcd data, logs) lives in a temp dir removed by ``stop()``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "k8s-bin.sh"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"  # a config value only: nothing ever routes there
KCM_CONTROLLERS = ",".join(
    f"{name}-controller"
    for name in (
        "deployment",
        "replicaset",
        "statefulset",
        "daemonset",
        "job",
        "cronjob",
        "ttl-after-finished",
        "garbage-collector",
        "namespace",
        "serviceaccount",
        "serviceaccount-token",
        "disruption",
        "root-ca-certificate-publisher",
        "clusterrole-aggregation",
        "resourcequota",
        "pod-garbage-collector",
    )
)
"""An explicit list. Left out on purpose: node-lifecycle (it would taint the process kubelet's node for
missing lease heartbeats), endpoints/endpointslice (Endpoints refuse the pods' loopback IP), cloud, volume and
certificate controllers that nothing here uses."""
START_TIMEOUT_S = float(os.environ.get("LATTICE_K8S_START_TIMEOUT", "60"))
STOP_TIMEOUT_S = 5.0


class ControlPlaneError(RuntimeError):
    """A component did not start or become ready; the message carries the tail of its log."""


# --- binaries -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    """Paths of the control-plane executables; the optional ones are None when absent."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path | None
    kube_scheduler: Path | None
    kubectl: Path | None


def _script_default(name: str) -> str:
    """Reads a version default from scripts/k8s-bin.sh, so that script stays the one place to bump it."""
    if value := os.environ.get(name):
        return value
    match = re.search(rf'^{name}="\$\{{{name}:-([^}}]+)\}}"', BUILD_SCRIPT.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no default for {name} in {BUILD_SCRIPT}")
    return match.group(1)


def cache_bin_dir() -> Path:
    """The directory scripts/k8s-bin.sh builds into (the same formula as the script)."""
    root = Path(os.environ.get("LATTICE_CACHE") or Path.home() / ".cache" / "station-lattice")
    k8s, etcd = _script_default("K8S_VERSION"), _script_default("ETCD_VERSION")
    return root / "k8s" / f"{k8s.removeprefix('v')}-etcd{etcd.removeprefix('v')}" / "bin"


def find_binaries() -> Binaries | None:
    """KUBEBUILDER_ASSETS first, then the build cache; None when etcd or kube-apiserver is missing.

    Each tool is looked up on its own, so envtest's assets (etcd, kube-apiserver, kubectl only) can be
    combined with a controller-manager from the cache.
    """
    dirs = []
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        dirs.append(Path(assets))
    cached = cache_bin_dir()
    if (cached.parent / ".complete").exists():
        dirs.append(cached)

    def lookup(name: str) -> Path | None:
        for directory in dirs:
            if os.access(directory / name, os.X_OK):
                return directory / name
        return None

    etcd, apiserver = lookup("etcd"), lookup("kube-apiserver")
    if etcd is None or apiserver is None:
        return None
    return Binaries(
        etcd=etcd,
        kube_apiserver=apiserver,
        kube_controller_manager=lookup("kube-controller-manager"),
        kube_scheduler=lookup("kube-scheduler"),
        kubectl=lookup("kubectl"),
    )


# --- certificates ---------------------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    ca_key: ec.EllipticCurvePrivateKey | None,
    ca_cert: x509.Certificate | None,
    subject: x509.Name,
    *,
    usage: str,
    sans: list[x509.GeneralName] | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issues a one-day ECDSA certificate; without ca_key/ca_cert it is a self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    is_ca = usage == "ca"
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not is_ca:
        oid = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key or key, hashes.SHA256())
    return key, cert


@dataclass(frozen=True)
class Pki:
    """File paths of everything the components and clients need to trust each other."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public_key: Path
    sa_private_key: Path


def write_pki(directory: Path) -> Pki:
    """Generates a CA, the apiserver serving cert, an admin client cert and the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _issue(
        None, None, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lattice-test-ca")]), usage="ca"
    )
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the "kubernetes" Service's cluster IP
        *(
            x509.DNSName(name)
            for name in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            )
        ),
    ]
    serving_key, serving = _issue(
        ca_key,
        ca_cert,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        usage="server",
        sans=sans,
    )
    admin_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "lattice-admin"),
        ]
    )
    admin_key, admin = _issue(ca_key, ca_cert, admin_name, usage="client")
    # RSA: every consumer of service-account keys (token controller, TokenRequest, discovery) takes it.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = Pki(
        *(
            directory / name
            for name in (
                "ca.crt",
                "ca.key",
                "apiserver.crt",
                "apiserver.key",
                "admin.crt",
                "admin.key",
                "sa.pub",
                "sa.key",
            )
        )
    )
    pki.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.ca_key.write_bytes(_pem_key(ca_key))
    pki.serving_cert.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    pki.serving_key.write_bytes(_pem_key(serving_key))
    pki.admin_cert.write_bytes(admin.public_bytes(serialization.Encoding.PEM))
    pki.admin_key.write_bytes(_pem_key(admin_key))
    pki.sa_public_key.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    pki.sa_private_key.write_bytes(_pem_key(sa_key))
    for path in (pki.ca_key, pki.serving_key, pki.admin_key, pki.sa_private_key):
        path.chmod(0o600)
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    """An admin kubeconfig (JSON is valid YAML) with the certificates referenced by path."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "lattice-test", "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)}}
        ],
        "users": [
            {
                "name": "lattice-admin",
                "user": {"client-certificate": str(pki.admin_cert), "client-key": str(pki.admin_key)},
            }
        ],
        "contexts": [
            {"name": "lattice-test", "context": {"cluster": "lattice-test", "user": "lattice-admin"}}
        ],
        "current-context": "lattice-test",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


# --- processes ------------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so they differ; a race remains, as in envtest)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def read_rss_kib(pid: int) -> int:
    """Resident set size of one process, from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def terminate_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM to the process group, SIGKILL if it is still there after timeout_s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Component:
    """One running binary with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if (code := self.proc.poll()) is not None:
            raise ControlPlaneError(
                f"{self.name} exited with code {code}; last log lines:\n{log_tail(self.log)}"
            )


def _start(name: str, argv: list[str], log_dir: Path) -> Component:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        # Own session: stop() signals the whole group, and a Ctrl-C in the terminal does not reach it first.
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return Component(name, proc, log)


# --- control plane --------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager (+ kube-scheduler) on loopback; a context manager.

    After ``start()``: ``kubeconfig`` (admin, system:masters), ``server`` (https URL), ``pki``,
    ``startup_s`` and ``rss_kib()`` for measurements.
    """

    def __init__(self, binaries: Binaries, *, scheduler: bool = True, keep_dir: bool | None = None) -> None:
        self.binaries = binaries
        self.run_scheduler = scheduler and binaries.kube_scheduler is not None
        self.keep_dir = os.environ.get("LATTICE_KEEP_K8S_DIRS") == "1" if keep_dir is None else keep_dir
        self.dir = Path()
        self.components: list[Component] = []
        self.server = ""
        self.kubeconfig = Path()
        self.pki: Pki | None = None
        self.startup_s = 0.0

    @property
    def has_controllers(self) -> bool:
        return self.binaries.kube_controller_manager is not None

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        started = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="lattice-k8s-"))
        atexit.register(self.stop)
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started

    def _start_all(self) -> None:
        logs = self.dir / "logs"
        logs.mkdir()
        self.pki = pki = write_pki(self.dir / "pki")
        etcd_port, peer_port, api_port = free_ports(3)
        self.server = f"https://127.0.0.1:{api_port}"
        self.kubeconfig = self.dir / "admin.kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, pki)

        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = _start(
            "etcd",
            [
                str(self.binaries.etcd),
                "--name=default",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            logs,
        )
        self.components.append(etcd)
        self._wait(etcd, lambda: _http_ok(f"{etcd_url}/health"), "etcd /health")

        apiserver = _start(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                "--allow-privileged=true",
                # The "kubernetes" Service's endpoints would be 127.0.0.1, which Endpoints validation refuses.
                "--endpoint-reconciler-type=none",
                # Nodes get the not-ready taint from this plugin, and no node-lifecycle controller lifts it.
                "--disable-admission-plugins=TaintNodesByCondition"
                + ("" if self.has_controllers else ",ServiceAccount"),  # the SA controller creates "default"
                "--storage-media-type=application/json",  # readable with etcdctl when debugging
                "--v=1",
            ],
            logs,
        )
        self.components.append(apiserver)
        self._wait(apiserver, lambda: self._api_ok("/readyz"), "kube-apiserver /readyz")

        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=1"]
        kcm = None
        if self.binaries.kube_controller_manager is not None:
            kcm = _start(
                "kube-controller-manager",
                [
                    str(self.binaries.kube_controller_manager),
                    *common,
                    f"--controllers={KCM_CONTROLLERS}",
                    f"--service-account-private-key-file={pki.sa_private_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    "--concurrent-gc-syncs=5",
                ],
                logs,
            )
            self.components.append(kcm)
        if self.run_scheduler:
            assert self.binaries.kube_scheduler is not None
            self.components.append(
                _start("kube-scheduler", [str(self.binaries.kube_scheduler), *common], logs)
            )
        if kcm is not None:
            # The serviceaccount controller creating "default" proves the controller-manager is syncing.
            self._wait(
                kcm,
                lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                "the default ServiceAccount (kube-controller-manager)",
            )
        else:
            self._wait(apiserver, lambda: self._api_ok("/api/v1/namespaces/default"), "the default namespace")

    def _wait(self, component: Component, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            for each in self.components:
                each.check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"timed out after {START_TIMEOUT_S:.0f} s waiting for {what}; last lines of "
                    f"{component.log}:\n{log_tail(component.log)}"
                )
            time.sleep(0.1)

    def ssl_context(self) -> ssl.SSLContext:
        assert self.pki is not None, "not started"
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def api_get(self, path: str) -> Any:
        """GET a path of the API as admin and decode the JSON (for readiness checks and debugging)."""
        with urllib.request.urlopen(self.server + path, context=self.ssl_context(), timeout=5) as response:
            return json.load(response)

    def _api_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(
                self.server + path, context=self.ssl_context(), timeout=2
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def rss_kib(self) -> dict[str, int]:
        return {component.name: read_rss_kib(component.proc.pid) for component in self.components}

    def log_path(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    def stop(self) -> None:
        """Stops the components in reverse order and removes the temp dir; safe to call twice."""
        atexit.unregister(self.stop)
        for component in reversed(self.components):
            terminate_group(component.proc, STOP_TIMEOUT_S)
        self.components = []
        if self.dir != Path() and self.dir.exists():
            if self.keep_dir:
                print(f"kept the control plane's dir {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_control_plane(**kwargs: Any) -> Iterator[ControlPlane]:
    """A started ControlPlane from find_binaries(); raises if there are no binaries."""
    binaries = find_binaries()
    if binaries is None:
        raise ControlPlaneError(missing_binaries_message())
    with ControlPlane(binaries, **kwargs) as plane:
        yield plane


def missing_binaries_message() -> str:
    return (
        f"no etcd/kube-apiserver found: run `make k8s-bin` (builds them into {cache_bin_dir()}) "
        "or set KUBEBUILDER_ASSETS to a directory holding them"
    )
