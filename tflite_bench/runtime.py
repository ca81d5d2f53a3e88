"""The two LiteRT runtimes `tflite_bench` measures, behind one small interface.

- `"interpreter"`: the classic `ai_edge_litert.interpreter.Interpreter`.
- `"compiled"`: LiteRT's newer `ai_edge_litert.compiled_model.CompiledModel`,
  on the CPU accelerator (XNNPACK, or the builtin kernels without it).

Each runner is built once, then `set_random_inputs()` once, `invoke()` many
times, and `predict(x)` for accuracy.
"""

import numpy as np

from tflite_bench.inspect import inspect_tflite
from tflite_bench.interpreter import load_interpreter, predict_tflite
from tflite_bench.interpreter import dequantize_io, quantize_io

RUNTIMES = ("interpreter", "compiled")


def check_runtime(api, runtime):
    if runtime not in RUNTIMES:
        raise ValueError(f"{api}: runtime must be one of {', '.join(map(repr, RUNTIMES))}; got {runtime!r}.")


def open_runner(content, runtime="interpreter", threads=1, use_xnnpack=True):
    """A runner of the flatbuffer `content` in the chosen LiteRT runtime."""
    check_runtime("open_runner", runtime)
    if runtime == "compiled":
        return CompiledRunner(content, threads, use_xnnpack)
    return InterpreterRunner(content, threads, use_xnnpack)


def random_input(dtype, shape, rng):
    """A random input of the tensor's shape and dtype, within its range."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.random(shape).astype(dtype)


class InterpreterRunner:
    """The classic `Interpreter`, allocated once."""

    runtime = "interpreter"

    def __init__(self, content, threads, use_xnnpack):
        self.content, self.threads = content, threads
        self.interpreter = load_interpreter(content, num_threads=threads, use_xnnpack=use_xnnpack)
        self.xnnpack = self.interpreter.uses_xnnpack

    def set_random_inputs(self, seed=0):
        rng = np.random.default_rng(seed)
        for detail in self.interpreter.get_input_details():
            self.interpreter.set_tensor(detail["index"], random_input(detail["dtype"], detail["shape"], rng))

    def invoke(self):
        self.interpreter.invoke()

    def predict(self, x):
        y = predict_tflite(self.content, x, num_threads=self.threads)
        if isinstance(y, list):
            raise ValueError(f"predict: accuracy needs a model with one output; this one has {len(y)}.")
        return y


class CompiledRunner:
    """LiteRT's `CompiledModel` on the CPU, with its input and output buffers
    created once (the signature's buffers, as its own benchmark does)."""

    runtime = "compiled"

    def __init__(self, content, threads, use_xnnpack):
        from ai_edge_litert.compiled_model import (
            CompiledModel,
            CpuKernelMode,
            CpuOptions,
            HardwareAccelerator,
            Options,
        )

        mode = CpuKernelMode.DELEGATE if use_xnnpack else CpuKernelMode.BUILTIN
        options = Options(HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads, kernel_mode=mode))
        try:
            self.model = CompiledModel.from_buffer(content, options=options)
        except RuntimeError as error:
            raise ValueError(f"LiteRT CompiledModel cannot compile this model: {error}") from error
        self.xnnpack = bool(use_xnnpack)
        signature = next(iter(self.model.get_signature_list()))
        self.input_details = list(self.model.get_input_tensor_details(signature).values())
        self.output_details = list(self.model.get_output_tensor_details(signature).values())
        self.inputs = self.model.create_input_buffers(0)
        self.outputs = self.model.create_output_buffers(0)
        # The signature details carry no quantization: take it from the flatbuffer.
        info = inspect_tflite(content)
        self.quantization = {t.name: (t.scale or 0.0, t.zero_point or 0) for t in info.inputs + info.outputs}

    def set_random_inputs(self, seed=0):
        rng = np.random.default_rng(seed)
        for detail, buffer in zip(self.input_details, self.inputs):
            buffer.write(random_input(detail["dtype"], detail["shape"], rng))

    def invoke(self):
        self.model.run_by_index(0, self.inputs, self.outputs)

    def predict(self, x):
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise ValueError("predict: the compiled runtime measures accuracy of models with one input "
                             f"and one output; this one has {len(self.inputs)} and {len(self.outputs)}.")
        (into,), (out,) = self.input_details, self.output_details
        batch, size = int(into["shape"][0]), int(np.prod(out["shape"]))
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(into["shape"][1:]):
            raise ValueError(f"predict: x has shape {x.shape}, but the model's input '{into['name']}' "
                             f"expects (batch, {', '.join(map(str, into['shape'][1:]))}).")
        results = []
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            if len(chunk) < batch:  # the last partial batch
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
            self.inputs[0].write(quantize_io(chunk, *self.quantization[into["name"]], into["dtype"]))
            self.invoke()
            y = self.outputs[0].read(size, np.dtype(out["dtype"])).reshape(out["shape"])
            results.append(dequantize_io(y, *self.quantization[out["name"]]))
        return np.concatenate(results)[: len(x)]
