"""One-modality tasks (issue 38): pMoE over ViT experts and VPT on image-only data, fusions that need a second
modality refused, expert weights from a checkpoint file with a key prefix, each expert's own preprocessing, and the
paper-style experiments. Tiny random-init ViTs on a generated image-only dataset (JSON lines with `text_field: null`),
through the real CLI."""

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from PIL import Image

import mope_lightning
from mope_lightning.cli import main
from mope_lightning.config.model import ModelConfig
from mope_lightning.data.features import image_transform
from mope_lightning.data.registry import DATAMODULES
from mope_lightning.errors import ModelError
from mope_lightning.models import build_model
from mope_lightning.models.expert_inputs import ExpertInput, batch_config, expert_inputs
from mope_lightning.models.image_encoders import build_timm_encoder
from mope_lightning.models.prompts import PromptLayer
from mope_lightning.models.registry import FUSIONS, NEEDS_SECOND_MODALITY, single_modality_fusions
from mope_lightning.models.weights_file import load_prefixed
from mope_lightning.training.trainer_config import load_config

from helpers import EXPERIMENTS, TINY
from helpers.datasets import write_image
from helpers.models import EXPERTS
from helpers.cli import experiment_args

CLASSES = ["cat", "dog", "fish"]
TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)


def make_image_jsonl(root: Path, counts=(("train", 24), ("val", 6), ("test", 6))) -> Path:
    """An image-only classification dataset: {split}.jsonl records with an image and a label, no text."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    n = 0
    for split, count in counts:
        lines = []
        for _ in range(count):
            write_image(root / "images" / f"{n}.png", n, fmt="PNG")
            lines.append(json.dumps({"id": f"s{n}", "label": CLASSES[n % 3], "img": f"images/{n}.png"}))
            n += 1
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_experiment(path: Path, root: Path, fusion: str, **model) -> Path:
    cfg = {
        "experiment": f"image_{fusion}",
        "data": {"name": "jsonl", "root": str(root), "text_field": None, "batch_size": 4, "num_workers": 0},
        "model": {
            "fusion": fusion,
            "modalities": ["image"],
            "prompted": "image",
            "image_encoder": {"library": "timm", "name": "vit_base_patch16_224.dino"},
            **model,
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def pmoe_model(**pmoe) -> dict:
    return {"pmoe": {"experts": EXPERTS, "static_length": 4, "condition_dispatcher": False, **pmoe}}


def cli_args(tmp: Path, experiment: Path, *extra) -> list[str]:
    return experiment_args(tmp, experiment, *extra)


def one_error(capsys, *needles) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("mope: error: ") == 1, captured.err
    assert "Traceback" not in captured.err + captured.out, captured.err
    err = captured.err[captured.err.index("mope: error: ") :]
    for needle in needles:
        assert needle in err, err
    return err


def files_under(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_jsonl(tmp_path_factory.mktemp("images") / "data")


def fit(tmp: Path, experiment: Path, capsys) -> Path:
    assert main(["fit", *cli_args(tmp, experiment)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return next((tmp / "runs").rglob("epoch*.ckpt"))


def test_pmoe_on_image_only_data_fits_tests_analyzes_exports_and_predicts(data, tmp_path, capsys):
    experiment = write_experiment(tmp_path / "pmoe.yaml", data, "pmoe", **pmoe_model())
    ckpt = fit(tmp_path, experiment, capsys)
    assert main(["test", *cli_args(tmp_path, experiment, f"ckpt={ckpt}")]) == 0
    assert "test/acc" in capsys.readouterr().out
    # The run logs the dispatch path of every validation (routing_val.json), and `mope analyze` reports it.
    logged = json.loads(next((tmp_path / "runs").rglob("routing_val.json")).read_text())
    assert [step["layer"] for step in logged["dispatch_path"]] == [
        "vit_base_patch16_224.dino L0",
        "vit_base_patch16_224.dino L1",
        "vit_small_patch16_224.augreg_in21k L0",
        "vit_small_patch16_224.augreg_in21k L1",
        "vit_small_patch16_224.augreg_in21k L2",
    ]
    assert all(step["chosen"] in logged["expert_labels"] for step in logged["dispatch_path"])
    report = tmp_path / "report"
    assert main(["analyze", *cli_args(tmp_path, experiment, f"ckpt={ckpt}", f"out={report}")]) == 0
    summary = (report / "summary.md").read_text()
    assert "## Dispatch path" in summary and "| vit_small_patch16_224.augreg_in21k L2 | " in summary
    assert "words: ;" not in summary  # image-only samples have no words to list
    adapter = tmp_path / "adapter"
    assert main(["export", *cli_args(tmp_path, experiment, f"ckpt={ckpt}", f"out={adapter}")]) == 0
    images = [data / "images" / f"{i}.png" for i in (30, 31, 32)]
    from_ckpt = mope_lightning.from_pretrained(ckpt).predict(images=images)
    from_adapter = mope_lightning.from_pretrained(adapter).predict(images=[Image.open(p) for p in images])
    assert torch.equal(from_ckpt.probs, from_adapter.probs)
    assert from_adapter.routing.shape == (3, 2 + 3, 3)  # (images, Σ expert depths, [carried, expert 0, expert 1])
    assert set(from_adapter.labels) <= set(CLASSES)
    with pytest.raises(ValueError, match="texts"):  # the model reads images alone
        mope_lightning.from_pretrained(adapter).predict(texts=["a cat"], images=images[:1])


@pytest.mark.parametrize("fusion, prompted_layers", [("prompt_tuning", 2), ("prompt_tuning_shallow", 1)])
def test_vpt_deep_and_shallow_on_image_only_data(data, tmp_path, capsys, fusion, prompted_layers):
    experiment = write_experiment(
        tmp_path / "vpt.yaml", data, fusion, mope={"static_length": 5, "dynamic_length": 0, "mapped_length": 0}
    )
    ckpt = fit(tmp_path, experiment, capsys)
    model = mope_lightning.from_pretrained(ckpt)
    layers = [m for m in model.net.modules() if isinstance(m, PromptLayer)]
    assert len(layers) == prompted_layers and all(layer.static.shape[-2] == 5 for layer in layers)
    # no second modality at the head
    assert model.net.modality_set == ("image",) and model.net.head[-1].in_features == 64
    adapter = tmp_path / "adapter"
    assert main(["export", *cli_args(tmp_path, experiment, f"ckpt={ckpt}", f"out={adapter}")]) == 0
    images = [data / "images" / "33.png"]
    assert torch.equal(
        mope_lightning.from_pretrained(adapter).predict(images=images).probs, model.predict(images=images).probs
    )


@pytest.mark.parametrize(
    "fusion", [f for f in single_modality_fusions() if f not in ("pmoe", "text_only", "audio_only", "video_only")]
)
def test_every_one_modality_fusion_builds_and_runs_on_images(fusion):
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        {
            "fusion": fusion,
            "modalities": ["image"],
            "prompted": "image",
            "image_encoder": {"library": "timm", "name": "vit_base_patch16_224", "tiny": True},
        },
    )
    net = build_model(cfg, 3)
    out = net({"images": torch.randn(2, 3, 32, 32)})
    assert out.logits.shape == (2, 3) and net.modality_set == ("image",)
    assert (net.parameter_counts()["encoders"] > 0) == (fusion == "finetune")
    if fusion == "linear_probe":  # one linear layer on the frozen feature, whatever model.head_hidden says
        assert [type(m).__name__ for m in net.head] == ["Dropout", "Linear"]


@pytest.mark.parametrize("fusion", sorted(NEEDS_SECOND_MODALITY))
def test_a_fusion_that_needs_a_second_modality_is_refused(data, tmp_path, capsys, fusion):
    experiment = write_experiment(tmp_path / "two.yaml", data, fusion)
    before = files_under(tmp_path)
    assert main(["fit", *cli_args(tmp_path, experiment)]) == 2
    one_error(
        capsys,
        f"model.fusion: {fusion} needs a second modality",
        "model.modalities is ['image']",
        str(experiment),
        "pmoe",
        "prompt_tuning_shallow",
    )
    assert files_under(tmp_path) == before
    assert set(NEEDS_SECOND_MODALITY) | set(single_modality_fusions()) == set(FUSIONS)


@pytest.mark.parametrize(
    "extra, needles",
    [
        (
            ["model.pmoe.condition_dispatcher=true"],
            ["model.pmoe.condition_dispatcher", "second modality", "model.modalities is ['image']"],
        ),
        (["model.pmoe.dynamic_length=2"], ["model.pmoe.dynamic_length: 2", "set model.pmoe.dynamic_length"]),
        (["model.modalities=[image,image]"], ["model.modalities: ['image', 'image']", "one modality or two different"]),
        (["model.modalities=[]"], ["model.modalities: []"]),
        (
            ["model.modalities=[image,text,audio]", "model.text_encoder.name=x"],
            ["model.modalities: ['image', 'text', 'audio'], but jsonl has image, no text or audio", "=[image]"],
        ),
        (["model.prompted=text"], ["model.prompted: 'text' is not one of model.modalities ['image']"]),
        (["model.condition_prompts=4"], ["model.condition_prompts", "one-modality task"]),
        (
            ["model.modalities=[text,image]", "model.text_encoder.name=x"],
            ["model.modalities: ['text', 'image'], but jsonl has image, no text", "model.modalities=[image]"],
        ),
        (["data.image_mean=[0.5,0.5,0.5]"], ["data.image_mean", "own pretrained mean and std"]),
        (
            ["model.fusion=prompt_tuning_shallow", "model.mope.prompted_layers=[0,1]"],
            ["model.mope.prompted_layers: [0, 1], but model.fusion=prompt_tuning_shallow prompts layer 0 only"],
        ),
        (
            ["model.fusion=prompt_tuning_shallow", "model.compat.mode=reference"],
            ["model.compat.skip_first_block_prompt: leaves model.fusion=prompt_tuning_shallow no prompted layer"],
        ),
        (
            [
                "model.image_encoder.library=torchvision",
                "model.image_encoder.name=mobilenet_v2",
                "model.image_encoder.checkpoint_prefix=encoder.",
                "model.fusion=image_only",
            ],
            ["model.image_encoder.checkpoint_prefix: applies to timm"],
        ),
    ],
)
def test_hostile_one_modality_settings_get_one_message(data, tmp_path, capsys, extra, needles):
    experiment = write_experiment(tmp_path / "pmoe.yaml", data, "pmoe", **pmoe_model())
    before = files_under(tmp_path)
    assert main(["fit", *cli_args(tmp_path, experiment, *extra)]) == 2
    one_error(capsys, *needles)
    assert files_under(tmp_path) == before


# --- expert weights from a checkpoint file -------------------------------------------------------------------------


def released_checkpoint(path: Path, prefix: str, seed: int = 0) -> tuple[Path, dict]:
    """A ViT's weights as a MoCo v3 release nests them: under `state_dict`, prefixed, beside a momentum encoder and
    a projection head."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    state = {f"{prefix}{k}": v for k, v in vit.state_dict().items()}
    state.update({f"module.momentum_encoder.{k}": v for k, v in vit.state_dict().items()})
    state[f"{prefix}head.0.weight"] = torch.randn(8, 64)
    torch.save({"epoch": 300, "state_dict": state, "arch": "vit_base"}, path)
    return path, vit.state_dict()


def test_an_expert_from_a_prefixed_checkpoint_predicts_what_timm_loading_the_same_weights_predicts(tmp_path):
    path, weights = released_checkpoint(tmp_path / "moco.pth.tar", "module.base_encoder.")
    ours = build_timm_encoder(
        "vit_base_patch16_224", False, str(path), dict(TINY_VIT), False, "module.base_encoder.", "model.pmoe.experts[1]"
    )
    reference = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT).eval()
    reference.load_state_dict(weights)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(images), reference(images))
    # The safetensors form of a release with the `encoder.` prefix reads the same.
    from safetensors.torch import save_file

    save_file({f"encoder.{k}": v.contiguous() for k, v in weights.items()}, tmp_path / "w.safetensors")
    again = build_timm_encoder(
        "vit_base_patch16_224", False, str(tmp_path / "w.safetensors"), dict(TINY_VIT), False, "encoder."
    )
    with torch.no_grad():
        assert torch.equal(again(images), reference(images))


def test_a_checkpoint_that_does_not_fit_names_its_keys_and_file(data, tmp_path, capsys):
    path, _ = released_checkpoint(tmp_path / "moco.pth", "module.base_encoder.")
    expert = {
        "library": "timm",
        "name": "vit_base_patch16_224",
        "kwargs": dict(TINY_VIT),
        "tiny": False,
        "checkpoint": str(path),
    }
    cases = [
        ({"checkpoint_prefix": "module.encoder."}, ["no key of", str(path), "checkpoint_prefix 'module.encoder.'"]),
        (
            {"checkpoint_prefix": "module."},
            [
                "model.pmoe.experts[1].checkpoint",
                str(path),
                "missing (first: 'cls_token')",
                "unexpected (first: 'module.base_encoder.cls_token')",
            ],
        ),
        (
            {"checkpoint_prefix": "module.base_encoder.", "kwargs": {**TINY_VIT, "depth": 3}},
            [str(path), "missing (first: 'blocks.2.norm1.weight')"],
        ),
        (
            {"checkpoint_prefix": "module.base_encoder.", "kwargs": {**TINY_VIT, "embed_dim": 32}},
            [str(path), "'cls_token' is (1, 1, 64) in the file, (1, 1, 32) here"],
        ),
    ]
    for change, needles in cases:
        # The tiny overlay reads no weights: the expert opts out of it to read its file.
        first = {"library": "timm", "name": "vit_base_patch16_224", "pretrained": False, "kwargs": dict(TINY_VIT)}
        experiment = write_experiment(
            tmp_path / "bad.yaml", data, "pmoe", **pmoe_model(experts=[first, {**expert, **change}])
        )
        assert (
            main(
                [
                    "fit",
                    *cli_args(
                        tmp_path, experiment, "model.image_encoder.tiny=false", "model.image_encoder.pretrained=false"
                    ),
                ]
            )
            == 2
        )
        one_error(capsys, *needles)


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"cls_token": torch.zeros(1)}, "note": Payload()}, path)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    with pytest.raises(ModelError, match=r"experts\[0\]\.checkpoint: cannot read .*evil\.pth as tensors"):
        load_prefixed(vit, path, "", "model.pmoe.experts[0].checkpoint")
    assert not marker.exists()


@settings(max_examples=25)
@given(
    drop=st.sets(st.integers(0, 40), max_size=3),
    extra=st.lists(st.text("abc.", min_size=1, max_size=6), max_size=2),
    prefix=st.sampled_from(["", "encoder.", "module.base_encoder."]),
)
def test_load_prefixed_loads_exactly_or_names_a_key(tmp_path_factory, drop, extra, prefix):
    """Any subset of the keys, with stray keys and any prefix: an exact load, or one ModelError naming a key."""
    torch.manual_seed(1)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    names = list(source.state_dict())
    state = {f"{prefix}{k}": v for i, (k, v) in enumerate(source.state_dict().items()) if i not in drop}
    state.update({f"{prefix}{e}": torch.zeros(1) for e in extra})
    path = tmp_path_factory.mktemp("w") / "w.pth"
    torch.save(state, path)
    target = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
    try:
        load_prefixed(target, path, prefix, "checkpoint")
    except ModelError as exc:
        dropped = [names[i] for i in sorted(drop) if i < len(names)]
        assert str(path) in str(exc) and (f"'{dropped[0]}'" in str(exc) if dropped else "unexpected" in str(exc))
        return
    assert not [i for i in drop if i < len(names)] and not extra
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


# --- each expert's own preprocessing ---------------------------------------------------------------------------------


def test_each_image_expert_gets_its_own_size_and_normalisation_from_one_batch(tmp_path):
    first = {
        "input_size": (3, 48, 48),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
    }
    other = {**first, "input_size": (3, 24, 24), "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    assert batch_config([other, first]) is first  # the batch is made for the largest input, wherever listed
    mappings = expert_inputs([other, first, dict(first)])
    assert isinstance(mappings[0], ExpertInput) and all(isinstance(m, torch.nn.Identity) for m in mappings[1:])
    image = Image.open(write_image(tmp_path / "x.png", 3, size=96, fmt="PNG")).convert("RGB")
    mapped = mappings[0](image_transform(first)(image).unsqueeze(0))[0]
    direct = image_transform(other)(image)
    assert mapped.shape == direct.shape == (3, 24, 24)
    # One resize of the decoded image against two (96 -> 48 -> 24): the same picture, up to resampling.
    assert (mapped - direct).abs().mean() < 0.05 < (image_transform(first)(image)[:, ::2, ::2] - direct).abs().mean()


def test_the_batch_is_made_for_the_largest_expert_input_whatever_the_order():
    cfg = OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        {
            "fusion": "pmoe",
            "modalities": ["image"],
            "prompted": "image",
            "image_encoder": {"library": "timm", "name": "vit_base_patch16_224", "tiny": True},
            **pmoe_model(experts=EXPERTS[::-1]),
        },
    )
    net = build_model(cfg, 3)
    assert net.experts[0].data_config["input_size"] == (3, 28, 28)
    spec = net.input_spec()
    assert spec.image_config["input_size"] == (3, 48, 48) and spec.image_config["mean"] == (0.485, 0.456, 0.406)
    out = net({"images": torch.randn(2, 3, 48, 48)})
    assert out.logits.shape == (2, 3) and out.routing.shape == (2, 3 + 2, 3)


# --- the paper-style experiments -------------------------------------------------------------------------------------

PAPER_EXPERIMENTS = ["pmoe_vtab", "vpt_vtab", "pmoe_cub200", "pmoe_flowers102", "pmoe_imagefolder", "pmoe_medmnist"]


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_each_paper_experiment_builds_its_model_with_the_tiny_overlay(name):
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    assert raw["model"]["modalities"] == ["image"] and "GPU" in (EXPERIMENTS / f"{name}.yaml").read_text()
    tiny = yaml.safe_load(TINY.read_text())["model"]
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), raw["model"], tiny)
    net = build_model(cfg, 5)  # the tiny overlay: random-init miniatures, no weights or checkpoint file read
    out = net({"images": torch.randn(2, *net.image.data_config["input_size"])})
    assert out.logits.shape == (2, 5) and net.modalities() == ("image",)
    if name == "pmoe_medmnist":
        assert raw["model"]["pmoe"]["experts"][1]["checkpoint_prefix"] == "module.base_encoder."


@pytest.mark.parametrize("name", PAPER_EXPERIMENTS)
def test_each_paper_experiment_validates_with_the_tiny_overlay(name):
    data_name = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())["data"]["name"]
    if data_name not in DATAMODULES:
        pytest.skip(f"data.name={data_name}: its reader comes with the vision_data branch (issue 38 item 3)")
    cfg = load_config([EXPERIMENTS / f"{name}.yaml", TINY], [])
    assert cfg.model.fusion in ("pmoe", "prompt_tuning") and list(cfg.model.modalities) == ["image"]
