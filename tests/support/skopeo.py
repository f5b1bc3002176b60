"""skopeo in an isolated environment, and the pull every skopeo test makes.

Why: skopeo must see no ambient credentials, mirrors or internet, and the
tests that pull with it all check the same thing afterwards: skopeo
verified every digest, and the ``dir:`` it wrote holds the exact bytes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from .digests import file_digest
from .processes import NO_INTERNET_ENV

SKOPEO = "/usr/bin/skopeo"


def skopeo_env(workdir: Path) -> dict[str, str]:
    """An environment with no ambient credentials, mirrors or internet."""
    home = workdir / "skopeo-home"
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    auth = home / "auth.json"
    if not auth.exists():
        auth.write_text('{"auths": {}}')
    conf = home / "registries.conf"
    if not conf.exists():
        conf.write_text(
            'unqualified-search-registries = []\nshort-name-mode = "disabled"\n'
        )
    policy = home / "policy.json"
    if not policy.exists():
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(run),
        "XDG_CONFIG_HOME": str(home / "config"),
        "REGISTRY_AUTH_FILE": str(auth),
        "TMPDIR": str(home),
    }
    env.update(NO_INTERNET_ENV)
    return env


def run_skopeo(
    args: Sequence[str], workdir: Path, check: bool = True, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """Run skopeo with an isolated environment; output captured as text."""
    if not Path(SKOPEO).exists():
        raise RuntimeError(f"{SKOPEO} missing: apt-get install skopeo")
    env = skopeo_env(workdir)
    home = Path(env["HOME"])
    (home / "registries.d").mkdir(exist_ok=True)
    argv = [
        SKOPEO,
        "--policy",
        str(home / "policy.json"),
        "--registries-conf",  # hidden flag; skopeo 1.9 ignores the env var
        str(home / "registries.conf"),
        "--registries.d",
        str(home / "registries.d"),
        *args,
    ]
    proc = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"skopeo failed ({proc.returncode}): {' '.join(argv)}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def skopeo_pull(
    at: str,
    name: str,
    out: Path,
    *flags: str,
    global_flags: Sequence[str] = (),
    check: bool = True,
    tls_verify: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``skopeo copy docker://AT/NAME dir:OUT``; ``at`` is ``host:port``.

    Plain http unless ``tls_verify`` (then pass ``--src-cert-dir`` in
    ``flags``). skopeo verifies every digest it copies.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        *global_flags,
        "copy",
        *([] if tls_verify else ["--src-tls-verify=false"]),
        *flags,
        f"docker://{at}/{name}",
        f"dir:{out}",
    ]
    return run_skopeo(args, out.parent, check=check)


def assert_pulled(out: Path, blobs: Iterable[str], manifest: str | None = None) -> None:
    """``out`` (a skopeo ``dir:``) holds every blob, and ``manifest``, exactly."""
    if manifest is not None:
        assert file_digest(out / "manifest.json") == manifest
    for blob in blobs:
        path = out / blob.split(":", 1)[1]
        assert path.exists(), (
            f"{blob} missing in {sorted(p.name for p in out.iterdir())}"
        )
        assert file_digest(path) == blob
