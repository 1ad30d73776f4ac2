"""Every bundle the tests build goes through Kaggle's own client (``kaggle`` 2.2.5, requirements.txt) up to the
wire: ``KaggleApi.kernels_push`` and ``KaggleApi.dataset_create_new`` run all their checks on our folders, and
a stub in place of the API client records the request they would send. Nothing leaves the machine: the stub
answers every call, and any socket that tries to connect fails the test.

Checked: the client accepts each folder, the kernel asks for T4 x2 (``machine_shape: NvidiaTeslaT4``, GPU on,
internet off), the client prints no retired-accelerator warning and no title-does-not-resolve warning; and
``--accelerator p100`` (retired: both our warning and Kaggle's) or ``cpu`` (no GPU) change exactly that.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests

from kaggle_utils.kernel import __main__ as kernel_cli
from kaggle_utils.kernel import accelerators
from kaggle_utils.kernel import bundle as kernel_bundle
from kaggle_utils.kernel.train_bundle import TrainBundleSpec, build_training

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "configs" / "kaggle_quickstart.yaml"
# the GPU recipe: configs/aptos_p100.yaml, renamed configs/kaggle_gpu.yaml (issue 25); whichever is here
GPU_CONFIG = next((p for p in (REPO / "configs" / "kaggle_gpu.yaml", REPO / "configs" / "aptos_p100.yaml")
                   if p.is_file()), REPO / "configs" / "kaggle_gpu.yaml")
RETIRED = "is retired"  # Kaggle's client: "⚠ Warning: 'NvidiaTeslaP100' is retired." on stderr
UNRESOLVED_TITLE = "title does not resolve to the specified id"  # Kaggle's client, on stdout


class NetworkUsed(AssertionError):
    """Something tried to reach the network (never retried by the client: not a ConnectionError)."""


class StubClient:
    """Kaggle's API client as ``kernels_push`` and ``dataset_create_new`` use it: each request is recorded and
    answered here; an attribute the calls do not use does not exist (AttributeError, loudly)."""

    def __init__(self, ext: Any) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.uploaded: list[str] = []  # file names upload_complete was given (nothing is sent)
        self.ext = ext
        self.kernels = SimpleNamespace(kernels_api_client=SimpleNamespace(
            save_kernel=self._answer("save_kernel", ext.ApiSaveKernelResponse)))
        self.datasets = SimpleNamespace(dataset_api_client=SimpleNamespace(
            get_dataset_status=self._not_found, create_dataset=self._answer("create_dataset",
                                                                            ext.ApiCreateDatasetResponse)))
        self.blobs = SimpleNamespace(blob_api_client=SimpleNamespace(start_blob_upload=self._blob))

    def _answer(self, name: str, reply: type) -> Any:
        def call(request: Any) -> Any:
            self.calls.append((name, request))
            return reply()
        return call

    def _not_found(self, request: Any) -> Any:
        """A new dataset: the status lookup answers 404, as Kaggle does for a slug not taken."""
        self.calls.append(("get_dataset_status", request))
        response = requests.Response()
        response.status_code = 404
        raise requests.HTTPError("404 Not Found (stub)", response=response)

    def _blob(self, request: Any) -> Any:
        self.calls.append(("start_blob_upload", request))
        reply = self.ext.ApiStartBlobUploadResponse()
        reply.token, reply.create_url = f"token-{request.name}", f"stub://upload/{request.name}"
        return reply

    def requests(self, name: str) -> list[Any]:
        return [r for n, r in self.calls if n == name]


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NetworkUsed(f"network use in a test that must stay offline: {args[:2]}")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("connect", "connect_ex", "sendto"):
        monkeypatch.setattr(socket.socket, name, _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)


@pytest.fixture
def client(no_network: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, StubClient]:
    """A ``KaggleApi`` with dummy legacy credentials (``import kaggle`` authenticates on import: from the
    environment only, no token to introspect, HOME and the config folder private to the test), whose API
    client is the stub and whose uploads are recorded instead of sent."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / "kaggle"))
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # upload state and archives
    (tmp_path / "tmp").mkdir()
    from kaggle.api import kaggle_api_extended as ext  # the package authenticates here, offline

    stub = StubClient(ext)

    def upload_complete(self: Any, path: str, url: str, quiet: bool, resume: bool = False) -> Any:
        assert url.startswith("stub://"), url
        stub.uploaded.append(Path(path).name)
        return ext.ResumableUploadResult.COMPLETE

    monkeypatch.setattr(ext.KaggleApi, "build_kaggle_client", lambda self: contextlib.nullcontext(stub))
    monkeypatch.setattr(ext.KaggleApi, "upload_complete", upload_complete)
    api = ext.KaggleApi()
    api.authenticate()
    return api, stub


def _push(client: tuple[Any, StubClient], kernel: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    """``kaggle kernels push -p kernel`` through the client: the request it sends, and what it printed."""
    api, stub = client
    capsys.readouterr()
    api.kernels_push(str(kernel))
    printed = capsys.readouterr()
    (request,) = stub.requests("save_kernel")
    assert UNRESOLVED_TITLE not in printed.out + printed.err
    return request, printed.err


def _check_kernel_request(request: Any, kernel: Path) -> None:
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    assert (request.slug, request.new_title) == (meta["id"], meta["title"])
    assert (request.enable_internet, request.is_private, request.kernel_type) == (False, True, "notebook")
    assert request.dataset_data_sources == meta["dataset_sources"]
    assert request.competition_data_sources == meta["competition_sources"] == ["aptos2019-blindness-detection"]
    cells = json.loads(request.text)["cells"]
    assert any("offline-install" in c["metadata"].get("tags", []) for c in cells)


def _create(client: tuple[Any, StubClient], dataset: Path) -> Any:
    """``kaggle datasets create -p dataset --dir-mode tar`` through the client: the create request."""
    api, stub = client
    result = api.dataset_create_new(str(dataset), dir_mode="tar", quiet=True)
    assert not result.error and result.status != "error", result
    (request,) = stub.requests("create_dataset")
    meta = json.loads((dataset / "dataset-metadata.json").read_text())
    assert f"{request.owner_slug}/{request.slug}" == meta["id"] and request.title == meta["title"]
    assert request.license_name == meta["licenses"][0]["name"] and request.is_private is True
    expected = sorted(p.name + (".tar" if p.is_dir() else "") for p in dataset.iterdir()
                      if p.name != "dataset-metadata.json")
    assert sorted(stub.uploaded) == expected  # every file and folder, none skipped
    assert len(request.files) == len(expected)
    return request


def _t4x2(request: Any, err: str) -> None:
    assert (request.machine_shape, request.enable_gpu, request.enable_tpu) == ("NvidiaTeslaT4", True, False)
    assert RETIRED not in err


# ------------------------------------------------------------------------------------------ bundles
def _chain_output(root: Path) -> Path:
    """The quick-start chain's output as `kaggle kernels output` leaves it (placeholder checkpoints: the
    build copies them byte for byte)."""
    for fold in (0, 1):
        d = root / "aptos" / "runs" / "lite0" / f"fold{fold}"
        d.mkdir(parents=True)
        (d / "best.pt").write_bytes(b"checkpoint")
        (d / "config.json").write_text(json.dumps({"model": "efficientnet-lite0"}))
        (d / "oof.csv").write_text("id,grade,pred,fold\na,0,0.1,0\n")
    (root / "aptos" / "run_log.json").write_text(json.dumps({"steps": {}}))
    return root


@pytest.fixture(scope="module")
def submission_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The submission bundle of the quick start's runs, built as the README says (no --accelerator)."""
    root = tmp_path_factory.mktemp("client_submission")
    assert kernel_cli.main([str(_chain_output(root / "kaggle_train")), "--out", str(root / "bundle"),
                            "--owner", "tester"]) == 0
    return root / "bundle"


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The GPU recipe's training bundle, its external data and ImageNet files attached as Kaggle datasets."""
    out = tmp_path_factory.mktemp("client_gpu") / "bundle"
    spec = TrainBundleSpec(GPU_CONFIG, out, owner="tester", weights_datasets=["tester/imagenet-weights"],
                           attach=["tester/diabetic-retinopathy-resized", "tester/idrid"])
    build_training(spec, progress=False)
    return out


# ------------------------------------------------------------------------------------------ the tests
def test_the_quick_start_training_bundle_passes_kaggles_client(quick_train_bundle, client, capsys):
    out, _ = quick_train_bundle
    request, err = _push(client, out / "kernel", capsys)
    _t4x2(request, err)
    _check_kernel_request(request, out / "kernel")
    _create(client, out / "dataset")
    assert RETIRED not in capsys.readouterr().err


def test_the_quick_start_submission_bundle_passes_kaggles_client(submission_bundle, client, capsys):
    request, err = _push(client, submission_bundle / "kernel", capsys)
    _t4x2(request, err)
    _check_kernel_request(request, submission_bundle / "kernel")
    _create(client, submission_bundle / "dataset")


def test_the_gpu_recipe_training_bundle_passes_kaggles_client(gpu_bundle, client, capsys):
    request, err = _push(client, gpu_bundle / "kernel", capsys)
    _t4x2(request, err)
    _check_kernel_request(request, gpu_bundle / "kernel")
    assert request.dataset_data_sources[1:] == ["tester/diabetic-retinopathy-resized", "tester/idrid",
                                                "tester/imagenet-weights"]
    _create(client, gpu_bundle / "dataset")


def test_p100_is_asked_for_with_our_warning_and_kaggles(tmp_path, client, capsys):
    """Retired, still accepted: the metadata says NvidiaTeslaP100, we warn when building, Kaggle at push."""
    argv = [str(_chain_output(tmp_path / "kaggle_train")), "--out", str(tmp_path / "bundle"), "--owner", "tester",
            "--accelerator", "p100"]
    assert kernel_cli.main(argv) == 0
    built = capsys.readouterr()
    ours = [line for line in built.err.splitlines() if line.startswith("warning: accelerator 'p100'")]
    assert len(ours) == 1 and "NvidiaTeslaP100" in ours[0] and "retired on Kaggle" in ours[0], built.err
    assert "RetiredAcceleratorWarning" not in built.err  # a plain line, not Python's warning format
    assert "retired on Kaggle: Sessions run on the default GPU (NvidiaTeslaT4)" in built.out  # the build summary
    meta = json.loads((tmp_path / "bundle" / "kernel" / "kernel-metadata.json").read_text())
    assert (meta["machine_shape"], meta["enable_gpu"], meta["enable_tpu"]) == ("NvidiaTeslaP100", True, False)
    request, err = _push(client, tmp_path / "bundle" / "kernel", capsys)
    assert request.machine_shape == "NvidiaTeslaP100" and request.enable_gpu is True
    assert f"'NvidiaTeslaP100' {RETIRED}" in err and "NvidiaTeslaT4" in err  # Kaggle's own warning


def test_the_library_warns_for_a_retired_accelerator_as_a_python_warning(tmp_path):
    """Called as a library (no command line), the check both builds run first warns the Python way; Kaggle's
    own spelling of the retired shape is known too."""
    names = TrainBundleSpec(QUICK, tmp_path, owner="tester", accelerator="NvidiaTeslaP100").names("comp", {})
    with pytest.warns(accelerators.RetiredAcceleratorWarning, match="retired on Kaggle"):
        acc = kernel_bundle.check_accelerator(names)
    assert acc.name == "p100" and kernel_bundle.kernel_metadata(names)["machine_shape"] == "NvidiaTeslaP100"


def test_cpu_asks_for_no_gpu_and_the_kernel_does_not_require_one(tmp_path, client, capsys):
    argv = ["--train", str(QUICK), "--out", str(tmp_path / "bundle"), "--owner", "tester", "--accelerator", "cpu"]
    assert kernel_cli.main(argv) == 0
    assert "warning: accelerator" not in capsys.readouterr().err
    kernel = tmp_path / "bundle" / "kernel"
    meta = json.loads((kernel / "kernel-metadata.json").read_text())
    assert (meta["enable_gpu"], meta["enable_tpu"]) == (False, False) and "machine_shape" not in meta
    params = next("".join(c["source"]) for c in json.loads((kernel / "train_kernel.ipynb").read_text())["cells"]
                  if "parameters" in c["metadata"].get("tags", []))
    assert "require_gpu = False  # stop when there is no CUDA device" in params
    request, err = _push(client, kernel, capsys)
    assert not request.machine_shape and request.enable_gpu is False and RETIRED not in err  # unset: ""


def test_the_config_names_the_accelerator_and_the_command_line_overrides_it(tmp_path):
    cfg = {"accelerator": "p100"}
    spec = TrainBundleSpec(QUICK, tmp_path, owner="tester")
    assert spec.names("comp", cfg).accelerator == "p100" and spec.names("comp", {}).accelerator == "t4x2"
    spec.accelerator = "cpu"
    assert spec.names("comp", cfg).accelerator == "cpu"
    assert "accelerator: t4x2" in QUICK.read_text()  # the quick start says what it asks for


def test_an_unknown_accelerator_is_refused_before_any_build(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        kernel_cli.main(["--train", str(QUICK), "--out", str(tmp_path / "b"), "--accelerator", "gpu"])
    assert exit_.value.code == 2 and "--accelerator: accelerator 'gpu' is ambiguous" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_stub_refuses_the_network(client):
    with pytest.raises(NetworkUsed):
        socket.create_connection(("www.kaggle.com", 443), timeout=1)
    with pytest.raises(NetworkUsed):
        requests.get("https://www.kaggle.com/api/v1", timeout=1)
    assert "kaggle" in sys.modules
