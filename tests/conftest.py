from __future__ import annotations

import os
import sys
from pathlib import Path

# Under pytest-xdist (README's `python -m pytest -q` runs one worker per core, see pyproject's addopts) every worker
# and every interpreter a test starts uses one thread: two workers with a full OpenMP pool each would fight over the
# cores (a test four to ten times slower). Set before torch is imported; subprocesses inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

# The compiled CPU kernel (blossom_hf/models/blossomrec/cpu_kernel.py) is cached in a folder of the test run's
# own, shared by the workers, not in the user's ~/.cache.
os.environ.setdefault("BLOSSOM_HF_CACHE", os.path.join(__import__("tempfile").gettempdir(),
                                                       f"blossom_hf_tests_{os.getuid()}"))

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def thread_env() -> dict[str, str]:
    """The thread settings above, for a subprocess started with an environment of its own."""
    return {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(**overrides):
    from blossom_hf import BlossomRecConfig

    params = dict(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, hidden_dropout_prob=0.0, max_history_length=64, ltis_block_size=4,
        ltis_compression_window=8, ltis_num_selected_blocks=2, stis_window=3, stis_num_sinks=0,
    )
    params.update(overrides)
    return BlossomRecConfig(**params)


def random_histories(batch: int, seq_len: int, vocab: int, generator: torch.Generator, min_len: int = 1,
                     padding: str = "right") -> torch.Tensor:
    """[B, L] histories of random real lengths in [min_len, L], padded on the given side."""
    ids = torch.zeros(batch, seq_len, dtype=torch.long)
    for row in range(batch):
        length = int(torch.randint(min_len, seq_len + 1, (1,), generator=generator))
        items = torch.randint(1, vocab, (length,), generator=generator)
        if padding == "right":
            ids[row, :length] = items
        else:
            ids[row, seq_len - length:] = items
    return ids


@pytest.fixture
def generator() -> torch.Generator:
    seed = int(os.environ.get("BLOSSOM_TEST_SEED", torch.randint(0, 2**31 - 1, (1,)).item()))
    print(f"test seed {seed}")
    return torch.Generator().manual_seed(seed)


# The project's shared datasets, passed explicitly: the library itself never looks beside the repository.
# Tests that read a preset by name find it through $BLOSSOM_DATA_DIR (unless the caller set another folder).
if SHARED_DATA.is_dir():
    os.environ.setdefault("BLOSSOM_DATA_DIR", str(SHARED_DATA))


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder (``../shared/data``); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not present at {SHARED_DATA}")
    return SHARED_DATA


def pytest_configure(config):
    """A pytest that a test starts (test_triton_backend's interpreter suite) runs in one process: this run's own
    ``-n auto`` is resolved by now, so the setting reaches only the processes started from here on."""
    os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"] = "0"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first: pytest-xdist hands tests out in this order, and a long test picked up
    last would keep one worker busy while the others are done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
