"""Quantization-aware int8 training for Keras 3 models.

Post-training quantization needs no training and lives in the converter:
`kc.to_tflite(model, quantization="dynamic" | "float16" | "int8" | "int16x8")`.
"""

from keras_compress.quantization.attention import QuantizeMultiHeadAttention
from keras_compress.quantization.normalization import QuantizeLayerNormalization
from keras_compress.quantization.quantize import (
    QuantizeAnnotate,
    quantize_annotate_layer,
    quantize_apply,
    quantize_model,
)
from keras_compress.quantization.quantizers import ActivationQuantizer, fake_quant_weights
from keras_compress.quantization.sparsity import SparsityPreservingWrapper
from keras_compress.quantization.wrapper import QuantizeWrapper

__all__ = [
    "ActivationQuantizer",
    "QuantizeAnnotate",
    "QuantizeLayerNormalization",
    "QuantizeMultiHeadAttention",
    "QuantizeWrapper",
    "SparsityPreservingWrapper",
    "fake_quant_weights",
    "quantize_annotate_layer",
    "quantize_apply",
    "quantize_model",
]
