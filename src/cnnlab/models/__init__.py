"""Models: a registry of factories (``create``, ``list_models``) and the families that fill it."""

from cnnlab.models.registry import ModelInfo, create, get_model_info, list_models, register_model, sized_options
from cnnlab.models.summary import LayerStats, format_shape_table, format_summary, layer_stats

__all__ = ["ModelInfo", "create", "get_model_info", "list_models", "register_model", "sized_options",
           "LayerStats", "layer_stats", "format_shape_table", "format_summary"]
