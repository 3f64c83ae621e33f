"""Load benchmark with a standard tool: locust against `snnet serve`, torch and ONNX Runtime.

The server runs as a user runs it (``python -m snnet serve TARGET --slo-ms 50``, nothing pinned);
locust (``locustfile.py``: FastHttpUser, one PNG per request, a constant throughput per user)
runs pinned to core 0 (``taskset -c 0``) over loopback, through the serving benchmark's phases
after a short warm-up: steady R, a 4× surge, steady again, and R beside a process that keeps
both cores busy (``bench_serve.competitor``). Each run is bounded in time (the phases) and in
requests (at most rate × seconds per phase).

Per server and mode (``adaptive``: the SLO controller; ``largest``: the largest anchor fixed),
per phase: requests sent, answered and refused, the client's and the server's p50/p99 (the
server's from each answer's ``latency_ms``, arrival at the app to answer ready), the p99 of each
1-second window, the stitches that answered; the server's start-up time (spawn to ``/readyz``)
and resident memory after the run (RSS, and its peak). The machine's load average is recorded
before and after each run.

Goals (issue 23), checked and printed: at steady R the server's p99 under the SLO with < 1 %
refused; through the surge every 1-second window's server p99 under the SLO but the surge's
first; on the compute family the fixed largest anchor misses in the surge while the switching
server holds; the ONNX Runtime server at most a third of the torch server's memory and under
3 s start-up.

Run (under the shared benchmark lock):
    flock /tmp/snnet-bench.lock python benchmarks/bench_load.py --family demo \
        --run RUN --front FRONT_DIR [--rate 300] [--phase-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(HERE))

from bench_serve import competitor, free_port, test_images  # noqa: E402
from snnet.control.window import percentile  # noqa: E402
from snnet.files import atomic_write  # noqa: E402

PHASES = (("steady", 1.0), ("surge", 4.0), ("steady_again", 1.0), ("contention", 1.0))
WARMUP_S = 4.0


def start_server(target: Path, args: list[str], log: Path) -> tuple[subprocess.Popen, str, float]:
    """``snnet serve TARGET ARGS`` on a free port: the process, its URL and its start-up time
    (spawn to ready)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [sys.executable, "-m", "snnet", "serve", str(target), "--port", str(port), *args]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    while time.monotonic() - started < 600:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server not ready within 600 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of the server (MB): now and its peak, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith("Vm")}
    return {"rss_mb": round(kb["VmRSS"] / 1024, 1), "peak_rss_mb": round(kb["VmHWM"] / 1024, 1)}


def run_locust(url: str, schedule: list, pngs: Path, per_user: float, log: Path) -> list[list]:
    """The schedule through locust pinned to core 0; the contention phase's hog started and
    stopped on time. Returns locust's per-request records."""
    records = log.with_suffix(".records.json")
    env = {
        **os.environ,
        "SNNET_PHASES": ",".join(f"{n}:{s}:{r}" for n, s, r in schedule),
        "SNNET_PER_USER_RPS": str(per_user),
        "SNNET_PNGS": str(pngs),
        "SNNET_RECORDS": str(records),
    }
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py")]
    cmd += ["--headless", "--host", url, "--only-summary", "--stop-timeout", "5"]
    cmd += ["--loglevel", "WARNING"]
    hog: list[subprocess.Popen] = []
    start_at = sum(s for n, s, _ in schedule if n != "contention")
    timer = threading.Timer(start_at, lambda: hog.append(competitor()))
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    timer.start()
    try:
        proc.wait(timeout=sum(s for _, s, _ in schedule) + 120)
    finally:
        timer.cancel()
        for p in hog:
            p.kill()
            p.wait()
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0 or not records.exists():
        raise RuntimeError(f"locust failed: {log.read_text()[-3000:]}")
    return json.loads(records.read_text())


def summarize(rows: list[list], seconds: float, start: float, slo_ms: float) -> dict[str, Any]:
    """One phase's figures from locust's records ``[t, phase, status, client_ms, server_ms,
    stitch]``; ``start``: the phase's start (s into the test)."""
    ok = [r for r in rows if r[2] == 200]
    refused = [r for r in rows if r[2] in (429, 503)]
    client = [r[3] for r in ok]
    server = [r[4] for r in ok]
    windows: dict[int, list[float]] = {}
    for r in ok:
        windows.setdefault(int(r[0] - start), []).append(r[4])
    window_p99 = [round(percentile(windows[k], 99), 1) for k in sorted(windows)]
    q = lambda xs, p: round(percentile(xs, p), 2) if xs else None  # noqa: E731
    return {
        "sent": len(rows),
        "sent_rps": round(len(rows) / seconds, 1),
        "answered": len(ok),
        "refused_share": round(len(refused) / max(1, len(rows)), 4),
        "failed": len(rows) - len(ok) - len(refused),
        "client_p50_ms": q(client, 50),
        "client_p99_ms": q(client, 99),
        "server_p50_ms": q(server, 50),
        "server_p99_ms": q(server, 99),
        "window_server_p99_ms": window_p99,
        "windows_over_slo": [i for i, p in enumerate(window_p99) if p > slo_ms],
        "stitches": {s: sum(r[5] == s for r in ok) for s in sorted({r[5] for r in ok})},
    }


def one_run(target: Path, args: list[str], schedule, pngs, per_user, slo_ms, logs: Path, name):
    """One server under the schedule: its phases, start-up and memory."""
    load_before = os.getloadavg()
    proc, url, startup_s = start_server(target, args, logs / f"{name}.server.log")
    try:
        records = run_locust(url, schedule, pngs, per_user, logs / f"{name}.locust.log")
        memory = memory_mb(proc.pid)
    finally:
        stop_server(proc)
    phases, t = {}, 0.0
    for phase, seconds, rate in schedule:
        if phase != "warmup":
            rows = [r for r in records if r[1] == phase]
            phases[phase] = {"rate_rps": rate, "seconds": seconds}
            phases[phase].update(summarize(rows, seconds, t, slo_ms))
        t += seconds
    return {
        "args": args,
        "startup_s": round(startup_s, 2),
        **memory,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "phases": phases,
    }


def goals(result: dict[str, Any], slo_ms: float) -> list[dict[str, Any]]:
    """Each goal of issue 23 this run can speak to: what was measured, met or not."""
    out = []
    for server, modes in result["servers"].items():
        ad = modes.get("adaptive")
        if ad is None:
            continue
        st, su = ad["phases"]["steady"], ad["phases"]["surge"]
        out.append(
            {
                "goal": f"{server}: steady {result['rate_rps']} req/s, server p99 < SLO, < 1 % refused",
                "measured": f"p99 {st['server_p99_ms']} ms, refused {st['refused_share']:.2%}",
                "met": st["server_p99_ms"] is not None
                and st["server_p99_ms"] < slo_ms
                and st["refused_share"] < 0.01,
            }
        )
        late = [i for i in su["windows_over_slo"] if i != 0]
        out.append(
            {
                "goal": f"{server}: every 1-s window of the 4x surge under the SLO but the first",
                "measured": f"window p99s {su['window_server_p99_ms']} ms, refused "
                f"{su['refused_share']:.2%}",
                "met": not late and su["answered"] > 0,
            }
        )
        largest = modes.get("largest")
        if largest is not None:
            ls = largest["phases"]["surge"]
            misses = bool(ls["windows_over_slo"]) or ls["refused_share"] >= 0.01
            out.append(
                {
                    "goal": f"{server}: the fixed largest anchor misses in the surge, the "
                    "switching server holds",
                    "measured": f"largest: window p99s {ls['window_server_p99_ms']} ms, refused "
                    f"{ls['refused_share']:.2%}; switching: {su['window_server_p99_ms']}",
                    "met": misses and not late,
                }
            )
    torch_ad = result["servers"].get("torch", {}).get("adaptive")
    ort_ad = result["servers"].get("onnx", {}).get("adaptive")
    if torch_ad and ort_ad:
        out.append(
            {
                "goal": "onnx: resident memory at most a third of torch's",
                "measured": f"{ort_ad['rss_mb']} MB against {torch_ad['rss_mb']} MB "
                f"({ort_ad['rss_mb'] / torch_ad['rss_mb']:.2f}x)",
                "met": ort_ad["rss_mb"] <= torch_ad["rss_mb"] / 3,
            }
        )
        out.append(
            {
                "goal": "onnx: start-up under 3 s",
                "measured": f"{ort_ad['startup_s']} s (torch {torch_ad['startup_s']} s)",
                "met": ort_ad["startup_s"] < 3.0,
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=("demo", "compute"), default="demo")
    p.add_argument("--run", type=Path, required=True, help="the run the torch server serves")
    p.add_argument("--front", type=Path, default=None, help="its exported front (ONNX Runtime)")
    p.add_argument("--servers", nargs="+", default=["torch", "onnx"], choices=("torch", "onnx"))
    p.add_argument("--modes", nargs="+", default=["adaptive"], choices=("adaptive", "largest"))
    p.add_argument("--rate", type=float, default=300.0, help="steady rate R (req/s)")
    p.add_argument("--phase-seconds", type=float, default=10.0)
    p.add_argument("--slo-ms", type=float, default=50.0)
    p.add_argument("--per-user-rps", type=float, default=2.0, help="each locust user's rate")
    p.add_argument("--out", type=Path, default=None, help="default results/load-FAMILY.json")
    args = p.parse_args(argv)
    args.out = args.out or HERE / "results" / f"load-{args.family}.json"
    if "onnx" in args.servers and args.front is None:
        p.error("--front is needed for the onnx server")
    schedule = [("warmup", WARMUP_S, args.rate)]
    schedule += [(name, args.phase_seconds, args.rate * k) for name, k in PHASES]
    logs = Path(tempfile.mkdtemp(prefix="snnet-load-"))
    pngs = logs / "pngs"
    pngs.mkdir()
    for i, (body, _) in enumerate(test_images(256, px=112 if args.family == "compute" else None)):
        (pngs / f"{i:04d}.png").write_bytes(body)
    from snnet.measure.results import Results

    largest = str(len(Results.load(args.run / "results.json").network["anchors"]) - 1)
    result: dict[str, Any] = {
        "family": args.family,
        "slo_ms": args.slo_ms,
        "rate_rps": args.rate,
        "schedule": schedule,
        "per_user_rps": args.per_user_rps,
        "client": "locust FastHttpUser, constant throughput per user, pinned to core 0",
        "cpu_count": os.cpu_count(),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
        "servers": {},
    }
    targets = {"torch": args.run, "onnx": args.front}
    if "onnx" in args.servers:
        # the first start on a machine measures the batch times and keeps them beside the
        # front; the runs below start as every later start does
        kept = args.front / "latency.json"
        result["onnx_first_start_s"] = None
        if not kept.exists():
            proc, _, first = start_server(
                args.front, ["--slo-ms", str(args.slo_ms)], logs / "first"
            )
            stop_server(proc)
            result["onnx_first_start_s"] = round(first, 2)
            print(f"onnx: first start on this machine (batch times measured) {first:.2f} s")
    for server in args.servers:
        for mode in args.modes:
            margs = ["--slo-ms", str(args.slo_ms)] if mode == "adaptive" else ["--stitch", largest]
            margs += ["--log-level", "warning"]
            print(f"{server} {mode}: snnet serve {targets[server]} {' '.join(margs)}", flush=True)
            r = one_run(
                targets[server], margs, schedule, pngs, args.per_user_rps, args.slo_ms, logs,
                f"{server}-{mode}",
            )  # fmt: skip
            result["servers"].setdefault(server, {})[mode] = r
            print(
                f"  start-up {r['startup_s']} s, RSS {r['rss_mb']} MB (peak "
                f"{r['peak_rss_mb']}), load {r['load_avg_before'][0]} -> {r['load_avg_after'][0]}"
            )
            for phase, s in r["phases"].items():
                print(
                    f"  {phase:13s} sent {s['sent_rps']:7.1f}/s  refused {s['refused_share']:6.2%}"
                    f"  server p50/p99 {s['server_p50_ms']}/{s['server_p99_ms']} ms  client "
                    f"p99 {s['client_p99_ms']} ms  windows {s['window_server_p99_ms']}  "
                    f"stitches {s['stitches']}",
                    flush=True,
                )
    result["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["goals"] = goals(result, args.slo_ms)
    for g in result["goals"]:
        print(f"[{'met' if g['met'] else 'NOT MET'}] {g['goal']}: {g['measured']}")
    atomic_write(args.out, lambda f: json.dump(result, f, indent=2))
    print(f"wrote {args.out} (logs in {logs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
