"""The committed `accelerate launch` configs parse with Accelerate's own loader and say what the README says."""

import os

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from builders import REPO

CONFIGS = os.path.join(REPO, "accelerate_configs")


@pytest.mark.parametrize("name, distributed_type, processes, check", [
    ("ddp_multinode", DistributedType.MULTI_GPU, 16, lambda c: c.num_machines == 2 and c.main_process_port == 29500),
    ("fsdp2", DistributedType.FSDP, 8, lambda c: c.fsdp_config["fsdp_version"] == 2
     and c.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"),
    ("deepspeed_zero3", DistributedType.DEEPSPEED, 8, lambda c: c.deepspeed_config["zero_stage"] == 3),
])
def test_each_config_loads_with_accelerate(name, distributed_type, processes, check):
    config = load_config_from_file(os.path.join(CONFIGS, f"{name}.yaml"))
    assert config.distributed_type == distributed_type and config.num_processes == processes
    assert config.mixed_precision == "bf16" and check(config)
    assert sorted(os.listdir(CONFIGS)) == ["ddp_multinode.yaml", "deepspeed_zero3.yaml", "fsdp2.yaml"]
