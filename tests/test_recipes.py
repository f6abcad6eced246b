import re

import pytest

from mattecli.errors import UsageError
from mattecli.recipes import RECIPES_DIR, list_recipe_names, load_recipe


def test_every_recipe_loads_and_round_trips():
    from mattecli.recipes import recipe_from_dict

    names = list_recipe_names()
    assert "indexnet-m2o-nl-ctx" in names and len(names) >= 16
    for name in names:
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description
        assert recipe_from_dict(recipe.to_dict(), name) == recipe


def test_base_is_resolved_and_overridden():
    child = load_recipe("indexnet-o2o-lin")
    base = load_recipe("indexnet-m2o-nl-ctx")
    assert (child.model.index, child.model.nonlinear, child.model.context) == ("o2o", False, False)
    assert child.train == base.train and child.infer == base.infer


def test_set_overrides_any_value():
    r = load_recipe("indexnet-m2o-nl-ctx", ["train.lr=1e-4", "train.milestones=[10, 20]", "model.context=false"])
    assert r.train.lr == 1e-4 and r.train.milestones == (10, 20) and r.model.context is False


@pytest.mark.parametrize("override,needle", [
    ("model.colour=3", "unknown key 'colour'"),
    ("train.lrr=1", "unknown key 'lrr'"),
    ("flavour=1", "unknown key 'flavour'"),
    ("train.iters=abc", "expected an integer"),
    ("model.index=foo", "index must be one of"),
    ("model.width_mult=1.4", "width_mult != 1"),
    # each of these trained into a traceback (ZeroDivisionError, KeyError, an OpenCV assertion, a
    # conv channel mismatch) or, stride 0, wrote weights that no command could run
    ("infer.stride=0", "stride must be at least 1, got 0"),
    ("infer.trimap=nope", "trimap must be one of scalar, onehot"),
    ("infer.std=[0.2,0,0.2]", "std must be positive"),
    ("data.crop_size=-5", "crop_size must be at least 1"),
    ("train.batch_size=0", "batch_size must be at least 1"),
    ("train.log_every=0", "log_every must be at least 1"),
    ("train.checkpoint_every=0", "checkpoint_every must be at least 1"),
    ("train.loss=nope", "loss must be one of dim, "),
    ("train.schedule=nope", "schedule must be one of multistep, cosine"),
    ("train.lr=-1", "lr must be at least 0"),
    ("model.decoder_kernel_size=4", "decoder_kernel_size must be odd and positive, got 4"),  # 64x64 -> 63x63
    ("train.milestones=[10,-1]", r"milestones must be at least 0, got \(10, -1\)"),
    ("train.warmup_iters=-5", "warmup_iters must be at least 0"),
    ("data.val_every=-1", "val_every must be at least 0"),
    ("train.betas=[1.5,0.9]", r"betas must be two values under 1, got \(1.5, 0.9\)"),  # Adam's traceback
    ("train.betas=[0.9,1.0]", r"betas must be two values under 1, got \(0.9, 1.0\)"),  # under 1: 1 is not
    ("data.crop_size=true", "crop_size: expected an integer, got True"),  # YAML's true is not 1
    ("train.lr=true", "lr: expected a number, got True"),
    ("infer.mean=[0.5,0.5]", r"infer.mean: expected 3 values, got 2"),  # RGB: three
])
def test_bad_values_fail_naming_the_key(override, needle):
    with pytest.raises(UsageError, match=needle):
        load_recipe("indexnet-m2o-nl-ctx", [override])


def test_a_model_file_of_any_format_version_but_this_one_is_refused(tmp_path):
    """stored_recipe reads FILE_FORMAT_VERSION ("1") only: an older or unknown version ("0") is not read
    as version 1 either."""
    from mattecli.recipes import stored_recipe

    recipe = load_recipe("demo-tcp")
    with pytest.raises(UsageError, match=r"written in matte-weights/0, a format this matte .* reads version 1"):
        stored_recipe(recipe.to_json(), tmp_path / "w.safetensors", "matte-weights/0")


@pytest.mark.parametrize("recipe, override, needle", [
    ("tcp", "model.skip_convs=1000000000", "skip_convs must be at most 32, got 1000000000"),
    ("tcp", "model.tcp_width=100000", "tcp_width must be at most 1024"),
    ("tcp", "model.width=50", "width must be at most 4"),
    ("a2u-dynamic-cs", "model.k_up=101", "k_up must be at most 15"),
    ("a2u-dynamic-cs", "model.k_en=64", "k_en must be at most 31"),
    ("indexnet-unet-bilinear", "model.width_mult=40", "width_mult must be at most 4"),
    ("indexnet-m2o-nl-ctx", "model.decoder_kernel_size=1001", "decoder_kernel_size must be at most 31"),
])
def test_sizes_far_beyond_any_published_model_are_refused(recipe, override, needle):
    """`--set model.skip_convs=1000000000` built layers until memory ran out (a hang, no message)."""
    with pytest.raises(UsageError, match=needle):
        load_recipe(recipe, [override])


def test_a_parameter_free_indexnet_needs_a_positive_width():
    with pytest.raises(UsageError, match="width_mult must be positive, got -1.0"):
        load_recipe("indexnet-unet-bilinear", ["model.width_mult=-1"])


def test_the_loss_names_recipes_accept_are_the_losses_training_has():
    from mattecli.recipes import LOSS_NAMES
    from mattecli.train.losses import LOSSES

    assert LOSS_NAMES == tuple(LOSSES)


def test_only_one_base_level(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {RECIPES_DIR / 'indexnet-o2o-lin.yaml'}\n")
    with pytest.raises(UsageError, match="only one level"):
        load_recipe(tmp_path / "a.yaml")
    # `base: demo-tcp`, the natural start, said only that; it now says how to build on one
    (tmp_path / "b.yaml").write_text("base: demo-tcp\n")
    with pytest.raises(UsageError, match=re.escape("(`matte recipes demo-tcp > base.yaml` writes it resolved, a "
                                                   "base that has none)")):
        load_recipe(tmp_path / "b.yaml")


def test_unknown_recipe_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_a_folder_or_a_checkpoint_given_as_a_recipe_is_named_so(tmp_path):
    """Both said "unknown recipe" or "not a recipe file (recipes end in .yaml ...)"."""
    (tmp_path / "run").mkdir()
    with pytest.raises(UsageError, match=r"^.*run: a folder, not a recipe$"):
        load_recipe(tmp_path / "run")
    (tmp_path / "run" / "recipe.json").write_text("{}")
    with pytest.raises(UsageError, match=r"run: a folder, not a recipe; the run's recipe is .*run/recipe.json$"):
        load_recipe(tmp_path / "run")
    (tmp_path / "idx.pth.tar").write_bytes(b"PK")
    with pytest.raises(UsageError, match=r"idx.pth.tar: a PyTorch checkpoint, not a recipe \(`matte convert`"):
        load_recipe(tmp_path / "idx.pth.tar")


def test_the_network_input_has_rgb_and_the_trimaps_channels():
    from mattecli.recipes import InferConfig

    assert InferConfig(trimap="scalar").input_channels == 4 and InferConfig(trimap="onehot").input_channels == 6


@pytest.mark.parametrize("overrides,needle", [
    (["train.lr.x=1"], "--set train.lr.x=1: train.lr is a value"),
    (["train.iters.x=2"], "--set train.iters.x=2: train.iters is a value"),
    (["train=1", "train.batch_size=2"], "--set train.batch_size=2: train is a value"),
])
def test_set_below_a_value_is_a_usage_error(overrides, needle):
    """`--set train=1 --batch-size 2` was TypeError: 'int' object is not iterable; `train.iters.x=2` a ValueError."""
    with pytest.raises(UsageError, match=re.escape(needle) + ", not a section"):
        load_recipe("demo-indexnet", overrides)


@pytest.mark.parametrize("text,needle", [
    ("base: [tcp]\n", r"base: expected a recipe name or path, got \['tcp'\]"),
    ("model: 5\n", "model: expected a mapping, got 5"),
    ("name: 12\nmodel: {family: tcp}\n", "name: expected a string, got 12"),
    ("model: {family: tcp}\ntrain:\n  lr: [1\n", r"not valid YAML at line 4, column 1 \(expected ',' or ']'"),
    # PyYAML kept the last of the two without a word
    ("model: {family: tcp}\ntrain:\n  lr: 0.01\n  iters: 5\n  lr: 0.02\n",
     r"not valid YAML at line 5, column 3 \(key 'lr' given twice \(first at line 3\)\)"),
])
def test_a_malformed_recipe_file_fails_in_one_line_naming_it(tmp_path, text, needle):
    """These were TypeErrors, or a YAML error over five lines quoting the file."""
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=needle) as err:
        load_recipe(path)
    assert "\n" not in str(err.value)


def test_a_recipe_in_another_encoding_is_read_or_named(tmp_path):
    """A Latin-1 file raised a UnicodeDecodeError traceback; UTF-16 (with its mark) is read."""
    (tmp_path / "latin.yaml").write_bytes("model: {family: tcp}\ndescription: \u00e9t\u00e9\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin.yaml: not valid YAML \(unacceptable character") as err:
        load_recipe(tmp_path / "latin.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "u16.yaml").write_text("model: {family: tcp}\ndescription: \u00e9t\u00e9\n", encoding="utf-16")
    assert load_recipe(tmp_path / "u16.yaml").description == "\u00e9t\u00e9"


def test_a_base_file_is_found_beside_the_recipe_wherever_matte_runs(tmp_path, monkeypatch):
    """`base: mine.yaml` was looked up in the current folder, so the recipe only loaded from its own."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "mine.yaml").write_text("model: {family: tcp, width: 0.25}\ntrain:\n  lr: 0.5\n")
    (tmp_path / "exp" / "child.yaml").write_text("base: mine.yaml\ntrain:\n  iters: 7\n")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("exp/child.yaml")
    assert (recipe.model.width, recipe.train.lr, recipe.train.iters) == (0.25, 0.5, 7)


def test_an_empty_section_in_a_recipe_with_a_base_keeps_the_base_values(tmp_path):
    """`train:` whose lines are all commented out is YAML null: it replaced the base's whole section,
    so the recipe trained with the dataclass defaults (1000 iterations, no milestones, AMP on)."""
    path = tmp_path / "mine.yaml"
    path.write_text("base: indexnet-m2o-nl-ctx\nmodel:\ntrain:\n#  lr: 0.02\ndata:\ninfer:\n")
    mine, base = load_recipe(path), load_recipe("indexnet-m2o-nl-ctx")
    assert (mine.model, mine.data, mine.train, mine.infer) == (base.model, base.data, base.train, base.infer)


@pytest.mark.parametrize("name,stride", [("demo-indexnet", 16), ("demo-a2u", 24), ("demo-tcp", 48)])
def test_an_infer_stride_the_model_cannot_take_is_refused_when_the_model_is_built(name, stride):
    """--set infer.stride=16 on an IndexNet (stride 32) trained into the model's ValueError traceback
    at the first 80 px crop; infer, eval and bench failed on inputs aligned to 16 but not to 32."""
    from mattecli.models import build_model

    with pytest.raises(UsageError, match=f"recipe {name}: infer.stride {stride} is not a multiple of the "):
        build_model(load_recipe(name, [f"infer.stride={stride}"]))
    build_model(load_recipe(name, ["infer.stride=64"]))  # a coarser alignment is every model's multiple


@pytest.mark.parametrize("name,trimap", [("demo-indexnet", "onehot"), ("demo-a2u", "onehot"), ("demo-tcp", "scalar")])
def test_a_trimap_encoding_the_model_cannot_take_is_refused_when_the_model_is_built(name, trimap):
    """--set infer.trimap=onehot on an IndexNet trained into a conv's channel-mismatch traceback
    ('expected input[2, 6, 64, 64] to have 4 channels')."""
    from mattecli.models import build_model

    with pytest.raises(UsageError, match=f"recipe {name}: infer.trimap {trimap} makes [46] input channels; the "):
        build_model(load_recipe(name, [f"infer.trimap={trimap}"]))


def test_a_recipe_is_named_after_itself_not_after_its_base(tmp_path):
    """A base printed by `matte recipes demo-indexnet > base.yaml` carries `name: demo-indexnet`, and
    every recipe built on it took that name: exp1.yaml and exp2.yaml both trained into
    runs/demo-indexnet and wrote weights saying demo-indexnet."""
    (tmp_path / "base.yaml").write_text("name: demo-indexnet\nmodel: {family: tcp, width: 0.25}\n")
    (tmp_path / "exp1.yaml").write_text("base: base.yaml\ntrain:\n  lr: 0.02\n")
    (tmp_path / "exp2.yaml").write_text("base: base.yaml\nname: mine\n")
    assert (load_recipe(tmp_path / "exp1.yaml").name, load_recipe(tmp_path / "exp2.yaml").name) == ("exp1", "mine")


def test_a_merge_key_may_be_overridden(tmp_path):
    """`<<: *anchor` then a key of the anchor's: YAML's override, not a key given twice."""
    path = tmp_path / "mine.yaml"
    path.write_text("model: {family: tcp}\ntrain: &t\n  lr: 0.01\n  iters: 5\ndata: {crop_size: 64}\n"
                    "infer:\n  <<: {stride: 32, align: pad}\n  align: resize\n")
    recipe = load_recipe(path)
    assert (recipe.infer.align, recipe.infer.stride, recipe.train.lr) == ("resize", 32, 0.01)


@pytest.mark.parametrize("base,mine,says", [
    # a key of the base was reported against the recipe using it ("recipe mine: train: unknown key 'itres'")
    ("train:\n  itres: 300\n", "train:\n  lr: 1.0e-3\n", "{base}: train: unknown key 'itres' (known: amp, "),
    ("train:\n  iters: abc\n", "", "{base}: train.iters: expected an integer, got 'abc'"),
    ("data:\n  crop_size: -5\n", "", "{base}: data: crop_size must be at least 1, got -5"),
    ("train:\n  iters: abc\n", "train:\n  iters: 7\n", None),  # the recipe's value is the one read
    ("train:\n  lr: 0.5\n", "train:\n  lrr: 1\n", "{mine}: train: unknown key 'lrr' (known: amp, "),
    ("", "model:\n  width: x\n", "{mine}: model.width: expected a number, got 'x'"),
    ("", "flavour: 1\n", "{mine}: unknown key 'flavour' (known: data, description, infer, model, name, train)"),
], ids=["base-unknown", "base-type", "base-value", "base-overridden", "recipe-unknown", "recipe-type", "recipe-top"])
def test_an_error_names_the_file_that_holds_the_key(tmp_path, monkeypatch, base, mine, says):
    """Keys and values of a recipe and of its base were all named as the recipe's: `recipe mine`,
    the name, naming neither the file that holds the key nor its path."""
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "base.yaml").write_text("model: {family: tcp, width: 0.25}\n" + base)
    (tmp_path / "exp" / "mine.yaml").write_text("base: base.yaml\n" + mine)
    monkeypatch.chdir(tmp_path)
    if says is None:
        assert load_recipe("exp/mine.yaml").train.iters == 7
        return
    with pytest.raises(UsageError) as err:
        load_recipe("exp/mine.yaml")
    assert str(err.value).startswith(says.format(base="exp/base.yaml", mine="exp/mine.yaml"))


def test_a_key_set_on_the_command_line_or_of_a_shipped_recipe_is_named_by_the_recipe(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: tcp\ntrain:\n  lr: 0.5\n")
    with pytest.raises(UsageError, match=r"^recipe mine: train: unknown key 'lrr' "):
        load_recipe(tmp_path / "mine.yaml", ["train.lrr=1"])
    with pytest.raises(UsageError, match=r"^recipe mine: train.lr: expected a number, got 'x'$"):
        load_recipe(tmp_path / "mine.yaml", ["train.lr=x"])  # the file's value, replaced
    with pytest.raises(UsageError, match=r"^recipe tcp: model: unknown key 'ffu' "):  # tcp.yaml holds it
        load_recipe(tmp_path / "mine.yaml", ["model.family=a2u"])
    with pytest.raises(UsageError, match=r"^recipe indexnet-o2o-lin: train: unknown key 'lrr' "):
        load_recipe("indexnet-o2o-lin", ["train.lrr=1"])


def test_matte_recipes_names_the_base_file_in_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "base.yaml").write_text("model: {family: tcp}\ntrain:\n  itres: 300\n")
    (tmp_path / "mine.yaml").write_text("base: base.yaml\ntrain:\n  lr: 1.0e-3\n")
    res = subprocess.run([sys.executable, "-m", "mattecli", "recipes", "mine.yaml"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.startswith("matte: error: base.yaml: train: unknown key 'itres' (known: amp, batch_size, ")
    assert len(res.stderr.splitlines()) == 1
