"""Training Realiz3D (domain shifters, stage 2 with layer-aware training, the standard
fine-tuning baseline) and RefAny3D, on the branched engine: the whole public API.

    from realiz3d.training import load_config, train
    cfg = load_config("training/configs/stage1.yaml", overrides={"train.steps": 2000})
    result = train(cfg, progress=lambda step, total: ..., should_stop=lambda: False)
    result.outputs      # {'shifters': '.../shifters.safetensors', 'loss_curve': '...png'}

Folder formats, recipes and the files written are described in training/README.md. Nothing
here imports ComfyUI.
"""
from .backbone import Backbone, DiffusersBackbone, HostBackbone
from .checkpoint import list_checkpoints, read_checkpoint
from .config import LORA_TARGETS, RECIPES, TrainConfig, dump_config, load_config
from .data import (BadSample, Dataset, ImageFolder, MemoryDataset, MeshFolder, Sample, TripletFolder,
                   build_datasets)
from .data_order import DataOrder
from .loss_curve import save_loss_curve
from .memory import training_memory
from .runs import config_differences, install, plan_run
from .recipes import Plan, Realiz3DRecipe, RefAny3DRecipe, make_recipe
from .trainer import TrainResult, evaluate_loss, train

__all__ = ["Backbone", "DiffusersBackbone", "HostBackbone", "training_memory", "config_differences", "install",
           "plan_run", "list_checkpoints", "read_checkpoint", "LORA_TARGETS", "RECIPES", "TrainConfig", "dump_config",
           "load_config", "BadSample", "Dataset", "ImageFolder", "MemoryDataset", "MeshFolder", "Sample",
           "TripletFolder", "build_datasets", "DataOrder", "save_loss_curve", "Plan", "Realiz3DRecipe",
           "RefAny3DRecipe", "make_recipe", "TrainResult", "evaluate_loss", "train"]
