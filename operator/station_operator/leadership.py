"""One active operator among several replicas: a Kubernetes Lease (``coordination.k8s.io/v1``), as
kube-controller-manager and every kubebuilder operator elect their leader.

Why a Lease and not kopf's peering: peering needs its own CRD and RBAC, pauses *both* operators when two have the
same priority (a Deployment's replicas all do), and its keep-alive is a minute by default. A Lease is a built-in
object that ``kubectl get lease`` shows, every write to it is a compare-and-set on its resourceVersion, and the
timings are ours: a standby takes over ``lease_duration_s`` after the active replica's last renewal (15 s by
default; the test control plane measures it).

* A standby runs no handler at all: it polls the Lease every ``retry_s`` and serves ``/healthz`` meanwhile (the
  liveness probe must not kill it for waiting).
* The active replica renews every ``renew_s``. If it has not renewed for ``renew_deadline_s`` (shorter than the
  lease), it stops at once (exit 1: its pod restarts as a standby), before anyone else may take the lease: two
  operators never act at the same time, even across a network partition.
* A standby judges the lease expired by what it *observed*: the time it last saw the Lease change, on its own
  clock, not the holder's renewTime (clocks differ between nodes).
* On SIGTERM the active replica gives the lease up, so that a rolling update hands over at once.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


class Verdict(enum.Enum):
    RENEW = "renew"
    ACQUIRE = "acquire"
    WAIT = "wait"


@dataclass(frozen=True)
class Observed:
    """The Lease as a candidate last saw it: holder, resourceVersion, and when (its own monotonic clock) it saw
    that version first."""

    holder: str
    version: str
    duration_s: float
    seen_at: float


def decide(observed: Observed | None, me: str, now: float) -> Verdict:
    """Pure: what a candidate does with the Lease. No lease, or one nobody holds: take it. Ours: renew it.
    Another's that has not changed for its duration (on our clock): take it. Else wait."""
    if observed is None or not observed.holder:
        return Verdict.ACQUIRE
    if observed.holder == me:
        return Verdict.RENEW
    if now - observed.seen_at > observed.duration_s:
        return Verdict.ACQUIRE
    return Verdict.WAIT


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "station-lattice-operator"
    identity: str = ""
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    renew_s: float = 2.0
    retry_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("leader election needs 0 < renew interval < renew deadline < lease duration, got "
                             f"{self.renew_s:g}, {self.renew_deadline_s:g}, {self.lease_duration_s:g}")

    @classmethod
    def for_duration(cls, namespace: str, duration_s: float, identity: str | None = None) -> LeaseSettings:
        """Settings scaled from the lease's duration as client-go's defaults are (15 s, 10 s, 2 s)."""
        return cls(namespace=namespace, identity=identity or default_identity(), lease_duration_s=duration_s,
                   renew_deadline_s=duration_s * 2 / 3, renew_s=duration_s / 7.5, retry_s=duration_s / 7.5)


def default_identity() -> str:
    """The pod's name where there is one (``LATTICE_OPERATOR_ID`` from the downward API), else host and pid."""
    return os.environ.get("LATTICE_OPERATOR_ID") or f"{socket.gethostname()}-{os.getpid()}"


def _now_micro() -> datetime:
    return datetime.now(UTC)


class LeaseElector:
    """Wait to lead (:meth:`acquire`), then :meth:`hold` the lease in a thread until :meth:`release`."""

    def __init__(self, api: client.ApiClient, settings: LeaseSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._coord = client.CoordinationV1Api(api)
        self._clock = clock
        self._observed: Observed | None = None
        self._version = ""
        self._renewed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.transitions = 0

    # --- one look at the lease ----------------------------------------------------------------------------------

    def _read(self) -> client.V1Lease | None:
        s = self.settings
        try:
            lease: client.V1Lease = self._coord.read_namespaced_lease(s.name, s.namespace)
        except ApiException as error:
            if error.status == 404:
                self._observed = None
                return None
            raise
        version = (lease.metadata.resource_version if lease.metadata else None) or ""
        holder = (lease.spec.holder_identity or "") if lease.spec else ""
        duration = float((lease.spec.lease_duration_seconds if lease.spec else None) or s.lease_duration_s)
        if self._observed is None or self._observed.version != version:
            self._observed = Observed(holder, version, duration, self._clock())
        return lease

    def try_once(self) -> bool:
        """Look at the lease and take or renew it if :func:`decide` says so; True if we hold it now."""
        s = self.settings
        lease = self._read()
        verdict = decide(self._observed, s.identity, self._clock())
        if verdict == Verdict.WAIT:
            return False
        now = _now_micro()
        spec = client.V1LeaseSpec(holder_identity=s.identity, lease_duration_seconds=max(int(s.lease_duration_s), 1),
                                  renew_time=now)
        try:
            if lease is None:
                spec.acquire_time, spec.lease_transitions = now, 0
                body = client.V1Lease(metadata=client.V1ObjectMeta(name=s.name, namespace=s.namespace), spec=spec)
                written = self._coord.create_namespaced_lease(s.namespace, body)
            else:
                previous = lease.spec or client.V1LeaseSpec()
                if verdict == Verdict.ACQUIRE:
                    spec.acquire_time = now
                    spec.lease_transitions = (previous.lease_transitions or 0) + 1
                else:
                    spec.acquire_time, spec.lease_transitions = previous.acquire_time, previous.lease_transitions
                lease.spec = spec  # a replace carries the resourceVersion we read: a compare-and-set
                written = self._coord.replace_namespaced_lease(s.name, s.namespace, lease)
        except ApiException as error:
            if error.status in (409, 422):  # someone else wrote it first
                return False
            raise
        self._version = (written.metadata.resource_version if written.metadata else None) or ""
        self._observed = Observed(s.identity, self._version, s.lease_duration_s, self._clock())
        self._renewed_at = self._clock()
        if verdict == Verdict.ACQUIRE:
            self.transitions += 1
        return True

    # --- lifecycle --------------------------------------------------------------------------------------------

    def acquire(self, *, liveness_port: int | None = None, stop: threading.Event | None = None) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False). Serves ``/healthz`` on
        ``liveness_port`` meanwhile."""
        s = self.settings
        health = _Healthz(liveness_port) if liveness_port else None
        said = False
        try:
            while stop is None or not stop.is_set():
                try:
                    if self.try_once():
                        log.info("leading: lease %s/%s is ours (%s)", s.namespace, s.name, s.identity)
                        return True
                except (ApiException, OSError, ValueError) as exc:  # the API server away: keep waiting
                    log.warning("lease %s/%s: %s", s.namespace, s.name, exc)
                if not said and self._observed is not None:
                    said = True
                    log.info("standing by: lease %s/%s is held by %s; taking over %gs after its last renewal",
                             s.namespace, s.name, self._observed.holder, self._observed.duration_s)
                (stop or threading.Event()).wait(s.retry_s)
            return False
        finally:
            if health is not None:
                health.close()

    def hold(self, on_lost: Callable[[], None]) -> None:
        """Renew the lease in a thread until :meth:`release`; ``on_lost()`` if it could not for
        ``renew_deadline_s`` or someone else took it."""
        def renew() -> None:
            s = self.settings
            while not self._stop.wait(s.renew_s):
                try:
                    held = self.try_once()
                except (ApiException, OSError, ValueError) as exc:
                    log.warning("lease %s/%s: renewal failed: %s", s.namespace, s.name, exc)
                    held = True  # unsure: the deadline decides
                late = self._clock() - self._renewed_at
                if not held or late > s.renew_deadline_s:
                    log.error("lease %s/%s lost (%s): stopping, so that only one operator acts", s.namespace,
                              s.name, "taken by another" if not held else f"not renewed for {late:.1f}s")
                    on_lost()
                    return

        self._thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the lease up (a standby takes it at once), if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        s = self.settings
        try:
            lease = self._coord.read_namespaced_lease(s.name, s.namespace)
            if lease.spec is not None and lease.spec.holder_identity == s.identity:
                lease.spec.holder_identity = ""
                self._coord.replace_namespaced_lease(s.name, s.namespace, lease)
                log.info("lease %s/%s given up", s.namespace, s.name)
        except (ApiException, OSError) as exc:
            log.warning("lease %s/%s: could not give it up (a standby takes it when it expires): %s",
                        s.namespace, s.name, exc)


class _Healthz:
    """``/healthz`` while standing by (kopf serves its own once this replica leads)."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path.split("?")[0] == "/healthz"
                self.send_response(200 if ok else 404)
                self.end_headers()
                self.wfile.write(b"standing by\n" if ok else b"")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # every interface: the pod's probe
        self._thread = threading.Thread(target=self._server.serve_forever, name="standby-healthz", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
