"""--pretrained imagenet: the download against a local HTTP server, and the fine-tuning mechanics."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml

from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.training import pretrained
from catsdogs.training.config import build_config
from catsdogs.training.models import PRETRAINED, build_model, head_name, load_pretrained
from catsdogs.training.optim import build_optimizer, parameter_groups
from catsdogs.training.train import train
from tests.helpers import split_fixture

ROOT = Path(__file__).resolve().parents[2]


def state_dict_bytes() -> bytes:
    """A mobilenet_v3_small's weights with torchvision's 1000-class head, as torch.save writes them."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(build_model("mobilenet_v3_small", 1000, 64).state_dict(), buffer)
    return buffer.getvalue()


class Server:
    """An HTTP server on 127.0.0.1 in a thread; `routes` maps a path to (status, body, bytes actually sent)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, body, sent = routes.get(self.path, (404, b"not found", 9))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:sent])
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(folder))
    return folder / "checkpoints"


def serve_weights(server: Server, monkeypatch: pytest.MonkeyPatch, body: bytes, name_hash: str,
                  sent: int | None = None, status: int = 200) -> str:
    """Serve `body` as mobilenet_v3_small's weights under a file name carrying `name_hash`."""
    path = f"/models/mobilenet_v3_small-{name_hash}.pth"
    server.routes[path] = (status, body, len(body) if sent is None else sent)
    monkeypatch.setitem(pretrained.IMAGENET_URLS, "mobilenet_v3_small", server.url + path)
    return path.rsplit("/", 1)[1]


def test_the_url_table_is_torchvisions() -> None:
    import torchvision.models as tvm

    assert pretrained.IMAGENET_URLS == {name: getattr(tvm, enum).DEFAULT.url for name, enum in PRETRAINED.items()}
    assert pretrained.published_hash(pretrained.IMAGENET_URLS["efficientnet_b0"]) == "7f5810bc"


def test_right_hash_downloads_once_into_the_hub_cache_and_loads(server: Server, hub: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    body = state_dict_bytes()
    name = serve_weights(server, monkeypatch, body, hashlib.sha256(body).hexdigest()[:8])
    model = build_model("mobilenet_v3_small", 2, 64)
    loaded, missed = load_pretrained(model, "mobilenet_v3_small", "imagenet")
    assert loaded == len(model.state_dict()) - 2 and missed == []  # all but the 1000-class head
    assert sorted(p.name for p in hub.iterdir()) == [name]
    assert (hub / name).read_bytes() == body
    source = torch.load(hub / name, weights_only=True)
    assert torch.equal(model.features[0][0].weight, source["features.0.0.weight"])
    del server.routes[f"/models/{name}"]  # a second use reads the cache: the server would answer 404 now
    assert load_pretrained(build_model("mobilenet_v3_small", 2, 64), "mobilenet_v3_small", "imagenet")[0] == loaded


def test_wrong_hash_keeps_nothing_and_says_so(server: Server, hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = state_dict_bytes()
    name = serve_weights(server, monkeypatch, body, "deadbeef")
    with pytest.raises(CatsdogsError) as error:
        pretrained.imagenet_weights("mobilenet_v3_small", progress=False)
    message = str(error.value)
    assert "is corrupt" in message and f"starts {hashlib.sha256(body).hexdigest()[:8]}" in message
    assert "published hash deadbeef" in message and f"put it at {hub / name}" in message
    assert list(hub.iterdir()) == []  # neither the file nor a temporary one


def test_a_connection_cut_midway_keeps_nothing(server: Server, hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = state_dict_bytes()
    name = serve_weights(server, monkeypatch, body, hashlib.sha256(body).hexdigest()[:8], sent=len(body) // 2)
    with pytest.raises(CatsdogsError, match=rf"was cut off after {len(body) // 2:,} of {len(body):,} bytes and "
                                            rf"nothing was kept; try again, or on a machine with internet, download "
                                            rf"http://127.0.0.1:\d+/models/{name} and put it at {hub / name}"):
        pretrained.imagenet_weights("mobilenet_v3_small", progress=False)
    assert list(hub.iterdir()) == []


def test_404_and_no_network_name_the_file_and_where_it_goes(server: Server, hub: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    name = serve_weights(server, monkeypatch, b"gone", "0123abcd", status=404)
    with pytest.raises(CatsdogsError, match=rf"^could not download the ImageNet weights of mobilenet_v3_small: "
                                            rf"http://\S+/{name} answered HTTP 404 Not Found; on a machine with "
                                            rf"internet, download http://\S+/{name} and put it at {hub / name} "
                                            r"\(or pass a weights file with --pretrained FILE\)$"):
        pretrained.imagenet_weights("mobilenet_v3_small", progress=False)
    server.close()  # nothing listens there now: as on a machine without internet
    with pytest.raises(CatsdogsError, match=r"^could not download the ImageNet weights of mobilenet_v3_small "
                                            r"\(\[Errno 111\] Connection refused\); on a machine with internet"):
        pretrained.imagenet_weights("mobilenet_v3_small", progress=False)
    server.httpd.server_close()
    assert not hub.exists() or list(hub.iterdir()) == []
    with pytest.raises(UsageError, match="model cnn3 has no ImageNet weights to download; --pretrained imagenet "
                                         "works with convnext_tiny, efficientnet_b0, mobilenet_v3_small, resnet18"):
        pretrained.imagenet_weights("cnn3")


data = split_fixture((8, 4, 2), size=40)


def test_parameter_groups_give_the_body_its_fraction_of_the_lr() -> None:
    model = build_model("bncnn-s", 2, 32)
    assert head_name(model) == "head.3"
    groups = parameter_groups(model, 5e-4, head_name(model), 0.1)
    assert [g.get("lr_scale", 1.0) for g in groups] == [1.0, 1.0, 0.1, 0.1]
    assert [len(g["params"]) for g in groups[:2]] == [1, 1]  # the head's weight, then its bias
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    optimizer = build_optimizer("adamw", groups, lr=0.01)
    assert [g["lr"] for g in optimizer.param_groups] == [0.01] * 4  # the loop applies lr_scale with the schedule
    assert parameter_groups(model, 5e-4, head_name(model), 1.0) == parameter_groups(model, 5e-4)


def test_frozen_body_then_all_layers_at_their_own_lr(data: Path, tmp_path: Path) -> None:
    """freeze_epochs: 1 leaves every body weight as it started for epoch 1 while the head learns; in
    epoch 2 the body moves too, at body_lr_scale x the head's lr (here the history's lr column)."""
    cfg = build_config(None, dict(data=str(data), out=str(tmp_path / "run"), optim="sgd-nesterov", model="bncnn-s",
                                  image_size=32, epochs=2, batch_size=8, device="cpu", precision="fp32", lr=0.05,
                                  weight_decay=0.0))
    import dataclasses

    lines: list[str] = []
    cfg = dataclasses.replace(cfg, freeze_epochs=1, body_lr_scale=0.1)
    torch.manual_seed(cfg.seed)
    start = build_model("bncnn-s", 2, 32).state_dict()
    one = train(dataclasses.replace(cfg, epochs=1, out=str(tmp_path / "one")), progress=False, log=lines.append)
    after_one = torch.load(one.run_dir / "last.pt", weights_only=True)["model"]
    moved = {name for name, value in after_one.items()
             if value.is_floating_point() and "running" not in name and not torch.equal(value, start[name])}
    assert moved == {"head.3.weight", "head.3.bias"}
    assert "; only the head (head.3) trains for 1 epoch, the body at 0.1 x lr" in next(
        line for line in lines if line.startswith("model bncnn-s"))
    two = train(None, resume=one.run_dir, flags={"epochs": 2}, progress=False, log=lambda _: None)
    after_two = torch.load(two.run_dir / "last.pt", weights_only=True)["model"]
    assert not torch.equal(after_two["features.0.weight"], after_one["features.0.weight"])
    state = torch.load(two.run_dir / "last.pt", weights_only=True)["optimizer"]
    assert [g.get("lr_scale", 1.0) for g in state["param_groups"]] == [1.0, 0.1]
    assert [g["lr"] for g in state["param_groups"]] == pytest.approx([0.05, 0.005])


def test_config_checks_the_fine_tuning_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    for text, message in [("freeze_epochs: -1", "freeze_epochs must be at least 0"),
                          ("freeze_epochs: 1.5", "freeze_epochs must be int"),
                          ("body_lr_scale: 0", "body_lr_scale must be above 0"),
                          ("body_lr_scale: fast", "body_lr_scale must be float")]:
        bad.write_text(text + "\n")
        with pytest.raises(CatsdogsError, match=f"{bad}: {message}"):
            build_config(bad)


def test_the_finetune_recipe_trains_from_a_local_weights_file(data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = ROOT / "configs" / "recipes" / "finetune.yaml"
    settings = yaml.safe_load(recipe.read_text())
    assert settings["pretrained"] == "imagenet" and settings["freeze_epochs"] >= 1
    assert 0 < settings["body_lr_scale"] < 1
    weights = tmp_path / "resnet18.pth"
    torch.save(build_model("resnet18", 1000, 64).state_dict(), weights)
    cfg = build_config(recipe, dict(data=str(data), out=str(tmp_path / "run"), pretrained=str(weights), epochs=2,
                                    image_size=64, batch_size=8, device="cpu"))
    monkeypatch.setattr(pretrained, "download_checked", lambda *a, **k: pytest.fail("must not download"))
    lines: list[str] = []
    result = train(cfg, progress=False, log=lines.append)
    assert result.epochs_done == 2
    assert any(line.startswith("loaded ") and "resnet18 (its 2-class head starts fresh)" in line for line in lines)
