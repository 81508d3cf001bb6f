"""The Ray the tests start stays on 127.0.0.1: the session cluster, drivers joining it, and ``address=local`` jobs."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import ray

from pipeline.driver.cluster import connected
from tests.pipeline.driver.propagate_support import REPO


def _listening_hosts(node) -> set[str]:
    """Addresses that a Ray node's processes (and their children: agents, workers) listen on over TCP."""
    import psutil  # the copy Ray ships (ray/thirdparty_files), on sys.path once ray is imported

    procs = [psutil.Process(p.pid) for _, p in node.live_processes()]
    procs += [c for p in procs for c in p.children(recursive=True)]
    hosts = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        hosts |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return hosts


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


@ray.remote(num_cpus=0)
def _worker_ip() -> str:
    return ray.util.get_node_ip_address()


def test_the_session_cluster_and_its_drivers_use_127_0_0_1_only(ray_cluster):
    host, port = ray_cluster.address.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert ray_cluster.head_node.node_ip_address == "127.0.0.1"
    with connected(ray_cluster.address):
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
        assert ray.get(_worker_ip.remote()) == "127.0.0.1"
    hosts = _listening_hosts(ray_cluster.head_node)
    assert hosts and all(_loopback(h) for h in hosts), hosts


def test_a_job_without_an_address_starts_its_ray_on_127_0_0_1():
    """In a process of its own, as a job runs: a second Ray instance started inside this test process breaks the
    session cluster's later actors."""
    code = ("import ray\n"
            "from pipeline.driver.cluster import connected\n"
            "from tests.pipeline.driver.test_cluster import _listening_hosts, _loopback, _worker_ip\n"
            "with connected(None):\n"
            "    node = ray._private.worker.global_worker.node\n"
            "    hosts = _listening_hosts(node)\n"
            "    assert hosts and all(_loopback(h) for h in hosts), hosts\n"
            "    print(node.node_ip_address, ray.get(_worker_ip.remote()))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=600)  # a net against a hang only: about 15 s on a loaded machine
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["127.0.0.1", "127.0.0.1"]
