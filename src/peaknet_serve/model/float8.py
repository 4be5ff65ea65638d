"""Float8 (e4m3) pointwise layers for the ConvNeXt V2 MLPs, rowwise-scaled.

Each block of the backbone has two ``nn.Linear`` layers (C -> 4C -> C) applied to every pixel of its
stage. :class:`Float8Linear` runs such a layer as one ``torch._scaled_mm`` on float8 operands:

* weights: quantised once, at conversion, to ``torch.float8_e4m3fn`` with one float32 scale per
  output channel (``amax over K / 448``, 448 being e4m3's largest finite value);
* activations: quantised inside ``forward`` with one scale per row (per pixel): ``amax`` over the
  feature dim, clamped away from zero, scaled into [-448, 448] and cast to e4m3;
* the product ``scale_a * scale_b * (a_fp8 @ w_fp8.T) + bias`` is accumulated by the GEMM and
  written in bfloat16 (the output type of PyTorch's rowwise-scaled kernels), then cast to the
  layer's output dtype.

Nothing in ``forward`` branches on tensor values, so under ``torch.compile`` Inductor can fuse the
quantisation (a row reduction and a pointwise cast) into the LayerNorm / GRN kernels that produce
the activations. Float8 GEMMs need compute capability 8.9 or newer (Ada, Hopper, Blackwell):
:func:`convert_pointwise_to_float8` refuses elsewhere, and on the CPU.

e4m3 keeps 3 mantissa bits: the relative rounding error of one operand is up to 2**-4, so a layer's
output deviates from the bfloat16 one by a few percent of its RMS. Whether the peak masks survive
that is a property of the trained weights and must be measured (``benchmarks.bench_model`` mode
``fast_fp8`` reports the agreement with float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "E4M3_MAX",
    "FLOAT8_MIN_CAPABILITY",
    "Float8Linear",
    "convert_pointwise_to_float8",
    "float8_unsupported_reason",
    "qualifying_pointwise_layers",
    "quantize_rowwise",
    "require_float8",
]

#: Largest finite ``torch.float8_e4m3fn`` value.
E4M3_MAX = 448.0
#: Smallest amax a scale is computed from (an all-zero row or channel gets a tiny, finite scale).
AMAX_EPS = 1e-12
#: float8 tensor cores: compute capability 8.9 (Ada) and newer.
FLOAT8_MIN_CAPABILITY = (8, 9)
#: ``torch._scaled_mm`` needs K and N (and the row stride of A) to be multiples of this.
GEMM_ALIGNMENT = 16
#: Output type of PyTorch's rowwise-scaled float8 GEMM (its bias must have it too).
GEMM_OUT_DTYPE = torch.bfloat16
#: ConvNeXt V2 MLP layers: the attribute names in :class:`~peaknet_serve.model.convnextv2.ConvNextV2Layer`.
POINTWISE_NAMES = ("pwconv1", "pwconv2")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def quantize_rowwise(x: torch.Tensor, max_value: float = E4M3_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise each row of ``x`` to float8 e4m3 with its own scale.

    Args:
        x: (R, K) float tensor (float32, bfloat16 or float16).
        max_value: the float8 type's largest finite value.

    Returns:
        ``(q, scale)``: q (R, K) ``torch.float8_e4m3fn``, scale (R, 1) float32 with
        ``x ~= q.float() * scale`` (``scale = max(amax(|row|), eps) / max_value``).
    """
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=AMAX_EPS) / max_value
    q = (x.float() / scale).clamp(-max_value, max_value).to(torch.float8_e4m3fn)
    return q, scale


class Float8Linear(nn.Module):
    """``nn.Linear`` with float8 e4m3 weights and dynamically quantised activations.

    ``forward``: (..., in_features) float32/bfloat16/float16 -> (..., out_features) in the input's
    dtype when that is bfloat16 or float16; a float32 input (LayerNorm's output under autocast)
    gives ``output_dtype``, the reduced dtype the layer was converted for, as ``nn.Linear`` under
    autocast would.

    Buffers (no parameters: the layer is for inference):
        weight: (N', K') ``torch.float8_e4m3fn``, the (N, K) weight zero-padded to multiples of 16.
        weight_scale: (1, N') float32, per output channel.
        bias: (N',) bfloat16 (zeros for a linear without bias).

    K is padded per call (a zero pad of the activations, fused into the quantisation when
    compiled) and N by slicing the output, only where the layer's own K or N is not a multiple of
    16; the ConvNeXt widths need neither.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        output_dtype: torch.dtype = torch.bfloat16,
        use_fast_accum: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if output_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"output_dtype must be bfloat16 or float16, got {output_dtype}")
        self.in_features = in_features
        self.out_features = out_features
        self.output_dtype = output_dtype
        self.use_fast_accum = use_fast_accum
        self.padded_in = _round_up(in_features, GEMM_ALIGNMENT)
        self.padded_out = _round_up(out_features, GEMM_ALIGNMENT)
        self.register_buffer(
            "weight", torch.zeros(self.padded_out, self.padded_in, dtype=torch.float8_e4m3fn, device=device)
        )
        self.register_buffer("weight_scale", torch.ones(1, self.padded_out, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(self.padded_out, dtype=GEMM_OUT_DTYPE, device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, use_fast_accum: bool = False) -> Float8Linear:
        """The float8 counterpart of ``linear`` (any float dtype, any device), on ``linear``'s device.

        The weight (N, K) is quantised per output channel: ``scale[n] = amax(|W[n, :]|) / 448``.
        ``output_dtype`` is the linear's dtype when that is bfloat16/float16, else bfloat16.
        """
        weight = linear.weight.detach()
        out_features, in_features = weight.shape
        output_dtype = weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        layer = cls(in_features, out_features, output_dtype, use_fast_accum, device=weight.device)
        padded = F.pad(weight.float(), (0, layer.padded_in - in_features, 0, layer.padded_out - out_features))
        q, scale = quantize_rowwise(padded)
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale.reshape(1, -1))
        if linear.bias is not None:
            layer.bias[:out_features].copy_(linear.bias.detach().to(GEMM_OUT_DTYPE))
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """(N, K) float32: the weight this layer multiplies by (for checks)."""
        weight = self.weight.float() * self.weight_scale.reshape(-1, 1)
        return weight[: self.out_features, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        if self.padded_in != self.in_features:
            rows = F.pad(rows, (0, self.padded_in - self.in_features))
        q, scale = quantize_rowwise(rows)
        out = torch._scaled_mm(
            q.contiguous(),
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=GEMM_OUT_DTYPE,
            use_fast_accum=self.use_fast_accum,
        )
        if self.padded_out != self.out_features:
            out = out[:, : self.out_features]
        dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else self.output_dtype
        return out.to(dtype).reshape(*leading, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, float8_e4m3fn rowwise, "
            f"output_dtype={self.output_dtype}, use_fast_accum={self.use_fast_accum}"
        )


def float8_unsupported_reason(device: torch.device | str) -> str | None:
    """Why float8 GEMMs cannot run on ``device``, or None when they can (CUDA, capability >= 8.9)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"float8 pointwise layers need a CUDA GPU; the model is on {device.type}"
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return f"this PyTorch ({torch.__version__}) has no float8 GEMM (torch._scaled_mm)"
    capability = torch.cuda.get_device_capability(device)
    if capability < FLOAT8_MIN_CAPABILITY:
        wanted = ".".join(map(str, FLOAT8_MIN_CAPABILITY))
        name = torch.cuda.get_device_name(device)
        return (
            f"float8 pointwise layers need compute capability >= {wanted} (Ada, Hopper or newer); "
            f"{name} has {capability[0]}.{capability[1]}"
        )
    return None


def require_float8(device: torch.device | str) -> None:
    """Raise RuntimeError (naming the cause) unless float8 GEMMs run on ``device``."""
    reason = float8_unsupported_reason(device)
    if reason is not None:
        raise RuntimeError(reason)


def _qualifies(linear: nn.Module, min_features: int) -> bool:
    return (
        type(linear) is nn.Linear
        and linear.in_features >= min_features
        and linear.out_features >= min_features
        and linear.in_features % GEMM_ALIGNMENT == 0
        and linear.out_features % GEMM_ALIGNMENT == 0
    )


def qualifying_pointwise_layers(model: nn.Module, min_features: int = 0) -> list[str]:
    """Qualified names of the ConvNeXt V2 MLP linears of ``model`` that
    :func:`convert_pointwise_to_float8` swaps: ``pwconv1``/``pwconv2`` of every
    :class:`~peaknet_serve.model.convnextv2.ConvNextV2Layer` that are plain ``nn.Linear`` with in
    and out features both ``>= min_features`` and multiples of 16 (padding those would cost a copy
    of the activations per call). Other linears of the model are not considered."""
    from peaknet_serve.model.convnextv2 import ConvNextV2Layer

    names = []
    for block_name, block in model.named_modules():
        if isinstance(block, ConvNextV2Layer):
            for attr in POINTWISE_NAMES:
                if _qualifies(getattr(block, attr), min_features):
                    names.append(f"{block_name}.{attr}" if block_name else attr)
    return names


def convert_pointwise_to_float8(model: nn.Module, min_features: int = 0, use_fast_accum: bool = False) -> int:
    """Replace the ConvNeXt V2 MLP linears of ``model`` (in place) by :class:`Float8Linear`.

    Call it last, after casting and moving the model: a later ``model.to(dtype)`` would cast the
    float8 weights as well.

    Args:
        model: a PeakNet (or any module holding ``ConvNextV2Layer`` blocks), on a CUDA device of
            compute capability >= 8.9, in its serving dtype.
        min_features: only layers with in and out features both at least this (see
            :func:`qualifying_pointwise_layers`).
        use_fast_accum: ``torch._scaled_mm``'s fast accumulation (Hopper: faster, less precise).

    Returns:
        The number of layers swapped.

    Raises:
        RuntimeError: the model is on the CPU or on a GPU without float8 GEMMs (nothing is changed).
    """
    first = next(iter(model.parameters()), None)
    require_float8(first.device if first is not None else torch.device("cpu"))
    names = qualifying_pointwise_layers(model, min_features)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Float8Linear.from_linear(getattr(parent, attr), use_fast_accum=use_fast_accum))
    return len(names)
