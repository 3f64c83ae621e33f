"""snnet serve on a GPU: the served model on CUDA against the CPU, and the real server with
``--device cuda`` answering over HTTP what the CPU computes.

On a machine with a GPU (``pip install 'snnet[serve]'``)::

    python benchmarks/bench_serve_cuda.py        # DEV=cpu dry-runs it anywhere

Builds the demo family into RUN (default runs/serve-cuda; random stitching layers, a stand-in
top-1, CPU latency), loads it on the CPU and on DEV (which must measure latency again, the CPU's
being from another kind of device), compares every stitch's probabilities on 8 images, starts
``snnet serve RUN --device DEV --slo-ms 50`` on a free loopback port, checks its answers against the CPU's,
then stops it with SIGTERM. Writes benchmarks/results/serve_cuda.json (or $OUT/serve_cuda.json).
"""

import io
import json
import os
import sys
import time
from pathlib import Path

import httpx
import torch
from PIL import Image

import snnet
from snnet.measure.results import Results
from snnet.serve.model import ServedModel

sys.path.insert(0, str(Path(__file__).parent))
from bench_serve import Server

DEV = os.environ.get("DEV", "cuda")
OUT = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
run = os.environ.get("RUN", "runs/serve-cuda")
out = {"device": DEV}
if not os.path.exists(f"{run}/results.json"):  # the demo family, LS-free, results with CPU latency
    anchors, options = snnet.resolve_anchors("fmnist-xs-sm-l")
    torch.manual_seed(0)
    net = snnet.SNNet(anchors, **options).eval()
    snnet.save(net, f"{run}/model")
    res = Results.for_network(net)
    for r in res:
        res.update(r.stitch, top1=80 + 800 * r.gmacs)
    snnet.measure_latency(net, res, repeats=5, warmup=1, settle_s=0, progress=False)
    res.save(f"{run}/results.json")
cpu = ServedModel.load(run)
t = time.perf_counter()
gpu = ServedModel.load(run, device=DEV)
out["load_s_incl_latency"] = round(time.perf_counter() - t, 2)
for name, m in (("cpu", cpu), ("gpu", gpu)):
    lat = [r.latency_ms for r in m.results]
    out[f"{name}_latency_ms"] = [min(lat), max(lat)]
    out[f"{name}_latency_device"] = m.results.meta["latency"]["device"]
    out[f"{name}_front"] = len(m.front)
g = torch.Generator().manual_seed(0)
pngs = []
for _ in range(8):
    arr = (torch.rand(28, 28, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, "PNG")
    pngs.append(buf.getvalue())
x = torch.stack([cpu.preprocess.pixels(Image.open(io.BytesIO(b))) for b in pngs])
out["predict_max_abs_diff"] = max(
    float((gpu.predict(x, r.stitch) - cpu.predict(x, r.stitch)).abs().max()) for r in cpu.results
)
out["full_batch_ms_gpu"] = {str(k): round(v, 3) for k, v in list(gpu.batch_ms([8])[8].items())[:4]}
server = Server(Path(run), ["--device", DEV, "--slo-ms", "50"], OUT / "serve_cuda.log")
url = server.url
answers, worst = [], 0.0
for i, b in enumerate(pngs):
    a = httpx.post(
        f"{url}/v1/predict", content=b, headers={"content-type": "image/png"}, timeout=30
    ).json()
    top = a["predictions"][0]["top"][0]
    ref = cpu.predict(x[i : i + 1], snnet.Stitch.parse(a["stitch"]))[0]
    worst = max(worst, abs(ref[top["index"]].item() - top["prob"]))
    answers.append({"stitch": a["stitch"], "index": top["index"], "ref_argmax": int(ref.argmax())})
out["server_answers"] = answers
out["server_prob_max_abs_diff_vs_cpu"] = worst
out["server_top1_agrees"] = all(a["index"] == a["ref_argmax"] for a in answers)
st = httpx.get(f"{url}/v1/status", timeout=5).json()
out["server_status"] = {k: st.get(k) for k in ("stitch", "mode", "slo_ms", "loop_lag_ms")}
server.stop()  # SIGTERM: drains, then exits
out["server_exit"] = server.proc.returncode
(OUT / "serve_cuda.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out)[:3000])
