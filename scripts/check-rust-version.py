#!/usr/bin/env python3
"""Fails when the workspace's declared rust-version is older than what a locked
dependency declares it needs, or when a Dockerfile builds with another toolchain.

No older toolchain can be installed offline to try the build with, so the check
reads what every locked package declares (`cargo metadata --locked`).
"""
import json
import pathlib
import re
import subprocess
import sys


def version(text):
    parts = [int(x) for x in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
ours = {p["rust_version"] for p in meta["packages"] if p["source"] is None}
if len(ours) != 1 or None in ours:
    sys.exit(f"workspace crates declare differing rust-versions: {sorted(map(str, ours))}")
declared = ours.pop()
needs = max(
    (version(p["rust_version"]), p["name"], p["rust_version"])
    for p in meta["packages"]
    if p["source"] is not None and p.get("rust_version")
)
problems = []
if version(declared) < needs[0]:
    problems.append(f"rust-version {declared} is older than {needs[1]}'s {needs[2]}")
root = pathlib.Path(meta["workspace_root"])
for dockerfile in sorted(root.glob("*/Dockerfile")):
    for image in re.findall(r"^FROM rust:(\S+)", dockerfile.read_text(), re.M):
        if not image.startswith(f"{declared}-") and image != declared:
            problems.append(f"{dockerfile.relative_to(root)} builds with rust:{image}, not {declared}")
if problems:
    sys.exit("\n".join(problems))
print(f"rust-version {declared}: covers every locked dependency (highest: {needs[1]} {needs[2]}); Dockerfiles pin it")
