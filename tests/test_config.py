import math
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from lmrnn.config import RunConfig
from lmrnn.config_parser import FORMAT_VERSION, config_to_yaml, flatten, load_config
from lmrnn.errors import UserError
from tests.conftest import REPO


def test_defaults_build_and_round_trip_through_yaml():
    cfg = load_config()
    assert cfg == RunConfig()
    assert load_config(base=yaml.safe_load(config_to_yaml(cfg))) == cfg


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_preset_loads_and_opens_with_its_command(preset):
    load_config(preset)
    assert "lmrnn train" in preset.read_text().split("\n\n")[0].split("tokenizer:")[0]


def test_a_runs_own_config_yaml_is_a_preset(tmp_path):
    """`--config RUN/config.yaml` trains again from what that run used, migrated from its format."""
    cfg = load_config(None, ["model.cell=gru", "train.lr=0.003", "model.init_range=1"])
    saved = tmp_path / "config.yaml"
    saved.write_text(f"format: {FORMAT_VERSION}\n" + config_to_yaml(cfg))
    assert load_config(saved, ["train.batch_size=7"]) == load_config(None, ["model.cell=gru", "train.lr=0.003",
                                                                            "model.init_range=1", "train.batch_size=7"])
    saved.write_text(f"format: 6\n" + config_to_yaml(cfg).replace("  eval_burn_in: 256\n", "")
                     .replace("  init_range: 1.0\n", "").replace("  recurrent_init: uniform\n", ""))
    assert load_config(saved).model.init_range == 0.1  # format 6's initialisation, as a resumed run keeps it
    saved.write_text(f"format: {FORMAT_VERSION + 1}\n" + config_to_yaml(cfg))
    with pytest.raises(UserError, match="written by a newer lmrnn"):
        load_config(saved)


def test_yaml_scientific_notation_is_coerced_to_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n  clip_grad_norm: 5\n")  # PyYAML reads 1e-3 as a string
    cfg = load_config(path)
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.clip_grad_norm == 5.0


def test_overrides_set_nested_keys_and_coerce_types():
    cfg = load_config(overrides=["model.hidden_size=128", "train.max_steps=1e4", "model.tie_weights=no",
                                 "seed=7", "device=cpu"])
    assert cfg.model.hidden_size == 128 and cfg.train.max_steps == 10_000
    assert cfg.model.tie_weights is False and cfg.seed == 7 and cfg.device == "cpu"


def test_override_splits_on_first_equals_only_and_keeps_strings_verbatim():
    cfg = load_config(overrides=["data.source=dir/a=b: c.txt"])
    assert cfg.data.source == "dir/a=b: c.txt"


def test_precedence_file_then_overrides_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  cell: gru\n  hidden_size: 64\n")
    cfg = load_config(path, ["model.cell=rnn", "model.hidden_size=32"], {"model.cell": "lstm"})
    assert cfg.model.cell == "lstm" and cfg.model.hidden_size == 32


@pytest.mark.parametrize("override, message", [
    ("model.hiden_size=3", "did you mean model.hidden_size"),
    ("modle.cell=gru", "did you mean model"),
    ("train.batch_size=abc", "train.batch_size must be an integer"),
    ("train.batch_size=2.5", "train.batch_size must be an integer"),
    ("model.cell=transformer", "model.cell must be one of rnn, rnn_relu, lstm, gru, ffnn, ngram"),
    ("model.tie_weights=maybe", "model.tie_weights must be true or false"),
    ("model=3", "'model' is a section"),
    ("train.bptt", "must look like key.path=value"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
    ("train.lr=-1", "train.lr must be > 0"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=__import__("re").escape(message)):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(UserError, match="unknown config key 'train.batchsize'; did you mean train.batch_size"):
        load_config(path)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("model: [1\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_a_run_needs_a_stop_limit():
    with pytest.raises(UserError, match="at least one stop limit"):
        load_config(overrides=["train.epochs=0", "train.max_steps=0", "train.max_minutes=0"])


def test_flatten_uses_the_stable_dotted_names():
    keys = set(flatten(RunConfig()))
    stable = {"model.cell", "model.embedding_dim", "model.hidden_size", "model.num_layers", "model.dropout",
              "model.tie_weights", "tokenizer.model_type", "tokenizer.vocab_size", "train.batch_size", "train.bptt",
              "train.lr", "train.clip_grad_norm", "train.max_steps", "train.max_minutes", "train.epochs",
              "train.eval_every", "train.save_every", "seed", "device"}
    assert stable <= keys


def test_config_and_cli_help_do_not_import_torch():
    code = "import sys, lmrnn.config, lmrnn.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


KEYS = sorted(flatten(RunConfig()))


@given(key=st.sampled_from(KEYS), text=st.text(max_size=24))
@settings(max_examples=400, deadline=None)
def test_any_override_gives_a_typed_config_or_one_user_error(key, text):
    """Whatever follows `key=`, the result is a config whose value has the key's type (finite
    numbers only), or a UserError; never another exception."""
    try:
        cfg = load_config(overrides=[f"{key}={text}"])
    except UserError:
        return
    value, default = flatten(cfg)[key], flatten(RunConfig())[key]
    assert type(value) is type(default)
    if isinstance(value, float):
        assert math.isfinite(value)


@given(n=st.integers(1, 10**12), x=st.floats(min_value=1e-30, max_value=1e30))
@settings(deadline=None)
def test_numeric_overrides_round_trip(n, x):
    cfg = load_config(overrides=[f"train.bptt={n}", f"train.lr={x!r}", f"seed={-n}"])
    assert (cfg.train.bptt, cfg.train.lr, cfg.seed) == (n, x, -n)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", ".nan"])
def test_non_finite_numbers_are_refused(text):
    with pytest.raises(UserError, match="train.lr must be a finite number|train.lr must be a number"):
        load_config(overrides=[f"train.lr={text}"])


def test_byte_fallback_reads_yaml_booleans_and_resolves_auto_per_model_type(tmp_path):
    from lmrnn.config import resolve_defaults

    (tmp_path / "old.yaml").write_text("tokenizer:\n  byte_fallback: true\n  vocab_size: 1000\n")  # as format 7 saved it
    assert load_config(tmp_path / "old.yaml").tokenizer.byte_fallback == "true"
    assert load_config(overrides=["tokenizer.byte_fallback=false"]).tokenizer.byte_fallback == "false"
    with pytest.raises(UserError, match="byte_fallback must be one of auto, true, false"):
        load_config(overrides=["tokenizer.byte_fallback=maybe"])
    resolved = {kind: resolve_defaults(load_config(overrides=[f"tokenizer.model_type={kind}"])).tokenizer
                for kind in ("bpe", "unigram", "char", "word")}
    assert {kind: (t.vocab_size, t.byte_fallback) for kind, t in resolved.items()} == {
        "bpe": (1000, "true"), "unigram": (1000, "true"), "char": (0, "false"), "word": (0, "false")}
