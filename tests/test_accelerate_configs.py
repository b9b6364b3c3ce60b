"""The shipped accelerate configs load with accelerate's own loader and say what the README says they do."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


def _load(name: str):
    return load_config_from_file(str(CONFIGS / name))


def test_every_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == ["cpu.yaml", "multi_gpu.yaml", "multi_node.yaml",
                                                               "single_gpu.yaml"]


def test_cpu_starts_two_cpu_processes_under_torchrun():
    cfg = _load("cpu.yaml")
    assert cfg.use_cpu and cfg.num_processes == 2 and cfg.distributed_type == DistributedType.MULTI_GPU


def test_single_gpu_is_one_plain_process():
    cfg = _load("single_gpu.yaml")
    assert cfg.distributed_type == DistributedType.NO and cfg.num_processes == 1 and not cfg.use_cpu


def test_multi_gpu_is_one_node_with_a_process_per_gpu():
    cfg = _load("multi_gpu.yaml")
    assert cfg.distributed_type == DistributedType.MULTI_GPU and cfg.num_machines == 1 and cfg.num_processes == 8
    assert cfg.gpu_ids == "all" and not cfg.use_cpu


@pytest.mark.parametrize("field", ["num_machines", "num_processes", "machine_rank", "main_process_ip",
                                   "main_process_port"])
def test_multi_node_names_what_each_node_overrides_on_the_command_line(field):
    """The README's multi-node command passes these per node; the file's values are the example's shape."""
    cfg = _load("multi_node.yaml")
    assert cfg.distributed_type == DistributedType.MULTI_GPU and cfg.num_machines > 1
    assert cfg.num_processes % cfg.num_machines == 0
    assert getattr(cfg, field) is not None
    assert f"--{field}" in (CONFIGS.parent / "README.md").read_text()
