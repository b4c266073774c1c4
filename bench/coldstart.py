"""Cold start: import time of each handler module in fresh processes (no AWS call is made at import).

`python -m bench.coldstart <code_uri> <layer_path>` imports <code_uri>/app.py the way Lambda does and
prints one JSON line: the import's wall time, which heavy packages ended up in sys.modules, and every
third-party module it loaded. `python -m bench.coldstart --split <file> <code_uri> <layer_path>`
first imports only those third-party modules, in the same order (the handler's dependency floor:
what the import would cost if PlayVault's own code took no time), then the handler, and times the
two parts apart in the same process, so both see the same machine noise.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HEAVY = ["boto3", "botocore", "pydantic", "pydantic_core", "cryptography", "requests", "urllib3",
         "aws_lambda_powertools", "pynamodb", "jmespath", "yaml", "werkzeug", "moto"]


def _import_handler(code_uri: str, layer: str) -> float:
    import importlib.util
    import time

    sys.path.insert(0, layer)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("handler_app", Path(code_uri) / "app.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["handler_app"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return (time.perf_counter() - started) * 1000


def _child(code_uri: str, layer: str) -> None:
    elapsed_ms = _import_handler(code_uri, layer)
    loaded = sorted(name for name in HEAVY if name in sys.modules)
    third_party = [name for name, mod in list(sys.modules.items())
                   if "site-packages" in (getattr(mod, "__file__", None) or "")]
    print(json.dumps({"import_ms": elapsed_ms, "loaded": loaded, "modules": len(sys.modules),
                      "third_party": third_party}))


def _split_child(names_file: str, code_uri: str, layer: str) -> None:
    import importlib
    import time

    names = json.loads(Path(names_file).read_text())
    started = time.perf_counter()
    for name in names:
        importlib.import_module(name)
    floor_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"floor_ms": floor_ms, "own_ms": _import_handler(code_uri, layer)}))


def _run(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.coldstart", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed to import: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _importtime(code_uri: Path, layer: Path, env: dict[str, str]) -> dict[str, float]:
    """Cumulative import ms of the heavy packages (outermost occurrence), from -X importtime."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "bench.coldstart", str(code_uri), str(layer)],
                          env=env, capture_output=True, text=True, timeout=120, check=True)
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)", line)
        if not match:
            continue
        name = match.group(4)
        if name in HEAVY or name.startswith("playvault"):
            # The same package appears once; nested lines come before their parent, so the last wins.
            out[name] = int(match.group(2)) / 1000
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def measure(functions: dict[str, Any], layer: Path, env: dict[str, str], runs: int = 5) -> dict[str, Any]:
    env = {**os.environ, **env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # unreachable: any call would fail
           "PYTHONPATH": os.pathsep.join([str(layer), str(Path(__file__).resolve().parents[1])])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    results = {}
    for logical, spec in sorted(functions.items()):
        last = _run([str(spec.code_uri), str(layer)], env)  # may write .pyc files: discarded
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as names:
            json.dump(last["third_party"], names)
        split_args = ["--split", names.name, str(spec.code_uri), str(layer)]
        try:
            samples, floor, own = [], [], []
            for _ in range(runs):
                last = _run([str(spec.code_uri), str(layer)], env)
                samples.append(last["import_ms"])
                split = _run(split_args, env)
                floor.append(split["floor_ms"])
                own.append(split["own_ms"])
        finally:
            os.unlink(names.name)
        median = statistics.median(samples)
        results[logical] = {
            "median_ms": round(median, 1),
            "min_ms": round(min(samples), 1),
            "max_ms": round(max(samples), 1),
            "runs": runs,
            "dependency_floor_median_ms": round(statistics.median(floor), 1),
            "own_code_ms": round(statistics.median(own), 1),
            "third_party_modules": len(last["third_party"]),
            "heavy_packages_loaded": last["loaded"],
            "modules_loaded": last["modules"],
            "cumulative_import_ms": {k: round(v, 1) for k, v in _importtime(spec.code_uri, layer, env).items()},
        }
    return results


if __name__ == "__main__":
    if sys.argv[1] == "--split":
        _split_child(*sys.argv[2:5])
    else:
        _child(sys.argv[1], sys.argv[2])
