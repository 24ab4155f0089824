"""Trust boundaries of model files: CHGNet checkpoints are read as data (``weights_only``); a
file that needs more is refused, naming the file, before anything in it runs."""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import pytest
import torch

from lamcsp.errors import SetupError
from lamcsp.potentials.chgnet import _load_chgnet, _pretrained_file, read_checkpoint


class Payload:
    """Unpickling this creates ``marker``: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def pretrained_net():
    net, _ = _load_chgnet("0.3.0")
    return net


def test_pretrained_checkpoint_reads_as_data():
    path = _pretrained_file("0.3.0")
    assert path is not None and path.is_file()
    state = read_checkpoint(path)  # weights_only=True
    assert {"state_dict", "model_args"} <= set(state["model"])


def test_pretrained_as_chgnet_loads_it(pretrained_net):
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        ref = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    mine, theirs = pretrained_net.state_dict(), ref.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_finetuned_checkpoint_loads_with_weights_only(tmp_path, pretrained_net):
    # what lamcsp.trainers.CHGNetTrainer writes: torch.save(net.as_dict())
    path = tmp_path / "model.pt"
    torch.save(pretrained_net.as_dict(), path)
    assert set(torch.load(path, weights_only=True)) == {"state_dict", "model_args"}
    net, model_id = _load_chgnet(path)
    assert model_id == "chgnet:model.pt"
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 pretrained_net.state_dict().values()))


def _crafted(tmp_path: Path, pretrained_net) -> tuple[Path, Path]:
    marker = tmp_path / "ran.txt"
    path = tmp_path / "evil.pt"
    torch.save({**pretrained_net.as_dict(), "extra": Payload(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_crafted_checkpoint_is_refused_and_nothing_runs(tmp_path, pretrained_net):
    path, marker = _crafted(tmp_path, pretrained_net)
    with pytest.raises(SetupError) as err:
        _load_chgnet(path)
    assert str(path) in err.value.message and "run code" in err.value.message
    assert "model.options.trusted" in err.value.message
    assert not marker.exists()


def test_crafted_checkpoint_through_the_cli_exits_2(tmp_path, pretrained_net, capsys):
    from ase.build import bulk

    from lamcsp.cli import main

    path, marker = _crafted(tmp_path, pretrained_net)
    bulk("Cu", "fcc", a=3.6).write(tmp_path / "cu.cif")
    rc = main(["relax", str(tmp_path / "cu.cif"), "--model", f"chgnet:{path}", "--device", "cpu",
               "-o", str(tmp_path / "out.extxyz")])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "out.extxyz").exists()


def test_trusted_opt_in_loads_it(tmp_path, pretrained_net):
    path, marker = _crafted(tmp_path, pretrained_net)
    with pytest.raises(pickle.UnpicklingError):  # the refusal comes from torch's weights_only
        torch.load(path, weights_only=True)
    _load_chgnet(path, trusted=True)
    assert marker.exists()  # the user said so: it ran


def test_trusted_is_a_model_option():
    from lamcsp.campaign import parse_campaign

    c = parse_campaign({"name": "x", "system": {"composition": "Cu4"},
                        "model": {"backend": "chgnet", "options": {"trusted": True}}})
    assert c.model.options["trusted"] is True
