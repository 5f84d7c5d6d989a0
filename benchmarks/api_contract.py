"""API contract: schemathesis, every check and every phase (what ``st run --checks all`` runs), against the
OpenAPI schema that ``genrec serve`` publishes; the answers must match it with no failure and no 5xx.

The full run serves a synthetic bundle (``benchmarks/synthetic_bundle.py``: an untrained HSTU over a 2,000-item
catalog with an approximate index) with ``genrec serve`` twice, without and with an API key, each a
subprocess on a free loopback port:

    python benchmarks/api_contract.py [--max-examples 100] [--seed 0]

Writes benchmarks/results/api_contract.{json,md} with command, commit, machine and wall time. The test suite
runs the same check in-process on a tiny bundle with a small budget (tests/serve/test_api_contract.py).

JSON Schema cannot say that two lists have one length (``timestamps`` has one entry per ``history`` item): a
hook gives the generator's positive cases that rule (:func:`map_case`); the schema states it in the
descriptions. The same with the schemathesis CLI against a running server:

    SCHEMATHESIS_HOOKS=api_contract PYTHONPATH=benchmarks st run --checks all http://127.0.0.1:8000/openapi.json
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.statistic import Statistic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
KEY = "contract-test-key"
# operation -> (the list the others follow, {list with one entry per item: a valid filler entry})
ALIGNED = {"/v1/recommend": ("history", {"timestamps": 0, "actions": None, "history_context": None}),
           "/v1/events": ("items", {"timestamps": 0, "actions": None, "context": None})}


def contract_config(max_examples: int, seed: int, api_key: str | None = None) -> schemathesis.Config:
    """Every check (``--checks all``), one worker, a fixed seed, nothing written to disk; with ``api_key``,
    requests carry it as the bearer token the schema declares."""
    data: dict[str, Any] = {"seed": seed, "workers": 1, "cache": {"enabled": False},
                            "generation": {"max-examples": max_examples, "database": "none"}}
    if api_key:
        data["auth"] = {"openapi": {"bearer": {"bearer": api_key}}}
    config = schemathesis.Config.from_dict(data)
    config.projects.default.checks.update(included_check_names=["all"])
    return config


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Cross-field rules JSON Schema cannot state, taught to the generator (a hook registered on import, so
    ``SCHEMATHESIS_HOOKS=api_contract`` gives ``st run`` the same): in a positive case, the lists that hold one
    entry per item of another list are cut or padded (with a valid entry) to its length, so the case stays
    schema-valid and is valid for the server too. Negative cases are left as drawn."""
    rule = ALIGNED.get(case.path)
    if rule is None or case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if not isinstance(case.body, dict) or not isinstance(case.body.get(rule[0]), list):
        return case
    n = len(case.body[rule[0]])
    for name, filler in rule[1].items():
        given = case.body.get(name)
        if isinstance(given, list):
            case.body[name] = (given + [filler] * n)[:n]
    return case


def run_contract(schema: Any) -> dict[str, Any]:
    """Run every phase against ``schema``; the cases, the failures (deduplicated as the CLI reports them), the
    status codes answered and any error of the run itself."""
    stats, statuses, errors = Statistic(), collections.Counter(), []
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            stats.on_scenario_finished(event.recorder)
            statuses.update(i.response.status_code for i in event.recorder.interactions.values()
                            if i.response is not None)
        elif isinstance(event, events.NonFatalError):
            errors.append(f"{event.label}: {type(event.value).__name__}: {event.value}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    failures = [{"operation": label, "code": f.code, "title": f.title, "message": f.message,
                 "status": group.response.status_code if group.response is not None else None,
                 "reproduce": group.code_sample}
                for label, grouped in stats.failures.items() for group in grouped.values() for f in group.failures]
    return {"cases": stats.total_cases, "operations": len(stats.tested_operations), "failures": failures,
            "server_errors": sum(n for code, n in statuses.items() if code >= 500),
            "statuses": {str(code): n for code, n in sorted(statuses.items())}, "errors": errors}


def describe(result: dict[str, Any]) -> str:
    """One line per failure and error, for an assertion message."""
    return "\n".join([f"{f['operation']}: {f['code']} {f['title']} ({f['status']}): {f['message']}\n"
                      f"  {f['reproduce']}" for f in result["failures"]] + result["errors"])


# --- the full run against `genrec serve` -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(bundle: Path, store: Path, api_key: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    """``genrec serve`` on a free loopback port, once it answers /readyz."""
    port = free_port()
    cmd = [sys.executable, "-m", "genrec", "serve", str(bundle), "--port", str(port), "--store", str(store)]
    env = {**os.environ, "GENREC_API_KEY": api_key or "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"genrec serve did not start; see {log}")


def synthetic_bundle(folder: Path, items: int) -> Path:
    subprocess.run([sys.executable, str(Path(__file__).parent / "synthetic_bundle.py"), "--items", str(items),
                    "--topics", "20", "--out", str(folder)], check=True, stdout=subprocess.DEVNULL)
    return folder / "bundle"


def render(result: dict[str, Any]) -> str:
    lines = ["# API contract", "", f"`{result['command']}`", "",
             f"Commit `{result['commit']}`, {result['machine']['cpus']} CPU cores, schemathesis "
             f"{result['schemathesis']}, {result['created']}, {result['wall_seconds']:.0f} s.", "",
             "Schemathesis with every check (`--checks all`) and every phase (examples, coverage, fuzzing, "
             f"stateful), at most {result['max_examples']} examples per operation and phase, against `genrec "
             f"serve` on {result['bundle']}.", "",
             "| server | operations | cases | failures | 5xx | status codes |", "|---|---|---|---|---|---|"]
    for name, r in result["runs"].items():
        codes = ", ".join(f"{c}: {n}" for c, n in r["statuses"].items())
        lines.append(f"| {name} | {r['operations']} | {r['cases']} | {len(r['failures'])} | {r['server_errors']} "
                     f"| {codes} |")
    lines += ["", f"All: {result['cases']} cases, {result['failures']} failures, {result['server_errors']} 5xx, "
                  f"{result['errors']} errors of the run itself."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from genrec.eval.report import git_commit, machine
    from genrec.io import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-examples", type=int, default=100, help="Per operation and phase.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--items", type=int, default=2000, help="Catalog size of the synthetic bundle.")
    ap.add_argument("--out", type=Path, default=RESULTS / "api_contract")
    args = ap.parse_args()
    t0 = time.perf_counter()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="api-contract-") as tmp:
        bundle = synthetic_bundle(Path(tmp) / "synth", args.items)
        for name, key in (("no API key", None), ("API key", KEY)):
            proc, url = serve(bundle, Path(tmp) / f"history-{bool(key)}.sqlite", key, Path(tmp) / "serve.log")
            try:
                schema = schemathesis.openapi.from_url(f"{url}/openapi.json",
                                                       config=contract_config(args.max_examples, args.seed, key))
                runs[name] = run_contract(schema)
            finally:
                proc.terminate()
                proc.wait(30)
            print(f"{name}: {runs[name]['cases']} cases, {len(runs[name]['failures'])} failures, "
                  f"{runs[name]['server_errors']} 5xx", flush=True)
            if runs[name]["failures"] or runs[name]["errors"]:
                print(describe(runs[name]), flush=True)
    result = {"command": shlex.join(["python", *sys.argv]), "commit": git_commit(), "machine": machine(),
              "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "wall_seconds": time.perf_counter() - t0, "schemathesis": schemathesis.__version__,
              "max_examples": args.max_examples, "seed": args.seed,
              "bundle": f"a synthetic {args.items}-item bundle (benchmarks/synthetic_bundle.py)",
              "cases": sum(r["cases"] for r in runs.values()),
              "failures": sum(len(r["failures"]) for r in runs.values()),
              "server_errors": sum(r["server_errors"] for r in runs.values()),
              "errors": sum(len(r["errors"]) for r in runs.values()), "runs": runs}
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out.with_suffix(".md"), render(result))
    print(render(result))
    if result["failures"] or result["server_errors"] or result["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
