"""Runs the test control plane and the process kubelet in the foreground, for poking at by hand.

    .venv/bin/python -m tests.support.cluster      (make cluster)

Prints the kubeconfig path and an ``export KUBECONFIG=...`` line; Ctrl-C (or SIGTERM) stops everything.
The image ``lattice-test/python`` runs this interpreter, as in the tests.
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.support.controlplane import (
    ControlPlane,
    ControlPlaneError,
    find_binaries,
    missing_binaries_message,
)
from tests.support.kube_fixtures import new_api_client
from tests.support.kubelet import ProcessKubelet
from tests.support.kubelet_spec import python_command


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    binaries = find_binaries()
    if binaries is None:
        print(missing_binaries_message(), file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    kubelet_dir = Path(tempfile.mkdtemp(prefix="lattice-kubelet-"))
    try:
        with ControlPlane(binaries) as plane:
            api_client = new_api_client(plane.kubeconfig)
            kubelet = ProcessKubelet(api_client, kubelet_dir, bind_default=not plane.run_scheduler)
            kubelet.register_image("lattice-test/python", python_command)
            with kubelet:
                rss = ", ".join(f"{name} {kib // 1024} MiB" for name, kib in plane.rss_kib().items())
                print(f"control plane up in {plane.startup_s:.1f} s at {plane.server} ({rss})")
                print(f"component logs: {plane.dir / 'logs'}; pod dirs and logs: {kubelet_dir / 'pods'}")
                print(f"kubeconfig: {plane.kubeconfig}")
                print(f"export KUBECONFIG={plane.kubeconfig}", flush=True)
                try:
                    stop.wait()
                except KeyboardInterrupt:
                    pass
                print("stopping", flush=True)
            api_client.close()
    except ControlPlaneError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(kubelet_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
