"""``build_kernel.py --verify``: install and run a built bundle offline in an emulated Kaggle image.

It does not install torch (5 GB): it emulates the image by exposing exactly the listed distributions of this
project's environment to a fresh venv (symlinks + a .pth file), then runs the kernel notebook there with
papermill under ``unshare -n`` (or, where namespaces are not allowed, a sitecustomize that refuses
non-loopback connections) against a test set laid out like Kaggle mounts it (:mod:`.testset`). All of it
happens in a temp workspace, never inside the bundle folder (whose dataset/ and kernel/ get uploaded).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kaggle_utils import io
from kaggle_utils.kernel.bundle import file_table
from kaggle_utils.kernel.image import VENV_OWN, image_distributions, installed, read_image_list
from kaggle_utils.kernel.layout import (
    EMULATION,
    FALLBACK,
    IMAGE_LIST,
    INPUT_ENV,
    MANIFEST,
    REPORT,
    VERIFY_REPORT,
    VerifyError,
    canonical,
)
from kaggle_utils.kernel.testset import prepare_test_set
from kaggle_utils.kernel.wheels import wheel_name


def check_manifest(out: Path) -> list[str]:
    """Files missing, changed or unlisted relative to the dataset's manifest."""
    dataset, kernel = out / "dataset", out / "kernel"
    if not (dataset / MANIFEST).is_file():
        return [f"{dataset / MANIFEST} does not exist: build the bundle first"]
    manifest = io.read_json(dataset / MANIFEST)
    problems = []
    for root, listed, prefix in ((dataset, manifest["files"], "dataset/"), (kernel, manifest["kernel_files"],
                                                                           "kernel/")):
        actual = file_table(root, skip={MANIFEST} if root == dataset else ())
        for rel in sorted(set(listed) - set(actual)):
            problems.append(f"{prefix}{rel} is listed in the manifest but missing from the bundle")
        for rel in sorted(set(actual) - set(listed)):
            problems.append(f"{prefix}{rel} is in the bundle but not in the manifest")
        for rel in sorted(set(listed) & set(actual)):
            if listed[rel]["sha256"] != actual[rel]["sha256"]:
                problems.append(f"{prefix}{rel} differs from the manifest (sha256)")
    return problems


def write_manifest(out: Path) -> None:
    """Re-list the bundle's files (after a deliberate edit); the build does this itself."""
    dataset, kernel = out / "dataset", out / "kernel"
    manifest = io.read_json(dataset / MANIFEST)
    manifest["files"], manifest["kernel_files"] = file_table(dataset, skip={MANIFEST}), file_table(kernel)
    listing = json.dumps([manifest["files"], manifest["kernel_files"]], sort_keys=True).encode()
    manifest["bundle_sha256"] = hashlib.sha256(listing).hexdigest()
    io.write_json(dataset / MANIFEST, manifest)


def _top_levels(dist: md.Distribution) -> set[str]:
    """Top-level names a distribution installs into site-packages (from RECORD, else top_level.txt)."""
    names = set()
    for f in dist.files or []:
        parts = Path(f).parts
        if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
            names.add(parts[0])
    if not names and (tl := dist.read_text("top_level.txt")):
        names = {n.strip() for n in tl.splitlines() if n.strip()}
    return names


def link_image(image: Iterable[str], dest: Path, dists: dict[str, md.Distribution] | None = None) -> list[str]:
    """Expose exactly ``image``'s distributions of this environment in ``dest`` (symlinks).

    A top-level folder shared with a distribution outside the image (namespace packages) is mirrored file by
    file, so nothing else leaks in. Returns the names linked.
    """
    dists = installed() if dists is None else dists
    owners: dict[str, set[str]] = {}
    for name, dist in dists.items():
        for top in _top_levels(dist):
            owners.setdefault(top, set()).add(name)
    linked = []
    dest.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(image) - VENV_OWN):
        dist = dists.get(name)
        if dist is None:
            continue
        site = Path(str(dist.locate_file("")))
        for top in sorted(_top_levels(dist)):
            src, target = site / top, dest / top
            if not src.exists() or target.exists() or target.is_symlink():
                continue
            if owners.get(top, set()) <= set(image) or src.is_file():
                target.symlink_to(src)
            else:  # shared with a package outside the image: only this distribution's own files
                for f in dist.files or []:
                    if Path(f).parts[0] == top and (site / f).is_file():
                        (dest / f).parent.mkdir(parents=True, exist_ok=True)
                        if not (dest / f).exists():
                            (dest / f).symlink_to(site / f)
        linked.append(name)
    return linked


BLOCK_SOCKETS = '''\
"""kaggle_utils verify: no network (this machine does not allow a network namespace)."""
import socket

_connect = socket.socket.connect


def _local(address):
    host = address[0] if isinstance(address, tuple) else address
    return isinstance(host, str) and (host.startswith("127.") or host in ("::1", "localhost") or "/" in host)


def _guarded(self, address):
    if self.family == socket.AF_UNIX or _local(address):
        return _connect(self, address)
    raise OSError(101, f"network disabled by kaggle_utils verify (connect to {address!r})")


def _guarded_ex(self, address):
    try:
        _guarded(self, address)
    except OSError as err:
        return err.errno or 101
    return 0


socket.socket.connect = _guarded
socket.socket.connect_ex = _guarded_ex
'''


PROBE = """import socket
try:
    socket.create_connection(("1.1.1.1", 443), timeout=5).close()
    print("OPEN")
except OSError as err:
    print("blocked:", err)
"""


def network_isolation() -> str:
    """``unshare -n`` (a network namespace with only loopback) when allowed here, else ``sitecustomize``."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare and ip:
        probe = subprocess.run([unshare, "-n", "sh", "-c", f"{ip} link set lo up"], capture_output=True)
        if probe.returncode == 0:
            return "unshare -n"
    return "sitecustomize"


def _offline(cmd: list[str], method: str) -> list[str]:
    if method != "unshare -n":
        return cmd
    return [shutil.which("unshare") or "unshare", "-n", "sh", "-c",
            f'{shutil.which("ip") or "ip"} link set lo up && exec "$@"', "sh", *cmd]


@dataclass
class VerifyReport:
    ok: bool
    network: str
    seconds: dict[str, float]
    root: str  # the workspace (venv, emulated /kaggle): a temp folder, removed after success unless kept
    submission: str
    n_images: int
    linked: list[str]
    installed_from_bundle: list[str]
    test_set: str = ""
    network_probe: str = ""
    kept: bool = False

    def summary(self) -> str:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        where = f"workspace kept: {self.root}" if self.kept else "workspace removed"
        return (f"[verify] OK: {self.n_images} test ids, grades 0-4, network blocked by {self.network}; "
                f"installed from the bundle only: {self.installed_from_bundle}; {steps}; {where}\n"
                f"[verify] test set: {self.test_set}")


def _diagnose(text: str) -> str | None:
    """Name the missing wheel or file from pip's or Python's words."""
    if m := re.search(r"No matching distribution found for ([A-Za-z0-9_.\-]+)", text):
        name = m.group(1)
        return (f"wheel for {name} is missing from the bundle (pip: No matching distribution found for "
                f"{name}); rebuild, or add {name} to the image list if Kaggle has it")
    if m := re.search(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'", text):
        module = m.group(1).split(".")[0]
        dists = md.packages_distributions().get(module, [module])
        return (f"wheel for {canonical(dists[0])} (module {module!r}) is missing from the bundle and not on the "
                f"assumed Kaggle image; add it to the closure (kernel.UNDECLARED) or to {IMAGE_LIST.name}")
    if m := re.search(r"(FileNotFoundError|No such file or directory)[^\n]*?'([^']+)'", text):
        return f"file missing: {m.group(2)}"
    return None


def _stream_text(path: Path) -> str:
    """Everything an executed notebook printed."""
    if not path.is_file():
        return ""
    nb = json.loads(path.read_text(encoding="utf-8"))
    return "".join("".join(o.get("text", "")) for c in nb.get("cells", []) for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def _notebook_errors(path: Path) -> str:
    """Error and stream outputs of an executed notebook (what failed, in the kernel's words)."""
    if not path.is_file():
        return ""
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts = []
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                parts.append(f"In [{cell.get('execution_count')}]: {out.get('ename')}: {out.get('evalue')}")
    return "\n".join(parts)


@dataclass
class EmulatedImage:
    """The emulated Kaggle image: a fresh venv, what it sees, how the network is cut."""

    python: Path
    site: Path
    env: dict[str, str]
    linked: list[str]
    network: str
    probe: str


def emulate_image(root: Path, kaggle: Path, python: str | None, network: str, image_list: Path) -> EmulatedImage:
    """A fresh venv seeing exactly the image's distributions of this environment, private dirs, no network."""
    venv = root / "venv"
    base = python or _base_python()
    proc = subprocess.run([base, "-m", "venv", str(venv)], capture_output=True, text=True)
    if proc.returncode:
        raise VerifyError("venv", f"{base} -m venv failed: {proc.stderr[-1000:]}")
    vpy = venv / "bin" / "python"
    # Kaggle has one, recent setuptools (torch requires >= 77): the image's, not the venv's bundled 65.x
    subprocess.run([str(vpy), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True,
                   env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    site = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dists = installed()
    image, _ = image_distributions(read_image_list(image_list), dists)
    linked = link_image(image, root / "image", dists)
    io.write_text(site / "kaggle_image.pth", f"{root / 'image'}\n")
    method = network_isolation() if network == "auto" else network
    if method == "sitecustomize":
        io.write_text(site / "sitecustomize.py", BLOCK_SOCKETS)
    home = root / "home"
    home.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1",
           "JUPYTER_PATH": str(venv / "share" / "jupyter"), "JUPYTER_DATA_DIR": str(home / "jupyter"),
           "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
           "IPYTHONDIR": str(home / ".ipython"), "MPLCONFIGDIR": str(home / "mpl"),
           "KAGGLE_KERNEL_RUN_TYPE": "Batch", INPUT_ENV: str(kaggle / "input")}
    proc = subprocess.run([str(vpy), "-m", "ipykernel", "install", "--prefix", str(venv), "--name",
                           "kaggle-verify"], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise VerifyError("image", "ipykernel is not importable in the emulated image: "
                                   f"{(_diagnose(proc.stderr) or proc.stderr[-800:])}")
    probe = subprocess.run(_offline([str(vpy), "-c", PROBE], method), capture_output=True, text=True, env=env)
    if probe.returncode != 0 or not probe.stdout.startswith("blocked"):
        raise VerifyError("network", f"could not cut the network with {method}: {probe.stdout}{probe.stderr[-500:]}")
    return EmulatedImage(vpy, site, env, linked, method, probe.stdout.strip())


def _run_kernel(out: Path, kaggle: Path, models_dir: Path, competition: str, image: EmulatedImage, timeout: int) -> None:
    """papermill runs the bundle's kernel notebook in the emulated image, offline, with Kaggle's paths."""
    params = {"models_dir": str(models_dir),
              "test_csv": str(kaggle / "input" / competition / "test.csv"),
              "test_images": str(kaggle / "input" / competition / "test_images"),
              "out_dir": str(kaggle / "working"), "device": "cpu", "batch_size": 4, "workers": 2}
    run_notebook(out / "kernel" / "kernel.ipynb", kaggle.parent / "kernel.out.ipynb", params, kaggle / "working",
                 image, timeout)


def run_notebook(notebook: Path, executed: Path, params: dict[str, Any], cwd: Path, image: EmulatedImage,
                 timeout: int) -> str:
    """papermill runs ``notebook`` in the emulated image, offline; returns what it printed. A failure is a
    :class:`VerifyError` naming the missing wheel or file, else the failing cell; an install that only got
    through with ``--no-deps`` fails too (it would run on Kaggle, but the bundle has a gap)."""
    cmd = [str(image.python), "-m", "papermill", str(notebook), str(executed), "-k",
           "kaggle-verify", "--cwd", str(cwd), "--no-progress-bar", "--execution-timeout",
           str(timeout), "-y", json.dumps(params)]
    try:
        proc = subprocess.run(_offline(cmd, image.network), capture_output=True, text=True, env=image.env,
                              timeout=timeout + 120)
    except subprocess.TimeoutExpired as err:
        raise VerifyError("kernel run", f"the notebook ran past {timeout + 120} s; see {executed}") from err
    printed = _stream_text(executed)
    if proc.returncode == 0 and FALLBACK in printed:
        raise VerifyError("kernel install", f"{_diagnose(printed) or 'pip could not resolve'}; the notebook only "
                                            f"got through with --no-deps (executed notebook: {executed})")
    if proc.returncode:
        text = proc.stdout + proc.stderr + "\n" + _notebook_errors(executed)
        cell = _notebook_errors(executed).splitlines()
        where = cell[0] if cell else "papermill"
        raise VerifyError("kernel run", f"{_diagnose(text) or where}\n(executed notebook: {executed})\n"
                                        f"{text[-1500:]}")
    return printed


def installed_from_bundle(image: EmulatedImage, manifest: dict) -> list[str]:
    """What the kernel installed into the venv besides the image: exactly the bundle's wheels, or an error."""
    listing = subprocess.run([str(image.python), "-c", "import json, importlib.metadata as m, sys; print(json.dumps("
                              "[(d.metadata['Name'], str(d.locate_file(''))) for d in m.distributions()]))"],
                             capture_output=True, text=True, env=image.env, check=True)
    ours = sorted(canonical(n) for n, where in json.loads(listing.stdout)
                  if Path(where).resolve() == image.site.resolve() and canonical(n) not in VENV_OWN)
    wheels = sorted(wheel_name(Path(f))[0] for f in manifest["files"] if f.startswith("wheels/"))
    if ours != wheels:
        raise VerifyError("isolation", f"the venv holds {ours} besides the image, but the bundle's wheels are {wheels}")
    return ours


def verify(out: str | os.PathLike, images: Sequence[str | os.PathLike] | None = None, n_images: int = 6,
           python: str | None = None, network: str = "auto", timeout: int | None = None,
           image_list: Path = IMAGE_LIST, progress: bool = True, data: str | os.PathLike | None = None,
           limit: int | None = None, keep: bool = False) -> VerifyReport:
    """Install the bundle into a fresh venv that sees only the assumed Kaggle image, run the kernel notebook
    offline on a Kaggle-shaped test set, check ``submission.csv``. Raises :class:`VerifyError` naming the step.

    The test set: the competition's own (``data``: test.csv + test_images/, its first ``limit`` ids), else
    ``images``, else a small bundled sample (the output says which). The workspace (venv, emulated /kaggle) is
    a temp folder, never inside ``out``, whose folders get uploaded: removed after success unless ``keep``,
    kept after a failure for inspection (the error names it). ``timeout`` (the notebook's, in seconds)
    defaults to 900 + 2 per test image. Only ``verify_report.json`` is written to ``out``.
    """
    say = print if progress else (lambda *a, **k: None)
    return in_workspace(out, "kaggle_utils_verify_", keep, say, lambda root, bundle: _verify_in(
        root, bundle, images, n_images, python, network, timeout, image_list, say, data, limit))


def in_workspace(out: str | os.PathLike, prefix: str, keep: bool, say: Any,
                 run: Callable[[Path, Path], Any]) -> Any:
    """Both bundles' verify frame: check the manifest, ``run(root, out)`` in a temp workspace (never inside
    ``out``, whose folders get uploaded; kept after a failure, which names it, and with ``keep``), then write
    ``verify_report.json`` into ``out`` and print the report's summary."""
    out = Path(out).resolve()
    problems = check_manifest(out)
    if problems:
        raise VerifyError("manifest", "; ".join(problems[:10]))
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        report = run(root, out)
    except VerifyError as err:
        raise VerifyError(err.step, f"{err.detail}\n(verify workspace kept for inspection: {root})") from err
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    report.kept = keep
    manifest = io.read_json(out / "dataset" / MANIFEST)
    io.write_json(out / VERIFY_REPORT, {**dataclasses.asdict(report), "bundle_sha256": manifest["bundle_sha256"],
                                        "emulation": EMULATION})
    say(report.summary())
    return report


def _verify_in(root: Path, out: Path, images: Sequence[str | os.PathLike] | None, n_images: int,
               python: str | None, network: str, timeout: int | None, image_list: Path, say: Any,
               data: str | os.PathLike | None, limit: int | None) -> VerifyReport:
    """:func:`verify`'s steps, in the workspace ``root``."""
    seconds: dict[str, float] = {}
    t = time.time()
    manifest = io.read_json(out / "dataset" / MANIFEST)
    slug, competition = manifest["dataset"].split("/")[1], manifest["competition"]
    kaggle = root / "kaggle"
    (kaggle / "input").mkdir(parents=True)
    (kaggle / "working").mkdir()
    (kaggle / "input" / slug).symlink_to(out / "dataset", target_is_directory=True)
    models_dir = _link_kernel_source(out, kaggle) or kaggle / "input" / slug / "models"
    ids, test_set = prepare_test_set(kaggle / "input" / competition, data, images, n_images, limit)
    say(f"[verify] test set: {test_set}")
    seconds["manifest+layout"] = time.time() - t

    t = time.time()
    image = emulate_image(root, kaggle, python, network, image_list)
    seconds["venv+image"] = time.time() - t
    say(f"[verify] venv {root / 'venv'} sees {len(image.linked)} image distributions; network: {image.network} "
        f"({image.probe})")

    t = time.time()
    _run_kernel(out, kaggle, models_dir, competition, image, timeout if timeout is not None else 900 + 2 * len(ids))
    seconds["kernel run"] = time.time() - t

    t = time.time()
    check_submission(kaggle / "working" / "submission.csv", ids)
    ours = installed_from_bundle(image, manifest)
    seconds["checks"] = time.time() - t
    return VerifyReport(True, image.network, {k: round(v, 1) for k, v in seconds.items()}, str(root),
                        str(kaggle / "working" / "submission.csv"), len(ids), image.linked, ours, test_set,
                        image.probe)


def _link_kernel_source(out: Path, kaggle: Path) -> Path | None:
    """A bundle that reads its runs from the training kernel's output (``--kernel-source``): the local copy
    the build read stands in for ``/kaggle/input/<kernel-slug>/...``; returns where the kernel reads them."""
    source = (io.read_json(out / REPORT) if (out / REPORT).is_file() else {}).get("kernel_source")
    if not source:
        return None
    mounted = kaggle / Path(source["models_dir"]).relative_to("/kaggle")
    mounted.parent.mkdir(parents=True, exist_ok=True)
    mounted.symlink_to(Path(source["local"]).resolve(), target_is_directory=True)
    return mounted


def _base_python() -> str:
    """The interpreter this venv was made from (same ABI as the image packages linked from it)."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable" and Path(value.strip()).is_file():
                return value.strip()
    return getattr(sys, "_base_executable", sys.executable)


def check_submission(path: Path, ids: Sequence[str]) -> None:
    import pandas as pd

    if not path.is_file():
        raise VerifyError("submission", f"the kernel wrote no {path}")
    sub = io.read_csv(path)
    if list(sub.columns) != ["id_code", "diagnosis"]:
        raise VerifyError("submission", f"{path} columns are {list(sub.columns)}, expected id_code,diagnosis")
    missing = sorted(set(ids) - set(sub["id_code"]))
    extra = sorted(set(sub["id_code"]) - set(ids))
    if missing or extra or len(sub) != len(ids):
        raise VerifyError("submission", f"{path}: ids missing {missing[:10]}, unexpected {extra[:10]}, "
                                        f"{len(sub)} rows for {len(ids)} test ids")
    d = sub["diagnosis"]
    if not pd.api.types.is_integer_dtype(d) or not d.between(0, 4).all():
        raise VerifyError("submission", f"{path}: diagnosis must be integers 0-4, got {sorted(d.unique())[:10]}")
