"""The `model` section's schema, merging YAML nodes with messages that name the source and key, and the config
stored beside trained weights (`stored_config`): what loading a trained model needs. Nothing here imports Lightning
or the datasets, so that `from_pretrained` does not either; the full experiment schema is config/schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mope_lightning.errors import ConfigError, suggest


@dataclass
class EncoderConfig:
    """A pretrained encoder built by its own library."""

    library: str = "transformers"  # transformers | timm | torchvision
    name: str = MISSING  # hub id or local directory (transformers); model name (timm, torchvision)
    pretrained: bool = True  # false: random init of the same architecture (tests, the tiny overlay)
    checkpoint: Optional[str] = None  # local weights file (timm, torchvision)
    # timm: read `checkpoint` strictly under this key prefix, stripped (MoCo v3 releases: "module.base_encoder.",
    # others "encoder."; "" for the architecture's own names); unset: timm reads the file its own way
    checkpoint_prefix: Optional[str] = None
    weights: Optional[str] = None  # torchvision only: weights enum member, e.g. IMAGENET1K_V1 (default: DEFAULT)
    tokenizer: Optional[str] = None  # transformers only: tokenizer source when it differs from `name`
    arch: Optional[str] = None  # transformers model_type to build when `name`'s files are unreachable (e.g. bert)
    tiny: bool = False  # a random-init miniature of the same family (the tiny overlay; implies pretrained: false)
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra architecture arguments


@dataclass
class VideoEncoderConfig(EncoderConfig):
    """A frame-wise video encoder: an image encoder (timm or torchvision, read as `model.image_encoder` is) applied
    to each sampled frame (`data.video_frames`), its features pooled over time."""

    library: str = "torchvision"  # timm | torchvision
    pool_time: str = "mean"  # how the frames' features become the clip's: mean


@dataclass
class RouterConfig:
    """The multimodal router of each prompted layer (mope_method.md §2.4)."""

    self_dim: int = 2  # width of the query part projected from the prompted encoder's tokens
    cross_dim: int = 8  # width of the query part projected from the conditioning feature
    temperature: float = 0.1
    noise_std: float = 0.00390625  # 1/256, added to the routing logits in training only
    top_k: int = 0  # 0: dense soft routing over all experts (the paper's setting)


@dataclass
class MoPEConfig:
    """Prompt kinds and the mixture of prompt experts. A length of 0 turns that prompt kind off."""

    static_length: int = 6  # dataset-level prompts, one set per layer
    dynamic_length: int = 6  # instance-level prompts mixed from the experts by the router
    mapped_length: int = 1  # prompts projected from the conditioning feature, one set per stage
    num_experts: int = 4
    mapper_hidden: Optional[int] = None  # default: half the conditioning feature width
    prompt_dropout: float = 0.1  # on the mapped prompts, as in the reference
    init_scale: Optional[float] = None  # uniform(-s, s) prompt init; default: the encoder family's rule
    prompted_layers: Optional[List[int]] = None  # default: every layer; others carry the previous prompts
    router: RouterConfig = field(default_factory=RouterConfig)
    importance_weight: float = 0.01
    importance_threshold: float = 0.1  # the CV^2 importance loss counts only above this value


@dataclass
class CompatConfig:
    """Reproduce the reference code's quirks where they change numbers (mope_method.md §8). Default: fixed."""

    mode: Optional[str] = None  # reference: every flag below at the reference behaviour, and test on last weights
    window_prompt_order: str = "batch"  # batch | reference (Swin windows paired with other samples' prompts)
    skip_first_block_prompt: bool = False  # true: the first block of each stage carries prompts, not new ones
    eval_routing_noise: bool = False  # true: routing noise also at evaluation
    mapper_bn_frozen: bool = False  # true: the mapper's BatchNorm keeps its initial statistics
    # Training-time dropouts of the reference (rate: model.mope.prompt_dropout; none changes evaluation):
    initial_prompt_dropout: bool = False  # true: on the prompts entering before the first block (the shallow prompt)
    condition_prompt_dropout: bool = False  # true: on the conditioning encoder's prompts (model.condition_prompts)
    condition_encoder_dropout: bool = False  # true: the frozen conditioning encoder's own dropout (feature not cached)


@dataclass
class PMoEConfig:
    """pMoE (fusion: pmoe): frozen expert encoders of the prompted modality, prompted together through learnable
    dispatchers (peers.md §3.4). The other modality's encoder conditions the dispatchers and dynamic EPTs."""

    experts: List[EncoderConfig] = field(default_factory=list)  # two or more encoders of the prompted modality
    static_length: int = 6  # learned expert prompt tokens (EPTs) per expert and layer
    dynamic_length: int = 0  # MoPE prompts in each expert's EPTs, mixed from `num_experts` by the other modality
    mapped_length: int = 0  # MoPE's mapped prompts in each expert's EPTs (model.mope.mapper_hidden, prompt_dropout)
    num_experts: int = 4  # prompt experts of the dynamic EPTs (router settings: model.mope.router)
    dispatcher: str = "learned"  # learned | identity (each expert keeps its own EPTs: no exchange)
    granularity: str = "expert"  # expert: one gate per candidate set | token: one per set and prompt token
    hidden: int = 64  # the dispatchers' hidden width
    condition_dispatcher: bool = True  # the dispatchers read the other modality's feature (a multimodal pMoE)
    combine: str = "concat"  # concat: one head on all experts' features | mean_logits: a head per expert
    dispatch_importance: bool = False  # MoPE's importance loss on the dispatch gates (model.mope.importance_*)
    init_scale: Optional[float] = None  # uniform(-s, s) EPT init; default: each expert family's rule


@dataclass
class ModelConfig:
    # mope | prompt_tuning (static prompts only, at every layer: VPT-deep) | prompt_tuning_shallow (static prompts
    # at the first layer, carried through: VPT-shallow) | promptfuse (mapped prompts only) | late_concat (frozen
    # features) | linear_probe (a linear head on the frozen features) | finetune (the encoders trained, late concat)
    # | text_only | image_only | audio_only | video_only | pmoe (model.pmoe.experts). Which work with one modality: see
    # models/registry.py (mope, promptfuse and late_concat need two)
    fusion: str = "mope"
    # the modalities the model reads, each by its model.<modality>_encoder (text, image, audio, video, depth): two
    # to fuse, or one for a one-modality task (e.g. [image] for image classification); their order numbers the
    # missing cases of missing-aware prompts
    modalities: List[str] = field(default_factory=lambda: ["text", "image"])
    prompted: str = "text"  # the modality whose encoder is prompted (pMoE: the experts'); the other one conditions it
    text_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    image_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(library="torchvision"))
    # a transformers speech encoder (wav2vec2, HuBERT, WavLM) with its own feature extractor; `arch` builds its
    # random-init miniature without files (the MoPE reference's wav2vec2-base-960h)
    audio_encoder: EncoderConfig = field(
        default_factory=lambda: EncoderConfig(name="facebook/wav2vec2-base-960h", arch="wav2vec2")
    )
    # RGB-D segmentation (nyudv2): a frozen timm or torchvision image encoder reading the encoded depth maps, built
    # like image_encoder; its pooled feature conditions the prompts of the image encoder (model.prompted=image)
    depth_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(library="timm"))
    # a frame-wise video encoder: an image encoder on each of the clip's data.video_frames frames, mean over time
    video_encoder: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    pool: str = "mean"  # text pooling: mean (over tokens and prompts, masked) | cls; image encoders pool as timm does
    # audio encoders pool by the mean over frames and prompts
    condition_prompts: int = 0  # static prompts per layer for the conditioning encoder itself (reference: 4)
    head_hidden: int = 0  # 0: linear head; >0: one hidden layer (the late-fusion MLP uses 256)
    head_dropout: float = 0.0
    # task segmentation (a segmentation dataset): the dense head on the image encoder's feature grids. linear: the
    # linear probe (BatchNorm and a 1x1 convolution on the last layer's grid); upernet: transformers' UperNet head
    # over the grids of head_layers
    head: str = "linear"
    head_layers: Optional[List[int]] = None  # upernet: the layers it reads, lowest first (negative: from the last)
    # null: four spread up to the last layer (blocks of a torchvision CNN's `features`, stages of a timm CNN)
    head_channels: int = 256  # upernet: its hidden width
    seg_loss: str = "ce"  # ce: cross-entropy over the labelled pixels | ce_dice: plus a soft Dice term
    # recompute each prompted layer's activations in the backward pass instead of keeping them: less memory for
    # deep or wide frozen encoders and big batches, one more forward pass of the encoder per step
    activation_checkpointing: bool = False
    # with activation_checkpointing: only the first so many prompted layers recompute (null: all). Each layer left
    # out keeps its activations and saves its share of the recomputation (Megatron's recompute_num_layers)
    checkpointed_layers: Optional[int] = None
    # with activation_checkpointing: what a checkpointed layer keeps. selective: its input and its MLP's
    # down-projection output, the product with the most computation per value kept (a third less recomputation);
    # full: its input only (the least memory)
    checkpoint_policy: str = "selective"
    # torch.compile the classifier (in place: its weights keep their names); compiles on the first steps
    compile: bool = False
    # the attention kernel of the library encoders: auto (the plain matmul path where the step runs in bf16 on a CPU
    # with short sequences, where PyTorch's fused CPU kernel is slow; the library's own elsewhere), library, eager
    attention: str = "auto"
    # missing-aware prompts (Lee et al., CVPR 2023): learned prompts per prompted layer, one set per missing case
    # (complete, text missing, image missing), chosen by each sample's case and added to the fusion's prompts
    missing_prompts: bool = False
    missing_prompt_length: int = 4
    mope: MoPEConfig = field(default_factory=MoPEConfig)
    pmoe: PMoEConfig = field(default_factory=PMoEConfig)
    compat: CompatConfig = field(default_factory=CompatConfig)


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: '{item}' is not a key=value override (e.g. trainer.max_epochs=3)")
    for item in overrides:  # one by one, to name the one that does not parse
        try:
            OmegaConf.from_dotlist([item])
        except yaml.YAMLError as exc:  # the value is read as YAML: `key=*`, `key=:` are not YAML values
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            key, value = item.split("=", 1)
            raise ConfigError(
                f"command line: '{item}': the value does not parse as YAML ({problem}); quote it, "
                f"e.g. \"{key}='{value}'\""
            ) from None
        except (OmegaConfBaseException, IndexError, KeyError, ValueError) as exc:  # a malformed key path, `[=1`
            raise ConfigError(
                f"command line: '{item}': cannot parse this override "
                f"({str(exc).splitlines()[0] or type(exc).__name__}); write key.path=value"
            ) from None
    return OmegaConf.from_dotlist(list(overrides))


def merge_node(cfg: DictConfig, node: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, node)
    except ConfigKeyError as exc:
        key = exc.full_key or str(exc.key)
        parent = select_node(cfg, key.rpartition(".")[0]) if "." in key else cfg
        valid = list(parent.keys()) if isinstance(parent, DictConfig) else []
        prefix, _, leaf = key.rpartition(".")
        valid = [f"{prefix}.{v}" if prefix else str(v) for v in valid]
        raise ConfigError(f"{source}: unknown key '{key}'{suggest(key, valid)}") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: {exc.full_key}: {str(exc.msg or exc).splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"{source}: {key + ': ' if key else ''}{getattr(exc, 'msg', exc)}") from None
    except TypeError:  # OmegaConf: a mapping (`callbacks.0.x=...`, `optim.betas.0=...`) merged into a list
        prefixes = [".".join(k.split(".")[:i]) for k, _ in leaves(node) for i in range(1, k.count(".") + 1)]
        lists = [p for p in prefixes if isinstance(select_node(cfg, p), ListConfig)]
        where = f" ({lists[0]})" if lists else ""
        raise ConfigError(
            f"{source}: a list{where} is set as a whole, e.g. loggers=[tensorboard,csv] or "
            "callbacks=[{class_path: EarlyStopping, init_args: {patience: 5}}]; entries cannot be "
            "addressed by index"
        ) from None


def select_node(cfg: DictConfig, key: str):
    """The node at `key`, or None where there is none (a key that is not a path into `cfg`, e.g. a name inside a
    list): for messages about a key that failed to merge."""
    try:
        return OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException:
        return None


def leaves(node, prefix: str = ""):
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{name}.")
        else:
            yield name, value


def stored_config(stored: dict, overrides: Sequence[str] = (), source: str = "stored config") -> DictConfig:
    """The `model` and `data` sections of a config saved beside trained weights, the model re-checked against the
    schema, then `key=value` overrides (e.g. `model.text_encoder.name=/local/copy` where the encoder lives
    elsewhere on this machine)."""
    if not isinstance(stored.get("model"), dict):
        raise ConfigError(f"{source}: no `model` section; it was not written by mope_lightning")
    cfg = OmegaConf.create({"model": OmegaConf.structured(ModelConfig), "data": stored.get("data") or {}})
    cfg = merge_node(cfg, OmegaConf.create({"model": stored["model"]}), source)
    OmegaConf.set_struct(cfg.data, True)  # the model is checked by its schema; the data keys by what was stored
    updates = parse_overrides(overrides)
    outside = [k for k in updates if k not in ("model", "data")]
    if outside:
        raise ConfigError(f"overrides: '{outside[0]}': only model.* and data.* settings can be changed here")
    return merge_node(cfg, updates, "overrides")
