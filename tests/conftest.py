import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# bases pretrained by tests go to a throw-away cache, never to ~/.cache/cyb_nb
import tempfile
os.environ.setdefault("CYB_NB_CACHE", tempfile.mkdtemp(prefix="cyb_nb_test_cache_"))

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    "One torch thread for a test module: on a shared 2-core machine two threads contend and run many times slower."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def load_script():
    "A function that imports a script of the repository (`benchmarks/...py`, `examples/...py`), by its path from the root, as a module."
    import importlib.util
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]

    def load(relpath: str):
        path = root / relpath
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load
