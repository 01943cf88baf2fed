"""The run registry: every run directory under ``run.output_dir`` with its config, data hashes,
base model, versions, scores and artifacts; ``registry.json`` there names the promoted run.

A run is promoted only if its Jessy Score beats the current model's by ``eval.promote_margin``
(with no promoted run yet, the current model is the prompt-only baseline the run was compared
with) and its verdict is GO (``ignore_verdict`` overrides the latter, never the score).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from jessy.io import write_json


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def registry(root: Path) -> dict[str, Any]:
    return _read(root / "registry.json") or {"current": None, "history": []}


def run_info(run_dir: Path) -> dict[str, Any]:
    meta = _read(run_dir / "run.json") or {}
    summary = _read(run_dir / "summary.json") or {}
    steps = _read(run_dir / "pipeline.json") or {}
    cfg = meta.get("config") or {}
    return {
        "id": run_dir.name, "path": str(run_dir), "created": meta.get("created"),
        "base": (cfg.get("model") or {}).get("base"), "versions": meta.get("versions"),
        "git_commit": meta.get("git_commit"), "data_hashes": meta.get("data_hashes"),
        "steps_done": [s for s, v in steps.items() if v.get("status") == "done"],
        "verdict": summary.get("verdict"), "jessy_score": (summary.get("jessy_score") or {}).get("tuned"),
        "baseline_score": (summary.get("jessy_score") or {}).get("baseline"),
        "artifacts": summary.get("artifacts"), "config": cfg,
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    if not root.is_dir():
        return []
    runs = [run_info(d) for d in sorted(root.iterdir())
            if (d / "run.json").is_file() or (d / "pipeline.json").is_file()]
    current = registry(root)["current"]
    for r in runs:
        r["current"] = r["id"] == current
    return runs


def find(root: Path, run_id: str) -> Path:
    path = Path(run_id)
    if (path / "run.json").is_file() or (path / "pipeline.json").is_file():
        return path
    if (root / run_id).is_dir():
        return root / run_id
    known = ", ".join(r["id"] for r in list_runs(root)) or "none"
    raise ValueError(f"no run {run_id!r} in {root} (runs: {known})")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) and "name" in x for x in d):
        return _flatten({x["name"]: x for x in d}, prefix)
    return {prefix: d}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    fa, fb = _flatten(a), _flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def promote(root: Path, run_id: str, margin: float, ignore_verdict: bool = False) -> tuple[bool, str]:
    """(promoted, why) — the registry changes only when promoted."""
    info = run_info(find(root, run_id))
    if info["jessy_score"] is None:
        return False, f"{info['id']} has no evaluation yet (finish it with: jessy run --resume {info['path']})"
    reg = registry(root)
    if reg["current"]:
        cur = run_info(find(root, reg["current"]))
        against, against_score = f"the current model {cur['id']}", cur["jessy_score"] or 0.0
    else:
        against, against_score = "the prompt-only baseline (no run promoted yet)", info["baseline_score"] or 0.0
    gain = info["jessy_score"] - against_score
    if reg["current"] == info["id"]:
        return False, f"{info['id']} is already the current model"
    if gain < margin:
        return False, (f"{info['id']} scores {info['jessy_score']:.1f}, {gain:+.1f} against {against} "
                       f"({against_score:.1f}); promotion needs +{margin:g}")
    if info["verdict"] != "GO" and not ignore_verdict:
        return False, f"{info['id']} gains {gain:+.1f} but its verdict is {info['verdict']} (see its summary.json)"
    reg["history"].append({"run": info["id"], "score": info["jessy_score"], "previous": reg["current"],
                           "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    reg["current"] = info["id"]
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "registry.json", reg)
    return True, f"{info['id']} is now the current model ({info['jessy_score']:.1f}, {gain:+.1f} against {against})"
