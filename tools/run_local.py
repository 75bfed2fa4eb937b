"""`make run`: a single-node etcd on loopback, the gateway and the data processor beside it.

etcd keeps its data in .local/etcd-data (git-ignored), so values survive a restart
(`make reset` clears it); the endpoint goes to .local/env for the operator tool.
Ports: ETCD_PORT (default 2379), PORT (gateway, default 8080) and PROCESSOR_PORT
(processor, default 8081). Ctrl-C stops all three.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tools.etcd_server import EtcdServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        # As the servers themselves do, so a port in TIME_WAIT still counts as free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    # `make` run under a supervisor gets SIGTERM, not Ctrl-C: stop both children either
    # way. SIGINT too, explicitly: started in the background, it would be ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    data_dir = ROOT / ".local" / "etcd-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    client_port = int(os.environ.get("ETCD_PORT", "2379"))
    if not _port_free(client_port):
        sys.exit(f"ETCD_PORT {client_port} is in use; set ETCD_PORT to a free port")
    port = os.environ.get("PORT", "8080")
    if not _port_free(int(port)):
        sys.exit(f"PORT {port} is in use; set PORT to a free port")
    processor_port = os.environ.get("PROCESSOR_PORT", "8081")
    if not _port_free(int(processor_port)):
        sys.exit(f"PROCESSOR_PORT {processor_port} is in use; set PROCESSOR_PORT to a free port")
    etcd = EtcdServer(
        name="local",
        data_dir=str(data_dir),
        client_port=client_port,
        peer_port=free_port(),
        log_path=str(ROOT / ".local" / "etcd.log"),
    )
    if (data_dir / "member").exists():
        etcd.initial_cluster_state = "existing"
    etcd.start()
    # The operator tool reads this when ETCD_ENDPOINTS is unset: one way to reach this etcd.
    (ROOT / ".local" / "env").write_text(f"# written by make run\nETCD_ENDPOINTS={etcd.endpoint}\n")
    # Locally /_status shows endpoints and error text (deploy.sh and Terraform leave it off).
    env = {"STATUS_DETAILS": "true", **os.environ, "ETCD_ENDPOINTS": etcd.endpoint, "PORT": port}
    server = processor = None
    try:
        subprocess.run([sys.executable, "-m", "config_watch", "seed"], env=env, check=True)
        if etcd.etcdctl("get", "/config/global/maintenance-mode", "--print-value-only").strip() == "true":
            print("\nWARNING: maintenance mode is on (kept in .local/etcd-data from an earlier run): every request "
                  "gets 503.\n  Turn it off: .venv/bin/python -m config_watch set /config/global/maintenance-mode false"
                  "\n  or stop and start afresh: make reset", flush=True)
        venv_etcdctl = Path(sys.executable).parent / "etcdctl"
        etcdctl_bin = os.path.relpath(venv_etcdctl, ROOT) if venv_etcdctl.exists() else etcd.etcdctl_bin
        etcdctl = f"{etcdctl_bin} --endpoints={etcd.endpoint}"
        print(
            f"\netcd   : {etcd.endpoint} (data in {data_dir}, log in .local/etcd.log)\n"
            f"gateway: http://127.0.0.1:{port}/  (status: /_status)\n"
            f"processor: http://127.0.0.1:{processor_port}/v1/jobs  (status: /_status)\n\n"
            f"Try:\n"
            f"  curl -i http://127.0.0.1:{port}/onboarding\n"
            f"  {etcdctl} put /config/services/api-gateway/features/new-user-onboarding true\n"
            f"  curl -i http://127.0.0.1:{port}/onboarding\n"
            f"  curl -i -X POST --data-binary 'some bytes' 'http://127.0.0.1:{port}/v1/jobs?rounds=3'"
            f"   # through the gateway\n"
            f"  {etcdctl} put /config/services/api-gateway/experiments/checkout control:50,treatment:50\n"
            f"  {etcdctl} put /config/services/data-processor/threads 8\n"
            f"  curl -s http://127.0.0.1:{processor_port}/_status\n",
            flush=True,
        )
        # Its own process group: a Ctrl-C at the terminal reaches this script, which
        # then stops it with SIGTERM (a drain), instead of both racing to react.
        processor = subprocess.Popen(
            [sys.executable, "-m", "processor"],
            cwd=ROOT,
            env={**env, "CONFIG_SERVICE": "data-processor", "PROCESSOR_PORT": processor_port},
            start_new_session=True,
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "api_gateway", "--port", port],
            cwd=ROOT,
            env={"PROCESSOR_URL": f"http://127.0.0.1:{processor_port}", **env},
        )
        # Either service exiting on its own ends the run (and stops the other).
        while server.poll() is None and processor.poll() is None:
            try:
                server.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        return server.returncode if server.returncode is not None else processor.returncode
    except KeyboardInterrupt:
        return 0
    finally:
        for child in (server, processor):
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in (server, processor):
            if child is None:
                continue
            try:
                child.wait(35)  # the processor drains its jobs (PROCESSOR_DRAIN_SECONDS, 30 s)
            except subprocess.TimeoutExpired:
                if child is processor:  # its whole group: the gunicorn master and its worker
                    os.killpg(child.pid, signal.SIGKILL)
                else:
                    child.kill()
                child.wait()
        etcd.stop()
        print("\nstopped the gateway, the processor and etcd", flush=True)


if __name__ == "__main__":
    sys.exit(main())
