"""Cold start: import time of each handler module in fresh processes (no AWS call is made at import).

`python -m bench.coldstart <code_uri> <layer_path>` imports <code_uri>/app.py the way Lambda does and
prints one JSON line: the import's wall time and which heavy packages ended up in sys.modules.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HEAVY = ["boto3", "botocore", "pydantic", "pydantic_core", "cryptography", "requests", "urllib3",
         "aws_lambda_powertools", "pynamodb", "jmespath", "yaml", "werkzeug", "moto"]


def _child(code_uri: str, layer: str) -> None:
    import importlib.util
    import time

    sys.path.insert(0, layer)
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("handler_app", Path(code_uri) / "app.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["handler_app"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    elapsed_ms = (time.perf_counter() - started) * 1000
    loaded = sorted(name for name in HEAVY if name in sys.modules)
    print(json.dumps({"import_ms": elapsed_ms, "loaded": loaded, "modules": len(sys.modules)}))


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
        samples, last = [], {}
        for _ in range(runs + 1):  # the first run may write .pyc files: discarded
            proc = subprocess.run([sys.executable, "-m", "bench.coldstart", str(spec.code_uri), str(layer)],
                                  env=env, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{logical} failed to import: {proc.stderr[-2000:]}")
            last = json.loads(proc.stdout.strip().splitlines()[-1])
            samples.append(last["import_ms"])
        samples = samples[1:]
        results[logical] = {
            "median_ms": round(statistics.median(samples), 1),
            "min_ms": round(min(samples), 1),
            "max_ms": round(max(samples), 1),
            "runs": runs,
            "heavy_packages_loaded": last["loaded"],
            "modules_loaded": last["modules"],
            "cumulative_import_ms": {k: round(v, 1) for k, v in _importtime(spec.code_uri, layer, env).items()},
        }
    return results


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
