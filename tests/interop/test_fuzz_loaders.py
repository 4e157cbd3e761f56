"""Property-based tests of the loaders over mutated valid files: ``fl.load`` of safetensors
model files and ``fastlstm.onnx.from_onnx`` of ONNX models either give a working model or
raise ValueError/TypeError naming the problem, within a memory bound set by the file size.
The longer local run of the same mutations is ``python -m fastlstm._fuzz --minutes N``."""
import random
import tracemalloc
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastlstm as fl
from fastlstm._fuzz import (_join, _mutate_config, _split, check_load, memory_bound, mutate,
                            mutate_onnx, onnx_seed_files, seed_files)

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


SEED_KINDS = ["lstm", "lstm_bidirectional", "lstm_peephole_clip", "lstm_reverse_float64",
              "lstm_no_bias", "sequential_classifier", "sequential_regressor_float64",
              "sequential_unbuilt", "sequential_checkpoint", "quantized_bfloat16",
              "quantized_int8"]


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return seed_files(tmp_path_factory.mktemp("seeds"))


def test_seed_files_cover_the_model_kinds_and_load(seeds, tmp_path):
    assert sorted(seeds) == sorted(SEED_KINDS)
    for name, data in seeds.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        assert check_load(path) == "loaded", name


def test_check_load_flags_what_it_must(tmp_path):
    """The oracle itself: a file that is refused is named in the error, a bad one raises."""
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"\x00" * 3)
    assert check_load(path) == "ValueError"
    fl.save(fl.LSTM(2, 3, seed=0), path)
    assert check_load(path) == "loaded"


@SETTINGS
@given(kind=st.sampled_from([kind for kind in SEED_KINDS if kind.startswith("lstm")]),
       rng=st.randoms(use_true_random=False))
def test_mutated_lstm_files_load_or_raise_value_or_type_error(seeds, tmp_path, kind, rng):
    assert_loads_or_refuses(mutate(seeds[kind], rng), tmp_path / "mutated.safetensors")


@SETTINGS
@given(kind=st.sampled_from([kind for kind in SEED_KINDS if kind.startswith("sequential")]),
       rng=st.randoms(use_true_random=False))
def test_mutated_sequential_files_load_or_raise_value_or_type_error(seeds, tmp_path, kind, rng):
    assert_loads_or_refuses(mutate(seeds[kind], rng), tmp_path / "mutated.safetensors")


@SETTINGS
@given(kind=st.sampled_from(sorted(SEED_KINDS)), rng=st.randoms(use_true_random=False))
def test_files_with_edited_configs_load_or_raise_value_or_type_error(seeds, tmp_path, kind, rng):
    data = _split(seeds[kind])
    assert data is not None
    header, payload = data
    _mutate_config(header, rng)
    assert_loads_or_refuses(_join(header, payload), tmp_path / "edited.safetensors")


def assert_loads_or_refuses(mutated, path):
    path.write_bytes(mutated)
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN weights are a correct load
            outcome = check_load(path)  # raises anything but ValueError/TypeError
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome in ("loaded", "ValueError", "TypeError")
    assert peak <= memory_bound(len(mutated)), f"{peak} bytes traced for {len(mutated)}"


def test_mutations_reach_every_stage(seeds, tmp_path):
    """The mutations are not all refused by the first check: some load, and the refusals
    come from the header, the config and the tensors alike."""
    rng = random.Random(0)
    messages, loaded = [], 0
    path = tmp_path / "m.safetensors"
    for i in range(600):
        path.write_bytes(mutate(seeds[sorted(seeds)[i % len(seeds)]], rng))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fl.load(path)
            loaded += 1
        except (ValueError, TypeError) as exc:
            messages.append(str(exc))
    print(f"{loaded} of 600 loaded")
    assert loaded >= 10
    for stage in ("truncated", "invalid safetensors header", "metadata 'config' field",
                  "tensors do not match", "dtype"):
        assert any(stage in m for m in messages), stage


# ---------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    from conftest import require

    require("onnx")
    return onnx_seed_files(tmp_path_factory.mktemp("onnx"))


@SETTINGS
@given(kind=st.sampled_from(["onnx_lstm_all_inputs", "onnx_bidirectional",
                             "onnx_peephole_clip_float64"]),
       rng=st.randoms(use_true_random=False))
def test_mutated_onnx_models_convert_or_raise_value_or_type_error(onnx_models, tmp_path,
                                                                  kind, rng):
    assert_loads_or_refuses(mutate_onnx(onnx_models[kind], rng), tmp_path / "mutated.onnx")
