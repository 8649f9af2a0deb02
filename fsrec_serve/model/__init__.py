"""The Hugging Face model: FsRecConfig + FsRecModel."""

from transformers import AutoConfig, AutoModel

from .configuration_fsrec import FsRecConfig
from .fingerprint import model_fingerprint
from .modeling_fsrec import MASK_VALUE, FsRecModel, FsRecOutput, pad_histories

AutoConfig.register("fsrec", FsRecConfig)
AutoModel.register(FsRecConfig, FsRecModel)

__all__ = ["FsRecConfig", "FsRecModel", "FsRecOutput", "MASK_VALUE", "pad_histories", "model_fingerprint"]
