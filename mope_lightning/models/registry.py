"""The fusions and modalities this package builds, once: the config's choices (config/schema.py, config/checks.py)
and the model factory (factory.py, classifier.py) derive their lists from here."""

MODALITIES = ("text", "image", "audio")  # every modality an encoder family exists for

# Prompt fusions: the prompted encoder reads learned prompts conditioned on the other modality's feature.
PROMPT_FUSIONS = ("mope", "prompt_tuning", "promptfuse")
# Unimodal baselines: the one modality each reads.
UNIMODAL_FUSIONS = {f"{modality}_only": modality for modality in MODALITIES}
# Late fusions: a head over pooled features; the modalities each reads (None: both of the experiment's pair).
LATE_FUSION_MODALITIES = {"late_concat": None, "finetune": None,
                          **{fusion: (modality,) for fusion, modality in UNIMODAL_FUSIONS.items()}}
# pMoE: a dispatcher over several prompted experts (models/pmoe.py).
FUSIONS = (*PROMPT_FUSIONS, *LATE_FUSION_MODALITIES, "pmoe")
