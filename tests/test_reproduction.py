"""Reproduction of the released BinaryFaceNet: weights, embeddings, MACs, LCE audit and the deployable init."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from blocks.build import build_model
from blocks.spec import DeploymentWarning, Spec, load_spec, parse_spec
from blocks.stats import model_stats
from blocks.weights import (
    THESIS_SPEC,
    WeightsError,
    build_released_twin,
    init_from_released,
    load_released_model,
    load_released_weights,
    main,
    weighted_layers,
)

ROOT = Path(__file__).resolve().parents[1]
DEPLOYABLE_SPEC = ROOT / "blocks" / "specs" / "binaryfacenet.yaml"
RELEASED_H5 = Path("reference") / "binaryfacenet_ms1m_agedb30_0.751.h5"
LFW_IMAGES = [
    "lfw-deepfunneled/Abdullah_Gul/Abdullah_Gul_0013.jpg",
    "lfw-deepfunneled/Abdullah_Gul/Abdullah_Gul_0014.jpg",
    "lfw-deepfunneled/Dave_Campo/Dave_Campo_0001.jpg",
    "lfw-deepfunneled/Denzel_Washington/Denzel_Washington_0003.jpg",
]

# Per-layer MACs of the released model as larq's summary counts them: (binary, float).
THESIS_LAYER_MACS = {
    "head_expand_conv": (0, 2_408_448),
    "head_reduce0_conv": (74_649_600, 0),
    "head_reduce1_conv": (2_985_984, 0),
    "head_reduce2_conv": (51_200, 0),
    "head_reduce3_conv": (4_096, 0),
    "head_se_reduce": (0, 256),
    "head_se_expand": (0, 256),
    "head_entry_conv": (28_901_376, 0),
    "gfe_conv1": (12_845_056, 0),
    "gfe_mix1": (200_704, 0),
    "gfe_conv2": (12_845_056, 0),
    "gfe_mix2": (200_704, 0),
    "lfe0_entry_conv": (28_901_376, 0),
    "lfe0_mix1": (3_261_440, 0),
    "lfe0_conv1_conv": (3_211_264, 0),
    "lfe0_conv2_conv": (3_211_264, 0),
    "lfe0_mix2": (3_261_440, 0),
    "lfe1_entry_conv": (7_225_344, 0),
    "lfe1_mix1": (815_360, 0),
    "lfe1_conv1_conv": (802_816, 0),
    "lfe1_conv2_conv": (802_816, 0),
    "lfe1_mix2": (815_360, 0),
    "embedding_conv1_conv": (0, 1_179_648),
    "embedding_conv2_conv": (0, 262_144),
    "output_dense": (0, 16_384),
}


def load_quietly(path: Path, params: dict[str, Any] | None = None) -> Spec:
    """Load a spec, with ``params`` set, without its deployment warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        spec = load_spec(path)
        return spec.with_params(params) if params else spec


def sign_thesis_spec() -> Spec:
    """Return the thesis spec with the default sign quantizers in place of DoReFa."""
    data = load_quietly(THESIS_SPEC).to_dict()
    for block in data["blocks"]:
        block.pop("input_quantizer", None)
        block.pop("kernel_quantizer", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        return parse_spec(yaml.safe_dump(data, sort_keys=False))


def randomize_weights(model: Any, seed: int = 0) -> None:
    """Draw every weight at random, so that no BatchNorm or PReLU is an identity."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "moving_variance" in weight.name:
            values = rng.uniform(0.5, 1.5, weight.shape)
        elif "alpha" in weight.name:
            values = rng.choice([-1.0, 1.0], weight.shape) * rng.uniform(0.05, 0.5, weight.shape)
        else:
            values = rng.normal(0.0, 0.5, weight.shape)
        weight.assign(values.astype(np.float32))


@pytest.fixture(scope="module")
def released_path(shared_dir: Path) -> Path:
    path = shared_dir / RELEASED_H5
    if not path.is_file():
        pytest.skip(f"released BinaryFaceNet weights not found at {path}")
    return path


@pytest.fixture(scope="module")
def released(released_path: Path) -> Any:
    return load_released_model(released_path)


@pytest.fixture(scope="module")
def lfw_faces(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Four LFW photos aligned with MTCNN to 112x112, normalised as the model expects."""
    import cv2

    from search.align import AlignCache, align_faces

    paths = [shared_dir / "data" / "lfw" / name for name in LFW_IMAGES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        pytest.skip(f"LFW images not found: {', '.join(missing)}")
    photos = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in paths]
    cache = AlignCache(tmp_path_factory.mktemp("aligned"))
    crops, stats = align_faces(photos, align="mtcnn", cache=cache, progress=False)
    assert stats.n_aligned == len(photos), "MTCNN found no face in an LFW photo"
    return (crops.astype(np.float32) - 127.5) / 128.0


# ---------------------------------------------------------------------------------------
# The thesis spec rebuilds the released model exactly.


def test_released_embeddings_match(released: Any, lfw_faces: np.ndarray) -> None:
    twin = build_released_twin(released)

    expected = released(lfw_faces, training=False).numpy()
    actual = twin(lfw_faces, training=False).numpy()

    assert actual.shape == (len(lfw_faces), 128)
    assert np.max(np.abs(actual - expected)) <= 1e-5


def test_released_weights_pair_every_layer(released: Any) -> None:
    model = build_model(load_quietly(THESIS_SPEC))

    pairs = load_released_weights(model, released)

    assert len(pairs) == 64
    assert pairs[0] == ("head_expand_conv", "conv2d")
    assert pairs[3] == ("head_reduce0_conv", "quant_conv2d")
    assert pairs[-1] == ("output_bn2", "pre_embedding")


def test_weights_cli_writes_loadable_file(released_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "thesis.weights.h5"

    status = main([str(THESIS_SPEC), "--released-weights", str(released_path), "--output", str(output)])

    assert status == 0
    assert "loaded the released weights into 64 layers" in capsys.readouterr().out
    model = build_model(load_quietly(THESIS_SPEC))
    model.load_weights(str(output))
    twin = build_released_twin(released_path)
    for loaded, expected in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_array_equal(loaded, expected)


def test_missing_released_file_raises(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"released model not found: .*missing\.h5 \(pass the path of the \.h5 file\)"):
        load_released_model(tmp_path / "missing.h5")


# ---------------------------------------------------------------------------------------
# Structure checks: a model that is not the thesis architecture is rejected by name.


def test_mismatch_names_first_pair() -> None:
    source = build_model(load_quietly(THESIS_SPEC))
    target = build_model(load_quietly(DEPLOYABLE_SPEC))

    expected = (
        r"weighted layer 0 does not match: model layer 'head_expand_conv' \(Conv2D, weights 1x1x3x128\) "
        r"vs released layer 'head_expand_conv' \(Conv2D, weights 1x1x3x64\): weight shapes"
    )
    with pytest.raises(WeightsError, match=expected):
        load_released_weights(target, source)


def test_mismatch_in_settings_raises() -> None:
    source = build_model(load_quietly(THESIS_SPEC))
    spec = load_quietly(THESIS_SPEC, {"lfe.strides": 1})
    target = build_model(spec)

    with pytest.raises(WeightsError, match=r"weighted layer 29 does not match: .*'lfe0_entry_conv'.*strides \(1, 1\) and \(2, 2\) differ"):
        load_released_weights(target, source)


def test_layer_count_mismatch_raises() -> None:
    source = build_model(load_quietly(THESIS_SPEC))
    data = load_quietly(THESIS_SPEC).to_dict()
    data["blocks"] = data["blocks"][:-1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeploymentWarning)
        target = build_model(parse_spec(yaml.safe_dump(data, sort_keys=False)))

    with pytest.raises(WeightsError, match=r"the model has 61 weighted layers but the released model has 64; first unpaired layer: 'output_bn1'"):
        load_released_weights(target, source)


# ---------------------------------------------------------------------------------------
# MACs per layer and what LCE makes of the thesis model.


def test_thesis_macs_match_design_table() -> None:
    stats = model_stats(build_model(load_quietly(THESIS_SPEC)))
    by_name = {layer.name: layer for layer in stats.layers}

    for name, (binary, floating) in THESIS_LAYER_MACS.items():
        assert (by_name[name].binary_macs, by_name[name].float_macs) == (binary, floating), name
    assert stats.binary_macs == 184_992_256
    assert stats.float_macs == 3_867_136
    assert stats.params == 522_888


def test_thesis_audit_gives_float_reasons() -> None:
    from blocks.convert import audit_flatbuffer, convert_model

    model = build_model(load_quietly(THESIS_SPEC))
    flatbuffer, messages = convert_model(model)
    audit = audit_flatbuffer(flatbuffer, model, messages=messages)
    reasons = {fallback.layer: fallback.reason for fallback in audit.float_fallbacks}

    dorefa = "input quantizer DoReFa(k_bit=1, mode='weights') is not sign-style"
    groups = "16 input channels per group: grouped binary convs need a multiple of 32 per group"
    assert audit.op_counts.get("LceBconv2d", 0) == 0
    assert sum(audit.op_counts.values()) == 254
    assert len(reasons) == 19
    assert all(dorefa in reason for reason in reasons.values())
    for name in ("head_reduce0_conv", "head_reduce1_conv", "head_entry_conv"):
        assert groups in reasons[name], name
    assert "32" not in reasons["head_reduce2_conv"]
    assert reasons["gfe_mix1"].startswith("depthwise: LCE has no binary depthwise kernel;")
    assert reasons["lfe1_mix2"].startswith("separable: LCE has no binary separable kernel;")


# ---------------------------------------------------------------------------------------
# The deployable spec takes every released weight, and computes what the thesis
# architecture computes with sign quantizers.


def test_deployable_init_is_exact() -> None:
    source = build_model(sign_thesis_spec())
    randomize_weights(source)
    target = build_model(load_quietly(DEPLOYABLE_SPEC))
    inputs = np.random.default_rng(1).uniform(-1.0, 1.0, (4, 112, 112, 3)).astype(np.float32)

    report = init_from_released(target, source)
    expected = source(inputs, training=False).numpy()
    actual = target(inputs, training=False).numpy()

    assert report.fresh == {}
    assert "repeated 2x" in report.adapted["head_entry_conv"]
    assert "folded" in report.adapted["lfe0_mix1"]
    assert "head_expand_prelu folded in" in report.adapted["head_expand_bn"]
    cosine = np.sum(expected * actual, axis=1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(actual, axis=1)
    assert cosine.min() > 0.9999


def test_deployable_init_from_released(released: Any, lfw_faces: np.ndarray) -> None:
    target = build_model(load_quietly(DEPLOYABLE_SPEC))

    report = init_from_released(target, released)
    expected = released(lfw_faces, training=False).numpy()
    actual = target(lfw_faces, training=False).numpy()

    assert report.fresh == {}
    assert len(report.copied) + len(report.adapted) == len(weighted_layers(target))
    cosine = np.sum(expected * actual, axis=1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(actual, axis=1)
    # The sign quantizers differ from DoReFa on tiny positive activations (see
    # init_from_released), so the embeddings agree only approximately.
    assert cosine.mean() > 0.8


def test_regrouped_layers_stay_fresh() -> None:
    source = build_model(load_quietly(THESIS_SPEC))
    spec = load_quietly(DEPLOYABLE_SPEC, {"head_expand.filters": 64, "head_entry.groups": 2})
    target = build_model(spec)

    report = init_from_released(target, source)

    assert report.fresh["head_entry_conv"].startswith("weight shapes [(3, 3, 32, 64)] differ from the released [(3, 3, 16, 64)]")
    assert report.fresh["head_entry_bn"] == "follows the freshly initialised head_entry_conv"
    assert "head_expand_conv" in report.copied


# ---------------------------------------------------------------------------------------
# The thesis-table experiments run through their main() on tiny settings.

TINY_SPEC = """\
name: tiny_face
input_shape: [112, 112, 3]
blocks:
  - block: conv_unit
    name: stem
    filters: 32
    kernel_size: 4
    strides: 4
    bits: 32
  - block: conv_unit
    name: body
    filters: 32
    kernel_size: 3
    strides: 2
    bits: 1
  - block: output_head
    name: output
    units: 8
"""


def write_face_folder(root: Path, identities: int = 4, images: int = 3) -> Path:
    """Write a folder of identity folders holding random 112x112 PNG images."""
    import cv2

    rng = np.random.default_rng(0)
    for identity in range(identities):
        folder = root / f"person_{identity}"
        folder.mkdir(parents=True)
        base = rng.integers(0, 256, (112, 112, 3))
        for index in range(images):
            noise = rng.integers(-20, 21, (112, 112, 3))
            cv2.imwrite(str(folder / f"{index}.png"), np.clip(base + noise, 0, 255).astype(np.uint8))
    return root


def test_efficiency_quick_run(tmp_path: Path) -> None:
    from experiments import efficiency

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    config = tmp_path / "efficiency.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "models": [{"name": "tiny", "spec": str(spec), "role": "deployable"}],
                "limit": {"reference": "tiny"},
                "output": {"folder": str(tmp_path / "out")},
            }
        )
    )

    status = efficiency.main(["--config", str(config), "--quick", "--no-record"])

    assert status == 0
    written = list((tmp_path / "out").glob("*/efficiency.json"))
    assert len(written) == 1
    document = json.loads(written[0].read_text())
    row = document["models"][0]
    assert row["binary_kernel_mac_share"] > 0.5
    assert row["best"]["median_ms"] > 0
    assert row["float_part"]["median_ms"] > 0
    assert row["limit_ratio"] == pytest.approx(1.0)
    assert len(list((tmp_path / "out").glob("*/efficiency.md"))) == 1


def test_efficiency_rejects_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import efficiency

    config = tmp_path / "efficiency.yaml"
    config.write_text(yaml.safe_dump({"target": {"spec": "local", "runs": 3}}))

    assert efficiency.main(["--config", str(config), "--quick", "--no-record"]) == 2
    assert "unknown key target.runs; allowed: spec, num_threads, warmup_runs, num_runs, rounds" in capsys.readouterr().err


def test_accuracy_quick_run_with_vlr(tmp_path: Path) -> None:
    from experiments import accuracy

    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    faces = write_face_folder(tmp_path / "faces")
    base = tmp_path / "accuracy.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {"name": "tiny", "spec": str(spec), "init": "random", "runtime": "keras"},
                    {"name": "tiny", "spec": str(spec), "init": "random", "runtime": "lce"},
                ],
                "data": {"root": str(faces), "protocol": "folder", "align": "none"},
                "output": {"folder": str(tmp_path / "out")},
            }
        )
    )
    variant = tmp_path / "vlr.yaml"
    variant.write_text(yaml.safe_dump({"base": "accuracy.yaml", "evaluation": {"vlr_sizes": [7], "vlr_modes": ["probe", "both"]}}))

    status = accuracy.main(["--config", str(variant), "--quick", "--no-record"])

    assert status == 0
    written = list((tmp_path / "out").glob("*/accuracy.json"))
    assert len(written) == 1
    document = json.loads(written[0].read_text())
    keras_model, lce_model = document["models"]
    assert set(keras_model["settings"]) == {"full resolution", "VLR 7 px, HR gallery vs VLR probe", "VLR 7 px, VLR vs VLR"}
    for setting in keras_model["settings"].values():
        assert 0.0 <= setting["flip"]["accuracy"] <= 1.0
        assert 0.0 <= setting["no_flip"]["accuracy"] <= 1.0
    full_keras = keras_model["settings"]["full resolution"]["no_flip"]["accuracy"]
    full_lce = lce_model["settings"]["full resolution"]["no_flip"]["accuracy"]
    assert full_lce == pytest.approx(full_keras, abs=0.1)


def test_accuracy_missing_weights_names_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from experiments import accuracy

    config = tmp_path / "accuracy.yaml"
    config.write_text(
        yaml.safe_dump({"models": [{"name": "x", "spec": str(DEPLOYABLE_SPEC), "weights": str(tmp_path / "none.h5")}]})
    )

    assert accuracy.main(["--config", str(config), "--quick", "--no-record"]) == 2
    assert "models[0].weights not found" in capsys.readouterr().err


def test_subset_pairs_balances_and_reindexes() -> None:
    from experiments.accuracy import subset_pairs

    images = np.arange(8).reshape(8, 1, 1, 1)
    pairs = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [1, 3]])
    issame = np.array([True, True, True, True, False, False])

    kept_images, kept_pairs, kept_issame = subset_pairs(images, pairs, issame, 4)

    assert kept_issame.tolist() == [False, True, False, True]
    assert kept_images.ravel().tolist() == [0, 1, 2, 3]
    assert kept_images[kept_pairs].reshape(4, 2).tolist() == [[0, 2], [0, 1], [1, 3], [2, 3]]


@pytest.mark.slow
def test_finetune_quick_run(shared_dir: Path, released_path: Path, tmp_path: Path) -> None:
    from experiments import finetune_binaryfacenet
    from experiments._records import PROJECT_ROOT

    lfw = shared_dir / "data" / "lfw" / "lfw-deepfunneled"
    if not lfw.is_dir():
        pytest.skip(f"LFW not found at {lfw}")
    config = tmp_path / "finetune.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base": str(PROJECT_ROOT / "experiments" / "finetune_binaryfacenet.yaml"),
                "model": {"released": str(released_path)},
                "data": {"root": str(lfw)},
                "budget": {"minutes": 2},
                "output": {"folder": str(tmp_path / "out"), "latest": str(tmp_path / "latest.h5")},
            }
        )
    )

    status = finetune_binaryfacenet.main(["--config", str(config), "--quick", "--no-record"])

    assert status == 0
    assert not (tmp_path / "latest.h5").exists()
    weights = list((tmp_path / "out").glob("*/binaryfacenet.weights.h5"))
    assert len(weights) == 1
    model = build_model(load_quietly(DEPLOYABLE_SPEC))
    model.load_weights(str(weights[0]))
