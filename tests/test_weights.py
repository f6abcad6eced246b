import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mattecli.errors import UsageError
from mattecli.models import build_model
from mattecli.recipes import load_recipe
from mattecli.weights import detect_indexnet_variant, import_indexnet_official, load_model, save_weights
from tests.test_cli import run_main


def official_checkpoint(path, name="indexnet-m2o-nl-ctx", with_counters=True, extra=None, drop=None):
    """A checkpoint in the authors' layout: DataParallel names, training bookkeeping beside."""
    torch.manual_seed(3)
    model = build_model(load_recipe(name))
    for m in model.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5); m.running_var.uniform_(0.5, 2)
    state = {f"module.{k}": v for k, v in model.state_dict().items()
             if with_counters or not k.endswith("num_batches_tracked")}
    state.update(extra or {})
    for key in drop or ():
        del state[key]
    torch.save({"state_dict": state, "epoch": 30, "optimizer": {"lr": 1e-4}}, path)
    return model.eval()


def test_convert_round_trip_gives_the_same_outputs(tmp_path):
    src = tmp_path / "indexnet_matting.pth.tar"
    reference = official_checkpoint(src)
    model, recipe = import_indexnet_official(src)
    assert recipe.name == "indexnet-m2o-nl-ctx"
    save_weights(model, recipe, tmp_path / "w.safetensors")
    loaded, loaded_recipe = load_model(tmp_path / "w.safetensors")
    assert loaded_recipe == recipe
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))


def test_extra_metadata_adds_entries_but_never_replaces_the_format_or_the_recipe(tmp_path):
    """save_weights: `metadata` adds string entries (a best model's `selected_by`); the file's
    `format` (matte-weights/1) and `recipe` are its own, whatever a caller's dict holds."""
    from mattecli.weights import FORMAT, read_weights_header

    recipe = load_recipe("demo-tcp")
    path = save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors",
                        {"selected_by": "sad", "format": "matte-weights/9", "recipe": "{}"})
    stored, meta = read_weights_header(path)
    assert meta["selected_by"] == "sad" and meta["format"] == FORMAT == "matte-weights/1"
    assert stored == recipe


def test_counters_may_be_absent(tmp_path):
    official_checkpoint(tmp_path / "c.pth", with_counters=False)
    import_indexnet_official(tmp_path / "c.pth")


@pytest.mark.parametrize("name", ["indexnet-hin-nl-ctx", "indexnet-o2o-lin", "indexnet-m2o-lin-ctx", "indexnet-hin-lin"])
def test_variant_is_detected(tmp_path, name):
    official_checkpoint(tmp_path / "c.pth", name)
    _, recipe = import_indexnet_official(tmp_path / "c.pth")
    assert recipe.name == name


def test_missing_and_extra_tensors_are_named(tmp_path):
    official_checkpoint(tmp_path / "c.pth", extra={"module.extra.weight": torch.zeros(1)},
                        drop=["module.pred.1.weight"])
    with pytest.raises(UsageError) as err:
        import_indexnet_official(tmp_path / "c.pth")
    assert "pred.1.weight" in str(err.value) and "extra.weight" in str(err.value)


def test_wrong_recipe_names_the_shape_mismatch(tmp_path):
    official_checkpoint(tmp_path / "c.pth", "indexnet-m2o-nl-ctx")
    with pytest.raises(UsageError, match="not filled|not consumed|shape"):
        import_indexnet_official(tmp_path / "c.pth", "indexnet-o2o-nl-ctx")


def test_a_recipe_of_another_family_is_named_with_its_article(tmp_path):
    official_checkpoint(tmp_path / "c.pth", "indexnet-m2o-nl-ctx")
    with pytest.raises(UsageError, match=f"^{tmp_path / 'c.pth'}: --recipe a2u-dynamic-cs-d-gn is an a2u recipe; "
                                         "this file holds indexnet tensors$"):
        import_indexnet_official(tmp_path / "c.pth", "a2u-dynamic-cs-d-gn")


@pytest.mark.parametrize("layout", [lambda sd: {"model": sd, "epoch": 3}, lambda sd: {"net": sd}])
def test_a_state_dict_under_another_key_converts(tmp_path, layout):
    """A training script's own layout, {'model': state_dict, ...}: convert said the file "does not
    look like an IndexNet matting model" of the right tensors one level down."""
    reference = official_checkpoint(tmp_path / "c.pth")
    torch.save(layout(torch.load(tmp_path / "c.pth")["state_dict"]), tmp_path / "nested.pth")
    model, recipe = import_indexnet_official(tmp_path / "nested.pth")
    assert recipe.name == "indexnet-m2o-nl-ctx"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    torch.save({"model": reference.state_dict(), "ema": reference.state_dict()}, tmp_path / "two.pth")
    with pytest.raises(UsageError, match=r"two.pth: tensors under several keys \(model, ema\); save the one"):
        import_indexnet_official(tmp_path / "two.pth")


@pytest.mark.parametrize("saved", [lambda m: m, lambda m: {"state_dict": m, "epoch": 3}])
def test_a_whole_pickled_model_says_to_save_its_state_dict(tmp_path, saved):
    """torch.save(model) instead of its state_dict: convert said "no state_dict in this checkpoint"."""
    torch.save(saved(torch.nn.Conv2d(4, 1, 1)), tmp_path / "full.pth")
    with pytest.raises(UsageError, match=r"full.pth: a whole pickled torch.nn.modules.conv.Conv2d object, not a "
                                         r"state dict: where its code is, torch.save\(model.state_dict\(\), FILE\)"):
        import_indexnet_official(tmp_path / "full.pth")


def test_a_whole_pickled_model_under_another_key_says_to_save_its_state_dict(tmp_path):
    """{'model': model, 'epoch': 1}, a training script's layout: it said "state_dict entries model are
    pickled objects, not tensors", without the way out."""
    import numpy as np

    torch.save({"model": torch.nn.Conv2d(4, 1, 1), "epoch": 1, "best": np.float64(0.5)}, tmp_path / "run.pth")
    with pytest.raises(UsageError, match=r"^.*run.pth: model holds a whole pickled torch.nn.modules.conv.Conv2d "
                                         r"object, not a state dict: where its code is, torch.save\(model.state_dict"):
        import_indexnet_official(tmp_path / "run.pth")


def test_a_checkpoint_packed_in_a_tar_or_gzip_says_to_unpack_it(tmp_path):
    """It said torch.load found it "not readable as a checkpoint" (a tar holding a torch.save zip)
    or "not a PyTorch checkpoint"."""
    import gzip
    import tarfile

    official_checkpoint(tmp_path / "indexnet_matting.pth.tar")
    with tarfile.open(tmp_path / "download.tar", "w") as tar:
        tar.add(tmp_path / "indexnet_matting.pth.tar", arcname="indexnet_matting.pth.tar")
    (tmp_path / "c.pth.gz").write_bytes(gzip.compress((tmp_path / "indexnet_matting.pth.tar").read_bytes()))
    with pytest.raises(UsageError, match=r"download.tar: a tar archive holding indexnet_matting.pth.tar: unpack it"):
        import_indexnet_official(tmp_path / "download.tar")
    with pytest.raises(UsageError, match=r"c.pth.gz: a gzip-compressed file: decompress it \(gunzip\)"):
        import_indexnet_official(tmp_path / "c.pth.gz")
    import_indexnet_official(tmp_path / "indexnet_matting.pth.tar")  # the authors' name: no tar archive


class Payload:
    """Any class outside torch's allow-list: unpickling it would run arbitrary code."""


def test_pickled_code_is_refused(tmp_path):
    torch.save({"state_dict": {"x": Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(UsageError, match="weights_only"):
        import_indexnet_official(tmp_path / "evil.pth")


class EvalPayload:
    def __reduce__(self):
        return eval, ("1 + 1",)


def test_code_named_by_a_checkpoint_is_refused_without_advice_to_allow_it(tmp_path):
    """A checkpoint whose pickle calls eval was refused with torch's advice to allowlist eval with
    torch.serialization.add_safe_globals 'if you trust this class/function'."""
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": EvalPayload()}, tmp_path / "evil.pth")
    with pytest.raises(UsageError) as err:
        import_indexnet_official(tmp_path / "evil.pth")
    # torch 2.6 names it builtins.eval (and matte then stood in for it, not refused: a later refusal
    # said the tensors were not IndexNet's); later torch says eval
    assert re.fullmatch(re.escape(f"{tmp_path / 'evil.pth'}: refused by torch.load(weights_only=True): Unsupported "
                                  "global: GLOBAL ") + r"(builtins\.)?eval was not an allowed global by default\.",
                        str(err.value)), str(err.value)


def test_a_zip_bomb_sent_as_a_checkpoint_is_refused_before_it_is_unpacked(tmp_path):
    """torch.load unpacks a zip checkpoint's records in memory: a 1 MB .pth whose record unpacks to
    1 GiB of zeros took 1.3 GB before torch found the sizes wrong (here 64 KiB to 64 MiB). A
    checkpoint compressed by hand, at about its own size, still loads."""
    import zipfile

    torch.save({"state_dict": {"x": torch.zeros(10)}}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as plain, \
            zipfile.ZipFile(tmp_path / "bomb.pth", "w", zipfile.ZIP_DEFLATED) as bomb, \
            zipfile.ZipFile(tmp_path / "zipped.pth", "w", zipfile.ZIP_DEFLATED) as zipped:
        for info in plain.infolist():
            data = plain.read(info.filename)
            bomb.writestr(info.filename, bytes(64 * 2**20) if info.filename.endswith("data/0") else data)
            zipped.writestr(info.filename, data)
    with pytest.raises(UsageError, match=r"bomb.pth: a zip archive whose entries unpack to 64 MiB from 0.1 MiB, more "
                                         r"than 16 times its size \(torch.save compresses nothing\); refused"):
        import_indexnet_official(tmp_path / "bomb.pth")
    with pytest.raises(UsageError, match="does not look like an IndexNet"):  # read, then found not to be one
        import_indexnet_official(tmp_path / "zipped.pth")


def test_weights_file_without_recipe_is_refused(tmp_path):
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(UsageError, match="no recipe"):
        load_model(tmp_path / "bare.safetensors")


@pytest.mark.parametrize("text, reason", [("{not json", "is not JSON (JSONDecodeError)"),
                                          ("[" * 100000, "is not JSON (RecursionError)"),
                                          ("[1, 2]", "is not a JSON object"), ('"indexnet"', "is not a JSON object")])
def test_a_recipe_in_the_metadata_that_is_not_a_json_object_is_named(tmp_path, text, reason):
    """A weights file from someone else whose recipe metadata is not a JSON object: json's
    JSONDecodeError or an AttributeError traceback in every command that read it."""
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={"format": "matte-weights/1", "recipe": text})
    with pytest.raises(UsageError) as err:
        load_model(path)
    assert str(err.value) == f"{path}: the recipe in its metadata {reason}"
    done = run_main("recipes", path)
    assert done.returncode == 2 and done.stderr == f"matte: error: {path}: the recipe in its metadata {reason}\n"


def test_a_recipe_asking_for_a_model_far_larger_than_its_tensors_is_refused_before_allocating(tmp_path):
    """A weights file from someone else whose recipe says decoder_kernel_size 20001: building the
    model asked for 49 TB (a traceback here; the out-of-memory killer where it is only tens of GB)
    before its tensors were found not to fit."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    recipe = load_recipe("demo-indexnet")
    save_weights(build_model(recipe), recipe, tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    raw = json.loads(meta["recipe"])
    raw["model"]["decoder_kernel_size"] = 20001  # beyond any published model: the recipe itself is refused
    save_file(state, str(tmp_path / "huge.safetensors"), metadata={**meta, "recipe": json.dumps(raw)})
    with pytest.raises(UsageError, match=r"huge.safetensors: the recipe in its metadata is not valid: recipe "
                                         r"demo-indexnet: model: decoder_kernel_size must be at most 31, got 20001"):
        load_model(tmp_path / "huge.safetensors")
    raw["model"]["decoder_kernel_size"] = 31  # within the limits: the tensors decide, before allocating
    save_file(state, str(tmp_path / "huge.safetensors"), metadata={**meta, "recipe": json.dumps(raw)})
    with pytest.raises(UsageError, match=r"huge.safetensors: shape mismatch, the file's vs the model's: "
                                         r"decoder_layer0.dconv.0.weight "
                                         r"\(32, 64, 5, 5\) vs \(32, 64, 31, 31\)"):
        load_model(tmp_path / "huge.safetensors")
    import warnings

    with warnings.catch_warnings():  # the check on the meta device says nothing of its own (torch's "no-op" copy)
        warnings.simplefilter("error")
        load_model(tmp_path / "w.safetensors")


def test_detect_refuses_foreign_checkpoints():
    with pytest.raises(UsageError, match="does not look like"):
        detect_indexnet_variant({"conv1.weight": torch.zeros(1)})


def test_convert_checks_out_before_reading_the_checkpoint(tmp_path):
    """An --out that is a folder, or under a file, failed with a traceback after the conversion."""
    (tmp_path / "w.safetensors").mkdir()
    (tmp_path / "file").write_text("")
    for out, said in (("w.safetensors", "is a folder, not a file"), ("file/w.safetensors", "is a file, not a folder")):
        res = run_main("convert", tmp_path / "none.pth", "--from", "indexnet-official", "--out", tmp_path / out)
        assert res.returncode == 2 and f"matte: error: --out {tmp_path / out}: " in res.stderr, res.stderr  # as given
        assert said in res.stderr and res.stderr.strip().count("\n") == 0


def test_convert_refuses_an_out_that_is_its_source(tmp_path):
    """A release republished as .safetensors, converted with --out naming it: the release was
    replaced by the converted file."""
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, tmp_path / "release.safetensors")
    before = (tmp_path / "release.safetensors").read_bytes()
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "release.safetensors")
    for out in ("release.safetensors", "link.safetensors"):
        res = run_main("convert", tmp_path / "release.safetensors", "--from", "indexnet-official", "--out", tmp_path / out)
        assert res.returncode == 2 and res.stderr == (f"matte: error: --out {tmp_path / out} is SRC: converting would "
                                                      "replace the release with the converted file; give another --out\n")
    assert (tmp_path / "release.safetensors").read_bytes() == before


def test_convert_onto_another_file_where_the_file_system_gives_no_inode_numbers(tmp_path, monkeypatch, capsys):
    """Where st_ino is 0 for every file (Windows above all), Path.samefile took --out for SRC
    whatever it named: converting onto an earlier conversion was refused as 'is SRC'."""
    import os
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    from mattecli.cli import main

    real = Path.stat

    def no_inodes(self, *args, **kwargs):
        st = real(self, *args, **kwargs)
        return os.stat_result((st.st_mode, 0, st.st_dev, *tuple(st)[3:]))

    save_file({"a": torch.zeros(1)}, tmp_path / "release.safetensors")
    (tmp_path / "earlier.safetensors").write_bytes(b"an earlier conversion")
    monkeypatch.setattr(Path, "stat", no_inodes)
    monkeypatch.setattr(sys, "argv", ["matte", "convert", str(tmp_path / "release.safetensors"), "--from",
                                      "indexnet-official", "--out", str(tmp_path / "earlier.safetensors")])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err
    assert "is SRC" not in err and "does not look like" in err, err  # it went on to read the checkpoint


def test_the_wrong_from_names_the_file_and_the_source_its_tensors_fit(tmp_path):
    """The usual slip, the right file with the wrong --from, said neither the file nor which --from."""
    from mattecli.weights import import_a2u_official, import_mmagic
    from tests.test_mmagic import mmagic_checkpoint

    official_checkpoint(tmp_path / "indexnet.pth")
    mmagic_checkpoint(tmp_path / "mmagic.pth")
    torch.save({"state_dict": build_model(load_recipe("demo-a2u")).state_dict()}, tmp_path / "a2u.pth")
    cases = [(import_a2u_official, "indexnet.pth", "indexnet-official"),
             (import_mmagic, "indexnet.pth", "indexnet-official"),
             (import_indexnet_official, "mmagic.pth", "mmagic"), (import_a2u_official, "mmagic.pth", "mmagic"),
             (import_indexnet_official, "a2u.pth", "a2u-official"), (import_mmagic, "a2u.pth", "a2u-official")]
    for importer, name, source in cases:
        with pytest.raises(UsageError, match=f"^{tmp_path / name}: .*; its tensors are those of --from {source}$"):
            importer(tmp_path / name)


def test_a_release_republished_as_safetensors_converts(tmp_path):
    """--weights refused a .safetensors without a recipe ('use matte convert') and convert refused
    it as 'a matte weights file': a dead end between two commands."""
    from safetensors.torch import save_file

    reference = official_checkpoint(tmp_path / "c.pth")
    save_file({f"module.{k}": v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "c.safetensors")
    model, recipe = import_indexnet_official(tmp_path / "c.safetensors")
    assert recipe.name == "indexnet-m2o-nl-ctx"
    x = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference(x))


def test_convert_takes_an_uppercase_suffix_as_every_command_does(tmp_path):
    """--out W.SAFETENSORS was refused ('weights files end in .safetensors'); infer and export take it."""
    official_checkpoint(tmp_path / "c.pth")
    res = run_main("convert", tmp_path / "c.pth", "--from", "indexnet-official", "--out", tmp_path / "W.SAFETENSORS")
    assert res.returncode == 0, res.stderr
    assert load_model(tmp_path / "W.SAFETENSORS")[1].name == "indexnet-m2o-nl-ctx"


def test_a_pytorch_checkpoint_given_as_weights_is_named_with_what_to_give(tmp_path):
    """A training run's checkpoints/*.pt as --weights: infer and bench said "unknown model file
    type", export "not a readable .safetensors file (Error while deserializing header: header too
    large)"; the authors' .pth.tar likewise."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "iter": 2}, run / "checkpoints" / "iter_00000002.pt")
    recipe = load_recipe("demo-tcp")
    save_weights(build_model(recipe), recipe, run / "last.safetensors")
    official = tmp_path / "indexnet_matting.pth.tar"
    torch.save({"state_dict": {}}, official)
    (tmp_path / "a.png").write_bytes(b"")
    for checkpoint, instead in ((run / "checkpoints" / "iter_00000002.pt", f"give {run / 'last.safetensors'} "),
                                (official, "give a run's last.safetensors or best.safetensors ")):
        for command in (["infer", "--images", tmp_path / "a.png", "--out", tmp_path / "out"],
                        ["bench", "--sizes", "32x32"], ["export", "--out", tmp_path / "m.onnx"]):
            res = run_main(command[0], "--weights", checkpoint, *command[1:])
            assert res.returncode == 2 and res.stderr == (
                f"matte: error: {checkpoint}: a PyTorch checkpoint, not a model file: {instead}(what `matte train` "
                "writes), or import the authors' checkpoint with `matte convert`\n"), (command, res.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
@pytest.mark.parametrize("what", ["weights", "checkpoint"])
def test_a_write_that_does_not_fit_is_an_oserror_naming_the_file(tmp_path, what):
    """A full disk while `matte train` wrote last.safetensors was a traceback ending in safetensors'
    SafetensorError, and while it wrote a checkpoint torch's "RuntimeError: [enforce fail at
    inline_container.cc:672] . unexpected pos ...": neither is the OSError that every command names
    in one line. A file-size limit (RLIMIT_FSIZE) stands in for the full disk: the write fails part
    way, as there, with EFBIG."""
    script = f"""
import errno, resource, sys
from pathlib import Path
from mattecli.models import build_model
from mattecli.recipes import load_recipe
from mattecli.train.checkpoint import save_checkpoint
from mattecli.weights import save_weights
out = Path(sys.argv[1])
recipe = load_recipe("demo-indexnet")
model = build_model(recipe)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))  # no file over 1 MiB
try:
    if "{what}" == "weights":
        save_weights(model, recipe, out / "w.safetensors")
    else:
        save_checkpoint(out, {{"model": model.state_dict()}}, 5)
except OSError as err:
    print(err.errno == errno.EFBIG, Path(err.filename).name, sorted(p.name for p in out.rglob("*")))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    name, left = ("w.safetensors", "[]") if what == "weights" else ("iter_00000005.pt", "['checkpoints']")
    assert res.stdout.strip() == f"True {name} {left}"  # named by its own name, no temporary left


def test_a_model_file_of_a_newer_format_is_refused_not_misread(tmp_path):
    """Every model file says `matte-weights/1` (`matte-onnx/1`, `matte-engine/1`), and nothing read
    it: a file of a later format would have been read as version 1."""
    from exporters.onnx import FORMAT as ONNX_FORMAT
    from mattecli.inference.engine import FORMAT as ENGINE_FORMAT
    from mattecli.recipes import FILE_FORMAT_VERSION, stored_recipe
    from mattecli.weights import FORMAT

    assert {f.rpartition("/")[2] for f in (FORMAT, ONNX_FORMAT, ENGINE_FORMAT)} == {FILE_FORMAT_VERSION}
    from safetensors.torch import save

    recipe = load_recipe("demo-tcp")
    state = {k: v.contiguous() for k, v in build_model(recipe).state_dict().items()}
    path = tmp_path / "new.safetensors"
    path.write_bytes(save(state, metadata={"format": "matte-weights/2", "recipe": recipe.to_json()}))
    res = run_main("infer", "--weights", path, "--images", tmp_path, "--out", tmp_path / "o")
    assert res.returncode == 2 and res.stderr.startswith(
        f"matte: error: {path}: written in matte-weights/2, a format this matte (") and res.stderr.endswith(
        ") does not read (it reads version 1); upgrade matte\n")
    assert stored_recipe(recipe.to_json(), path, FORMAT).name == "demo-tcp"
    assert stored_recipe(recipe.to_json(), path, None).name == "demo-tcp"  # files of matte's first days
    with pytest.raises(UsageError, match="written in matte-engine/3"):
        stored_recipe(recipe.to_json(), path, "matte-engine/3")


def test_a_plain_pickle_or_a_cut_short_legacy_file_is_named_so(tmp_path, recwarn):
    """pickle.dump of a state dict, not torch.save: torch.load said "Invalid magic number; corrupt
    file?", "Unsupported operand 149" after a two-line warning, or named matte's stand-in class
    ('Dropped_0' object has no attribute 'dtype'); a cut-short legacy file read as a refusal."""
    import pickle

    official_checkpoint(tmp_path / "zip.pth")
    state = torch.load(tmp_path / "zip.pth", weights_only=True)
    for protocol in (2, 4):
        (tmp_path / f"p{protocol}.pkl").write_bytes(pickle.dumps({"w": torch.zeros(2)}, protocol=protocol))
        with pytest.raises(UsageError) as err:
            import_indexnet_official(tmp_path / f"p{protocol}.pkl")
        assert str(err.value) == (f"{tmp_path / f'p{protocol}.pkl'}: a plain pickle, not a torch.save checkpoint "
                                  "(save the weights with torch.save(state_dict, FILE))")
    # torch.save without its zip archive reads as before; in pickle protocol 4, which torch's
    # weights-only reader cannot read, it said "Unsupported operand 149" after a two-line warning
    for protocol in (2, 4):
        torch.save(state, tmp_path / f"legacy{protocol}.pth", _use_new_zipfile_serialization=False,
                   pickle_protocol=protocol)
    assert import_indexnet_official(tmp_path / "legacy2.pth")[1].name == "indexnet-m2o-nl-ctx"
    with pytest.raises(UsageError) as err:
        import_indexnet_official(tmp_path / "legacy4.pth")
    assert str(err.value) == (f"{tmp_path / 'legacy4.pth'}: a legacy torch.save file in pickle protocol 4, which "
                              "torch.load(weights_only=True) cannot read; save it again with torch.save(state_dict, "
                              "FILE) and its default protocol")
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
    whole = (tmp_path / "legacy2.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(UsageError, match=r"cut.pth: cut short \(an interrupted download\?\), not a readable "
                                         r"checkpoint \(.*EOF"):
        import_indexnet_official(tmp_path / "cut.pth")
