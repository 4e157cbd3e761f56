"""Accuracy of fl.quantize against the float32 module, beside PyTorch's own reduced precision.

S3 (B64 T100 in256 H512) with PyTorch's initialisation and N(0, 1) inputs: the max
|q(x) - m(x)| of fastlstm's bfloat16 and int8 LSTMs, of PyTorch's bfloat16 LSTM and of its
``quantize_dynamic`` int8 LSTM on the same weights; then fastlstm's error on multi-layer,
bidirectional and variable-length inputs, and the kernel path of each dtype.

    python bench/quantized_accuracy.py
"""
import warnings

import numpy as np
import torch

import fastlstm as fl
from fastlstm._kernels import quant


def torch_bfloat16(reference, x):
    model = torch.nn.LSTM(reference.input_size, reference.hidden_size,
                          reference.num_layers, bidirectional=reference.bidirectional)
    model.load_state_dict(reference.state_dict())
    with torch.no_grad():
        return model.to(torch.bfloat16)(torch.from_numpy(x).to(torch.bfloat16))[0].float().numpy()


def torch_int8(reference, x):
    class Container(torch.nn.Module):      # quantize_dynamic swaps children only
        def __init__(self):
            super().__init__()
            self.lstm = reference

        def forward(self, inputs):
            return self.lstm(inputs)[0]

    with warnings.catch_warnings():      # PyTorch's deprecation notices of its eager API
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(Container(), {torch.nn.LSTM},
                                                       torch.qint8)
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()


def main():
    print("kernel paths:", {dtype: quant.quantized_path(dtype) for dtype in quant.DTYPES})
    torch.manual_seed(0)
    reference = torch.nn.LSTM(256, 512)
    m = fl.LSTM.from_torch(reference).eval()
    x = np.random.default_rng(0).standard_normal((100, 64, 256)).astype(np.float32)
    exact = m(x)[0]
    print("S3 max |error| against the float32 module")
    print(f"  fastlstm bfloat16   {np.abs(fl.quantize(m, 'bfloat16')(x)[0] - exact).max():.2e}")
    print(f"  PyTorch bfloat16    {np.abs(torch_bfloat16(reference, x) - exact).max():.2e}")
    print(f"  fastlstm int8       {np.abs(fl.quantize(m, 'int8')(x)[0] - exact).max():.2e}")
    print(f"  PyTorch int8        {np.abs(torch_int8(reference, x) - exact).max():.2e}")

    rng = np.random.default_rng(1)
    cases = {"2 layers": dict(num_layers=2), "bidirectional": dict(bidirectional=True),
             "2 layers bidirectional, lengths": dict(num_layers=2, bidirectional=True)}
    print("fastlstm max |error|, in 128, H 256, T 50, B 16")
    for label, options in cases.items():
        torch.manual_seed(0)
        module = fl.LSTM.from_torch(torch.nn.LSTM(128, 256, **options)).eval()
        xs = rng.standard_normal((50, 16, 128)).astype(np.float32)
        lengths = rng.integers(1, 51, 16) if "lengths" in label else None
        exact = module(xs, lengths=lengths)[0]
        errors = [np.abs(fl.quantize(module, dtype)(xs, lengths=lengths)[0] - exact).max()
                  for dtype in ("bfloat16", "int8")]
        print(f"  {label:34s} bfloat16 {errors[0]:.2e}  int8 {errors[1]:.2e}")


if __name__ == "__main__":
    main()
