"""The node image, built without a registry: debootstrap + the host's pip + `docker import`.

The tag is a hash of the recipe (Debian packages, Python packages, this
file's code), so `acked image build` rebuilds only when the recipe changes.
The project's source is not in the image: containers mount it read-only at
/src, so a code change needs no rebuild.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clusters.base import ClusterError

IMAGE_REPOSITORY = "acked-node"
SUITE = "bookworm"

#: Debian packages of a node (debootstrap resolves their dependencies, without Recommends)
DEBIAN_PACKAGES = [
    "python3",
    # Debian's ZooKeeper (server and client jars, the zookeeper source package); the `zookeeper`
    # binary package adds only init scripts but depends on the desktop JRE (GTK, Mesa: +250 MB)
    "libzookeeper-java", "default-jre-headless",
    "iproute2", "iptables",
    "openssh-server",
    "fuse3",
    "procps",
    "libfaketime", "faketime",
]

#: Python packages of the broker and the node-side helpers, installed with the host's pip
NODE_PYTHON_PACKAGES = ["kio>=0.6", "crc32c>=2.4", "kazoo>=2.10", "orjson>=3.9", "uvloop>=0.19", "mfusepy>=3.1"]

#: pid 1 of a node: reaps the daemons started through `docker exec`, exits on TERM
NODE_INIT = """\
#!/usr/bin/python3
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
"""

NODE_ENV = {"PYTHONPATH": "/src", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
NODE_CMD = ["/usr/local/bin/acked-init"]

# Parts of a minbase root filesystem a node never reads.
PRUNE = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "var/cache/apt/archives", "var/lib/apt/lists"]

MISSING_TOOL_HINTS = {
    "debootstrap": "apt-get install debootstrap",
    "docker": "install docker (apt-get install docker.io) and start its daemon",
    "tar": "apt-get install tar",
}


def recipe_hash() -> str:
    # the code that shapes the root filesystem is part of the recipe; the CLI and helpers are not
    recipe = {"suite": SUITE, "debian": DEBIAN_PACKAGES, "python": NODE_PYTHON_PACKAGES, "init": NODE_INIT,
              "env": NODE_ENV, "cmd": NODE_CMD, "prune": PRUNE, "code": inspect.getsource(build_image)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_tag() -> str:
    return f"{IMAGE_REPOSITORY}:{recipe_hash()}"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ClusterError(f"{name} is not installed: {MISSING_TOOL_HINTS.get(name, 'install ' + name)}")
    return path


def host_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for the main archive (deb822 sources first, then sources.list)."""
    candidates: list[str] = []
    for f in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                suites = fields.get("Suites", "").split()
                if any(s in (SUITE, "stable") for s in suites):
                    candidates += fields.get("URIs", "").split()
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for f in lists:
        if f.exists():
            for line in f.read_text().splitlines():
                m = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) in (SUITE, "stable"):
                    candidates.append(m.group(1))
    # the main archive, not the security one
    main = [u for u in candidates if "security" not in u]
    if not main:
        raise ClusterError(f"no Debian {SUITE} mirror found in {sources_dir}/sources.list or sources.list.d; "
                           f"add a 'deb <mirror> {SUITE} main' source")
    return main[0]


def docker_image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _step(msg: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)


def _run(cmd: list[str], log, what: str, **kw) -> None:
    p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
    if p.returncode != 0:
        raise ClusterError(f"{what} failed (status {p.returncode}); see {log.name}")


def build_image(force: bool = False, work_dir: Path = Path("/var/tmp/acked-image"), quiet: bool = False) -> str:
    """Build and import the node image unless the current recipe's tag exists; returns the tag."""
    require_tool("docker")
    tag = image_tag()
    if docker_image_exists(tag) and not force:
        if not quiet:
            print(f"{tag} is current (recipe unchanged); use --force to rebuild")
        return tag
    require_tool("debootstrap")
    require_tool("tar")
    mirror = host_mirror()
    t0 = time.monotonic()
    build = work_dir / recipe_hash()
    rootfs = build / "rootfs"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    log_path = build.parent / f"build-{recipe_hash()}.log"
    say = (lambda m: None) if quiet else (lambda m: _step(m, t0))
    try:
        with open(log_path, "w") as log:
            say(f"debootstrap {SUITE} minbase from {mirror} (log: {log_path})")
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                  SUITE, str(rootfs), mirror], log, "debootstrap")
            say("python packages: " + " ".join(NODE_PYTHON_PACKAGES))
            site = rootfs / "usr/local/lib/python3.11/dist-packages"
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site),
                  "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                  *NODE_PYTHON_PACKAGES], log, "pip install into the image")
            say("node setup: init, sshd, pruning")
            init = rootfs / "usr/local/bin/acked-init"
            init.write_text(NODE_INIT)
            init.chmod(0o755)
            # Host keys are made per container at start, never shared through the image.
            for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
                key.unlink()
            (rootfs / "run/sshd").mkdir(parents=True, exist_ok=True)
            for part in PRUNE:
                shutil.rmtree(rootfs / part, ignore_errors=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
            changes = [f"CMD {json.dumps(NODE_CMD)}", *(f"ENV {k}={v}" for k, v in NODE_ENV.items()),
                       f"LABEL acked.image.recipe={recipe_hash()}"]
            say(f"docker import as {tag}")
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                                   stdout=subprocess.PIPE, stderr=log)
            cmd = ["docker", "import"]
            for c in changes:
                cmd += ["--change", c]
            imp = subprocess.run([*cmd, "-", tag], stdin=tar.stdout, stdout=log, stderr=subprocess.STDOUT)
            tar.stdout.close()
            if tar.wait() != 0 or imp.returncode != 0:
                raise ClusterError(f"docker import failed; see {log_path}")
            subprocess.run(["docker", "tag", tag, f"{IMAGE_REPOSITORY}:latest"], stdout=log, stderr=log)
        size = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", tag],
                              capture_output=True, text=True).stdout.strip()
        say(f"built {tag} ({int(size or 0) / 1e6:.0f} MB)")
        return tag
    finally:
        shutil.rmtree(build, ignore_errors=True)
