"""The devices a test can run on: the CPU always, a CUDA GPU when one is present (`bench/gpu_check.sh` runs
every test parametrised with these on a GPU machine: `pytest -k cuda`)."""

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; bench/gpu_check.sh runs these on one"))]
