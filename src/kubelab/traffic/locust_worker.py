"""Locust as a library, in its own process inside the lab's client namespace.

Importing Locust patches the process with gevent, so the harness never imports this module;
it starts `python -m kubelab.traffic.locust_worker --config FILE` in the client's namespace.

One task = one probe: GET /hostname, then GET /clientip on the SAME connection (the user's
pool holds one connection), so both answers come from the same pod. With new_connection the
client closes the connection after the probe, so every probe opens a new one and the
kernel balances it afresh; without it the connection is kept alive across probes.

The client, not the pod, closes: the closing side keeps the 5-tuple in TIME_WAIT for a
minute. Were it the pod, the random SNAT ports of later probes would now and then land on
such a tuple and the pod would drop the SYN (a real-cluster effect worth its own scenario,
but noise in every other measurement).

Bounded three ways, all stopping by themselves: users, duration, probe count.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import gevent
from locust import FastHttpUser, constant, events, task
from locust.env import Environment
from locust.exception import StopUser

CONFIG: dict[str, Any] = {}
STATE = {"probes": 0, "requests": 0, "request_failures": 0}
SAMPLES: list[dict[str, Any]] = []


@events.request.add_listener  # type: ignore[untyped-decorator]
def _count_request(exception: BaseException | None = None, **_: Any) -> None:
    STATE["requests"] += 1
    if exception is not None:
        STATE["request_failures"] += 1


class ProbeUser(FastHttpUser):
    wait_time = constant(0)
    concurrency = 1  # one connection per user: both requests of a probe share it
    network_timeout = 2.0
    connection_timeout = 2.0

    @task
    def probe(self) -> None:
        if STATE["probes"] >= CONFIG["max_probes"]:
            raise StopUser()  # the quota is taken; probes in flight still finish
        STATE["probes"] += 1
        started = time.time()
        t0 = time.perf_counter()
        sample: dict[str, Any] = {
            "t": started,
            "user": id(self) % 100000,
            "ok": False,
            "pod": None,
            "client_ip": None,
            "client_port": None,
            "error": None,
        }
        try:
            with self.client.get("/hostname", catch_response=True) as r1:
                if r1.status_code != 200:
                    raise RuntimeError(f"/hostname: HTTP {r1.status_code} {r1.error or ''}")
                pod = r1.text.strip()
            with self.client.get("/clientip", catch_response=True) as r2:
                if r2.status_code != 200:
                    raise RuntimeError(f"/clientip: HTTP {r2.status_code} {r2.error or ''}")
                ip, _, port = r2.text.strip().rpartition(":")
            sample.update(ok=True, pod=pod, client_ip=ip, client_port=int(port))
        except Exception as exc:  # a failed probe is a measurement, not a crash
            sample["error"] = str(exc)[:200]
        finally:
            if CONFIG["new_connection"]:
                self.client.client.close()  # the client closes first (see the module doc)
        sample["latency_ms"] = (time.perf_counter() - t0) * 1000.0
        SAMPLES.append(sample)


def main(argv: list[str]) -> int:
    CONFIG.update(json.loads(Path(argv[argv.index("--config") + 1]).read_text()))
    random.seed(CONFIG["seed"])
    env = Environment(user_classes=[ProbeUser], events=events, host=CONFIG["host"])
    runner = env.create_local_runner()
    runner.start(CONFIG["users"], spawn_rate=CONFIG["users"])
    started = time.time()
    deadline = started + CONFIG["duration"]
    gevent.sleep(0.05)
    while len(SAMPLES) < CONFIG["max_probes"] and time.time() < deadline:
        gevent.sleep(0.02)
    elapsed = time.time() - started
    runner.quit()
    out = Path(CONFIG["samples"])
    out.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES))
    print(
        json.dumps(
            {
                "probes": len(SAMPLES),
                "requests": STATE["requests"],
                "request_failures": STATE["request_failures"],
                "elapsed_s": elapsed,
                "started": started,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
