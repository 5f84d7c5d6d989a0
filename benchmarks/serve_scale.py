"""Serving at catalog scale: build, size, load time, memory per worker, recall and latency for 10^5..10^7 items.

For each catalog size N the script writes a synthetic finished run and exports it through the real path
(``genrec.serve.export_bundle``, ``ann=auto``: exact up to 10^5 items, IVF-flat while it fits the 1 GB index budget,
IVF-PQ with exact refine beyond), then measures:

- build: the run's generation and the export (index choice, k-means, encoding, tuning) wall time and peak RSS,
  each in its own process;
- the bundle's size on disk, by file;
- load: ``Recommender.load`` wall time (checksums of every file included; the page cache is warm, as right after
  an export or on a serving host), and, in that process, recall@10 of the index against exact search on held-out
  queries and ``Recommender.recommend`` latency at concurrency 1 and 8 (threads);
- HTTP: ``genrec serve`` with 1 and 2 uvicorn workers, POST /v1/recommend at concurrency 1 and 8 (client threads on
  the same machine), p50/p99; then RSS and PSS (/proc/<pid>/smaps_rollup) of every worker, and their private part:
  what one more worker costs.

The model is an untrained HSTU (D 64, 2 blocks, 2 heads, history 200) whose item table is synthetic: a mixture of
Gaussians, N/1000 topic centres ~ N(0, I_64) with Zipf-like topic sizes and items = centre + 0.8 N(0, I) (items
cluster by topic as trained embeddings do, with overlapping clusters; these are not trained embeddings, whose
recall at the same settings may differ). Queries (tuning at export and held out here) are the model's states after
20-item histories drawn by training popularity (Zipf-like counts); the held-out ones use another seed. Titles are
"Item <id>", raw ids "i<id>".

    python benchmarks/serve_scale.py --items 100000,1000000 [--seconds 15] [--allow-dirty]
    python benchmarks/serve_scale.py --items 10000000      # rows merge into serve_scale.json by catalog size

Every step runs in its own process with OMP_WAIT_POLICY=PASSIVE unless set (FAISS's OpenMP threads sleep
instead of spinning while they wait, which matters on a machine shared with other work).

Writes benchmarks/results/serve_scale.{json,md} with command, commit, machine, load average and wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import stop_server, wait_ready  # noqa: E402
from serve_scale_report import render, row  # noqa: E402

RESULTS = Path(__file__).parent / "results"
HIST_LEN = 20
CHUNK = 1 << 20


# --- steps that run in their own process (clean peak memory) -----------------------------------------------

def step_generate(n: int, folder: Path, dim: int, seed: int) -> dict[str, Any]:
    """A finished run with a synthetic N-item table, written in chunks (memory independent of N)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    from genrec.io import write_json
    from genrec.models import HSTU, HSTUConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = HSTUConfig(dim=dim, blocks=2, heads=2, max_len=200, dropout=0.0)
    small = {k: v.contiguous().numpy() for k, v in HSTU(cfg, 1, use_timestamps=False).state_dict().items()}
    small.pop("item_emb.weight")  # the one tensor that grows with the catalog: written below, chunk by chunk
    topics = max(100, n // 1000)
    centres = rng.normal(size=(topics, dim)).astype(np.float32)
    share = 1.0 / np.arange(1, topics + 1) ** 0.5
    share /= share.sum()
    run = folder / "run"
    run.mkdir(parents=True)
    _write_safetensors(run / "model.safetensors", small, "item_emb.weight", (n + 1, dim),
                       _item_rows(n, centres, share, rng))
    write_json(run / "model.json", {"name": "hstu", "config": cfg.model_dump(), "n_items": n, "use_timestamps": False})
    ids = pa.array(np.arange(1, n + 1, dtype=np.int64))
    text = pc.cast(ids, pa.string())
    counts = (1e5 / np.arange(1, n + 1) ** 0.8).astype(np.int64)  # Zipf-like training popularity
    pq.write_table(pa.table({"item_idx": ids, "raw_id": pc.binary_join_element_wise("i", text, ""),
                             "train_count": counts, "title": pc.binary_join_element_wise("Item ", text, "")}),
                   run / "items.parquet")
    write_json(run / "metrics.json", {"dataset": {"name": f"synthetic-{n}"}, "metrics": {}, "run": {}})
    return {"topics": topics}


def _item_rows(n: int, centres: np.ndarray, share: np.ndarray, rng: np.random.Generator):
    """Row 0 (padding, zeros) then the items, in chunks: 0.1 (centre of a topic + 0.8 N(0, I))."""
    yield np.zeros((1, centres.shape[1]), np.float32)
    for lo in range(0, n, CHUNK):
        m = min(CHUNK, n - lo)
        topic = rng.choice(len(centres), size=m, p=share)
        rows = centres[topic] + 0.8 * rng.standard_normal((m, centres.shape[1]), dtype=np.float32)
        yield (0.1 * rows).astype(np.float32)


def _write_safetensors(path: Path, small: dict[str, np.ndarray], big: str, shape: tuple[int, int], rows) -> None:
    """A safetensors file (float32) whose large tensor ``big`` is streamed from ``rows`` chunks."""
    header, offset = {}, 0
    for name, a in small.items():
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header[big] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * shape[0] * shape[1]]}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for a in small.values():
            f.write(np.ascontiguousarray(a, np.float32).tobytes())
        for chunk in rows:
            f.write(np.ascontiguousarray(chunk, np.float32).tobytes())


def step_export(folder: Path, ann: str, memory_mb: float) -> dict[str, Any]:
    from genrec.serve import export_bundle, load_manifest

    bundle = export_bundle(folder / "run", folder / "bundle", ann=ann, ann_memory_mb=memory_mb)
    return {"ann": load_manifest(bundle, verify=False).get("ann")}


def step_measure(folder: Path, queries: int, requests: int, seed: int) -> dict[str, Any]:
    """In one fresh process: load time, held-out recall of the index, in-process latency, memory after."""
    import torch

    from genrec.data.jagged import Jagged
    from genrec.serve import Recommender, load_manifest
    from genrec.serve.ann import exact_top, recall

    torch.set_num_threads(1)
    bundle = folder / "bundle"
    t0 = time.perf_counter()
    load_manifest(bundle)
    verify_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = Recommender.load(bundle)
    load_s = time.perf_counter() - t0
    mem_loaded = smaps(os.getpid())
    n = rec.n_items
    histories = popular_histories(n, queries, seed)
    scorer = rec._scorer
    with torch.no_grad():
        q = rec.model.last_hidden(Jagged.from_lists(histories.tolist())).float().numpy()
    table = scorer.items.numpy()[1:]
    t0 = time.perf_counter()
    exact = exact_top(table, q, 10)
    exact_s = time.perf_counter() - t0
    ann = getattr(scorer, "ann", None)
    found = ann.search(q, 10)[0] if ann is not None else exact
    out = {"verify_seconds": verify_s, "load_seconds": load_s, "memory_after_load": mem_loaded,
           "heldout_queries": queries, "recall_at_10": recall(found, exact), "exact_search_seconds": exact_s,
           "mode": rec.recommend(_raw(histories[0]), k=10).mode}
    bodies = [_raw(h) for h in popular_histories(n, requests, seed + 1)]
    for c in (1, 8):
        lat = run_threads(c, bodies, lambda h: rec.recommend(h, k=10))
        out[f"inprocess_c{c}"] = summarise(lat)
    out["memory_after_requests"] = smaps(os.getpid())
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def popular_histories(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` histories of HIST_LEN dense ids drawn by training popularity (+1), as the export's queries are."""
    p = (1e5 / np.arange(1, n + 1) ** 0.8).astype(np.int64).astype(np.float64) + 1.0
    cdf = np.cumsum(p / p.sum())
    u = np.random.default_rng(seed).random((count, HIST_LEN))
    return np.minimum(np.searchsorted(cdf, u, side="right"), n - 1) + 1


def _raw(history: np.ndarray) -> list[str]:
    return [f"i{i}" for i in history.tolist()]


def run_threads(c: int, bodies: list, call, seconds: float | None = None) -> list[float]:
    """Latencies (s) of ``call(body)`` from ``c`` threads, each taking bodies in turn (all of them once, or
    round and round for ``seconds``)."""
    lat: list[float] = []
    lock, nxt = threading.Lock(), iter(range(10**9))
    stop = time.perf_counter() + seconds if seconds else None

    def worker() -> None:
        while True:
            with lock:
                j = next(nxt)
            if (stop is None and j >= len(bodies)) or (stop is not None and time.perf_counter() > stop):
                return
            t = time.perf_counter()
            call(bodies[j % len(bodies)])
            dt_ = time.perf_counter() - t
            with lock:
                lat.append(dt_)

    threads = [threading.Thread(target=worker) for _ in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat


def summarise(lat: list[float], seconds: float | None = None) -> dict[str, Any]:
    a = np.asarray(lat) * 1000
    out = {"requests": len(a), "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
           "mean_ms": float(a.mean()), "max_ms": float(a.max())}
    if seconds:
        out["per_s"] = len(a) / seconds
    return out


def smaps(pid: int) -> dict[str, float]:
    """RSS, PSS and their parts (MB) from /proc/<pid>/smaps_rollup."""
    keys = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Shared_Clean", "Private_Clean", "Private_Dirty")
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in keys:
            out[name.lower() + "_mb"] = int(rest.split()[0]) / 1024
    out["private_mb"] = out.get("private_clean_mb", 0) + out.get("private_dirty_mb", 0)
    return out


# --- HTTP ---------------------------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            cmdline = (d / "cmdline").read_bytes() if (d / "cmdline").exists() else b""
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"resource_tracker" not in cmdline:
                out.append(int(d.name))
    return out


def http_runs(folder: Path, workers: int, concurrency: list[int], seconds: float, seed: int) -> dict[str, Any]:
    bundle = folder / "bundle"
    n = int(json.loads((bundle / "model.json").read_text())["n_items"])
    bodies = [json.dumps({"history": _raw(h), "k": 10}).encode() for h in popular_histories(n, 2000, seed + 2)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="genrec-serve-scale-") as tmp:
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "genrec", "serve", str(bundle), "--port", str(port), "--workers", str(workers),
               "--store", str(Path(tmp) / "history.sqlite"), "--deadline-ms", "0", "--no-access-log"]
        t0 = time.perf_counter()
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env())
        try:
            ready = wait_ready(f"http://127.0.0.1:{port}", proc, log, timeout=900)
            out: dict[str, Any] = {"workers": workers, "ready_seconds": time.perf_counter() - t0, "ready": ready}
            post(port, bodies[:50])  # warm-up
            for c in concurrency:
                clients = threading.local()

                def call(body: bytes, clients=clients) -> None:
                    if not hasattr(clients, "conn"):
                        clients.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    _post(clients.conn, body)

                lat = run_threads(c, bodies, call, seconds)
                out[f"c{c}"] = summarise(lat, seconds)
            pids = children(proc.pid) if workers > 1 else [proc.pid]
            out["worker_memory"] = [smaps(p) for p in pids]
            out["fallbacks"] = post(port, bodies[:200])
        finally:
            stop_server(proc, timeout=60)
    return out


def _post(conn: http.client.HTTPConnection, body: bytes) -> dict:
    conn.request("POST", "/v1/recommend", body=body, headers={"content-type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def post(port: int, bodies: list[bytes]) -> int:
    """Send ``bodies`` one by one; the number of answers that fell back to popularity (must be 0)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    answers = [_post(conn, b) for b in bodies]
    conn.close()
    bad = [a for a in answers if len(a["items"]) != 10]
    if bad:
        raise RuntimeError(f"{len(bad)} answers without 10 items")
    return sum(bool(a.get("fallback")) for a in answers)


# --- driver -------------------------------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The environment of every process started here: no API key; OpenMP threads that sleep rather than spin
    while they wait (on a machine shared with other work, spinning threads slow FAISS down several times)."""
    env = {k: v for k, v in os.environ.items() if k != "GENREC_API_KEY"}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def child(step: str, **kw: Any) -> dict[str, Any]:
    """Run one step in a fresh interpreter; its JSON answer plus wall time and peak RSS."""
    cmd = [sys.executable, __file__, "--step", step, "--step-args", json.dumps(kw, default=str)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"step {step} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "seconds": wall}


def run_step(step: str, kw: dict[str, Any]) -> None:
    folder = Path(kw.pop("folder"))
    if step == "generate":
        out = step_generate(int(kw["n"]), folder, int(kw["dim"]), int(kw["seed"]))
    elif step == "export":
        out = step_export(folder, kw["ann"], float(kw["memory_mb"]))
    else:
        out = step_measure(folder, int(kw["queries"]), int(kw["requests"]), int(kw["seed"]))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out, default=float))


def dir_size(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def measure_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.work / str(n)
    load_start = list(os.getloadavg())
    t0 = time.perf_counter()
    if (folder / "bundle" / "manifest.json").exists() and args.reuse:
        gen, exp = {"reused": True}, {"reused": True}
    else:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        print(f"[{n:,}] generating the run ...", flush=True)
        gen = child("generate", n=n, folder=folder, dim=args.dim, seed=args.seed)
        print(f"[{n:,}] exporting ({args.ann}) ...", flush=True)
        exp = child("export", folder=folder, ann=args.ann, memory_mb=args.memory_mb)
    manifest = json.loads((folder / "bundle" / "manifest.json").read_text())
    print(f"[{n:,}] measuring load, recall, in-process latency ...", flush=True)
    meas = child("measure", folder=folder, queries=args.queries, requests=args.requests, seed=args.seed + 100)
    http_ = {}
    for w in args.workers:
        print(f"[{n:,}] HTTP with {w} worker(s) ...", flush=True)
        http_[str(w)] = http_runs(folder, w, args.concurrency, args.seconds, args.seed)
    files = dir_size(folder / "bundle")
    out = {"items": n, "generate": gen, "export": exp, "ann": manifest.get("ann"), "bundle_files": files,
           "bundle_bytes": sum(files.values()), "measure": meas, "http": http_,
           "load_average_at_start": load_start, "load_average_at_end": list(os.getloadavg()),
           "wall_seconds": time.perf_counter() - t0}
    if args.clean:
        shutil.rmtree(folder)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", default="100000,1000000", help="Comma-separated catalog sizes.")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--ann", default="auto", help="Passed to export_bundle (auto, flat, ivf, ivfpq).")
    ap.add_argument("--memory-mb", type=float, default=1024.0, help="The index memory budget (ann_memory_mb).")
    ap.add_argument("--work", type=Path, default=Path("runs/serve-scale"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--queries", type=int, default=1000, help="Held-out queries for recall@10.")
    ap.add_argument("--requests", type=int, default=500, help="In-process requests per concurrency.")
    ap.add_argument("--seconds", type=float, default=15.0, help="HTTP load per (workers, concurrency).")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse", action="store_true", help="Measure an existing bundle under --work again.")
    ap.add_argument("--clean", action="store_true", help="Delete each size's run and bundle after measuring.")
    ap.add_argument("--allow-dirty", action="store_true", help="Record results from a modified checkout (marked).")
    ap.add_argument("--render", action="store_true", help="Only rewrite serve_scale.md from serve_scale.json.")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--step-args", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        return run_step(args.step, json.loads(args.step_args))

    from genrec.eval.report import git_commit, machine

    path = args.out / "serve_scale.json"
    result = json.loads(path.read_text()) if path.exists() else {"rows": [], "details": []}
    if args.render:
        (args.out / "serve_scale.md").write_text(render(result))
        return
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    dirty = bool((git_commit() or "").endswith("-dirty"))
    dirty_files = subprocess.run(["git", "diff", "--name-only", "HEAD"], capture_output=True, text=True,
                                 cwd=Path(__file__).parent).stdout.split() if dirty else []
    if dirty and not args.allow_dirty:
        raise SystemExit("the checkout has uncommitted changes; commit first (or pass --allow-dirty)")
    args.workers = [int(x) for x in args.workers.split(",")]
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    start = time.perf_counter()
    fresh = [measure_size(int(float(n)), args) for n in args.items.split(",")]
    sizes = {d["items"] for d in fresh}
    details = [d for d in result.get("details", []) if d["items"] not in sizes] + fresh
    for d in fresh:
        d["commit"], d["dirty"] = commit, dirty
    from genrec.io import write_json, write_text

    load = os.getloadavg()
    result = {"benchmark": "serve_scale", "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "omp_wait_policy": child_env()["OMP_WAIT_POLICY"], "commit": commit, "dirty": dirty,
              "dirty_files": dirty_files, "machine": machine(),
              "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "wall_seconds": time.perf_counter() - start,
              "contention": (f"the machine is shared with other work: load average {load[0]:.1f} (1 min) at the end "
                             f"on {os.cpu_count()} CPUs, so timings may be contended"),
              "rows": [row(d) for d in sorted(details, key=lambda d: d["items"])],
              "details": sorted(details, key=lambda d: d["items"])}
    write_json(path, result)
    write_text(args.out / "serve_scale.md", render(result))
    print(render(result))


if __name__ == "__main__":
    main()
