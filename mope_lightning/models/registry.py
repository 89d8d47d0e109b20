"""The fusions and modalities this package builds, once: the config's choices (config/schema.py, config/checks.py)
and the model factory (factory.py, classifier.py) derive their lists from here."""

# every modality an encoder family exists for; depth: an image encoder reading depth maps (RGB-D segmentation)
MODALITIES = ("text", "image", "audio", "video", "depth")
SEGMENTATION = "segmentation"  # the dense task (a dataset's `task`): a dense head on the image encoder's grids
TIME_POOLS = ("mean",)  # how a frame-wise video encoder pools its frames' features (model.video_encoder.pool_time)
HEADS = ("linear", "upernet")  # the dense heads (`model.head`, models/dense_heads.py)

# Prompt fusions: the prompted encoder reads learned prompts conditioned on the other modality's feature.
# prompt_tuning is deep prompt tuning (VPT-deep: new prompts at every layer); prompt_tuning_shallow prompts the first
# layer only and carries those prompts through the rest (VPT-shallow).
PROMPT_FUSIONS = ("mope", "prompt_tuning", "prompt_tuning_shallow", "promptfuse")
STATIC_PROMPT_FUSIONS = ("prompt_tuning", "prompt_tuning_shallow")  # static prompts only, none conditioned
# Modalities read only as a conditioning feature (no `<modality>_only` baseline): a depth encoder gives no image grid.
CONDITIONING_ONLY = ("depth",)
# Unimodal baselines: the one modality each reads.
UNIMODAL_FUSIONS = {f"{modality}_only": modality for modality in MODALITIES if modality not in CONDITIONING_ONLY}
# Late fusions: a head over pooled features; the modalities each reads (None: every modality of the experiment).
# linear_probe: one linear layer on the frozen features; finetune: the encoders trained too.
LATE_FUSION_MODALITIES = {
    "late_concat": None,
    "linear_probe": None,
    "finetune": None,
    **{fusion: (modality,) for fusion, modality in UNIMODAL_FUSIONS.items()},
}
# pMoE: a dispatcher over several prompted experts (models/pmoe.py).
FUSIONS = (*PROMPT_FUSIONS, *LATE_FUSION_MODALITIES, "pmoe")

# How many modalities (`model.modalities`) each fusion works with, and why a fusion needs two or more: those
# conditioned on (or concatenating) other modalities. Every other fusion reads one modality alone, or the set given.
NEEDS_SECOND_MODALITY = {
    "mope": "its prompts are conditioned on a second modality's feature",
    "promptfuse": "its prompts are mapped from a second modality's feature",
    "late_concat": "it concatenates the features of two modalities",
}


def modality_counts(fusion: str) -> tuple[int, ...]:
    """The numbers of modalities `fusion` works with: any set of distinct modalities, of two or more for the fusions
    that need a second one."""
    return tuple(range(2 if fusion in NEEDS_SECOND_MODALITY else 1, len(MODALITIES) + 1))


def single_modality_fusions() -> tuple[str, ...]:
    """The fusions that work on a one-modality task (e.g. image classification)."""
    return tuple(f for f in FUSIONS if 1 in modality_counts(f))
