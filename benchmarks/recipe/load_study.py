"""(C) Does a CPU hog beside a training run change its weights? Repeats of repro.py, idle and busy.

Each arm (threads 1 or 2; idle or beside two ``while :; do :; done`` shell loops started here and
killed after the run) runs ``repro.py --mkl-set-dynamic`` (what ``snnet.threads.set_threads``
does; ``--mkl-dynamic`` leaves MKL's dynamic threads on, as a control) in a subprocess with ``PYTHONPATH`` pinned to this checkout's ``src``. Every run is compared
with the first idle run of its thread count: tensors differing (``torch.equal``) and the first
step whose loss differs. Writes ``results/load_study.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe/load_study.py --steps 40 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def start_hog(n: int = 2) -> list[subprocess.Popen]:
    return [subprocess.Popen(["bash", "-c", "while :; do :; done"]) for _ in range(n)]


def stop_hog(hogs: list[subprocess.Popen]) -> None:
    for h in hogs:
        h.kill()
        h.wait()


def one_run(
    out: Path, threads: int, steps: int, hog: bool, env_extra: dict[str, str], mkl_fix: bool
) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        **env_extra,
    }
    cmd = [sys.executable, str(HERE / "repro.py"), "--threads", str(threads)]
    cmd += ["--steps", str(steps), "--out", str(out)]
    cmd += ["--mkl-set-dynamic"] if mkl_fix else []
    hogs = start_hog() if hog else []
    try:
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t
    finally:
        stop_hog(hogs)
    record = json.loads(Path(str(out) + ".json").read_text())
    record["wall_s"] = round(wall, 1)
    return record


def compare(a: Path, b: Path, ra: dict, rb: dict) -> dict:
    sa, sb = torch.load(a), torch.load(b)
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    init_a, init_b = torch.load(str(a) + ".init.pt"), torch.load(str(b) + ".init.pt")
    init_differ = sum(not torch.equal(init_a[k], init_b[k]) for k in init_a)
    first = next(
        (i + 1 for i, (x, y) in enumerate(zip(ra["losses"], rb["losses"], strict=True)) if x != y),
        None,
    )
    return {
        "tensors": len(sa),
        "differ": len(differ),
        "init_differ": init_differ,
        "first_diverging_step": first,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--work", type=Path, default=Path("/tmp/load_study"))
    p.add_argument("--tag", default="")
    p.add_argument("--env", nargs="*", default=["OMP_WAIT_POLICY=PASSIVE"])
    p.add_argument(
        "--mkl-dynamic", action="store_true", help="leave MKL's dynamic threads on (control arm)"
    )
    args = p.parse_args()
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for threads in args.threads:
        runs: dict[str, tuple[Path, dict]] = {}
        for rep in range(args.repeats):
            for hog in (False, True):
                name = f"t{threads}_{'hog' if hog else 'idle'}{rep}"
                out = args.work / f"{args.tag}{name}.pt"
                rec = one_run(out, threads, args.steps, hog, env_extra, not args.mkl_dynamic)
                runs[name] = (out, rec)
                ref_out, ref = runs[f"t{threads}_idle0"]
                row = {
                    "run": name,
                    "threads": threads,
                    "hog": hog,
                    "s_per_step": rec["seconds_per_step"],
                    "last_loss": rec["last_loss"],
                    "load_avg_1m_end": rec["load_avg_1m_end"],
                    **compare(ref_out, out, ref, rec),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "steps": args.steps,
        "env": env_extra,
        "mkl_dynamic": args.mkl_dynamic,
        "src": str(ROOT / "src"),
        "runs": rows,
    }
    path = HERE / "results" / f"load_study{args.tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
