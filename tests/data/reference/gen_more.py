"""Reference values of five more hgq2 layers -- QEinsumDense, QBatchNormDense, QEinsumDenseBatchnorm,
QUnaryFunctionLUT (Keras activations by name) and QSoftmax (with its inner exp / inverse tables) --
in small Keras functional models, for hgq-torch's tests, in exactly gen_graph.py's format (the Rust
code that reads graph.json reads this file too): the forward pass, the EBOPs, the loss terms, the
gradients of a training step (the inputs' too), WRAP integer-bit tracking, the moving statistics,
trace_minmax and inference, to be compared bit for bit.

Usage: KERAS_BACKEND=torch .venv/bin/python tests/data/reference/gen_more.py tests/data/reference/more.json [--seed N]
Needs: what gen_graph.py needs (hgq2 0.2.0, quantizers 1.2.2, keras 3.15.1, torch 2.11); its helpers
(fl, npy, state, path, xs, inbound, bits_of, layer_ebops, describe for QDense) are imported from
gen_graph.py in this folder with importlib. Prints per case, to stderr, how many quantized elements
came out rounded and overflowed (WRAP / SAT / SAT_SYM) per call, and the tied softmax maxima.

Cases (see `cases()`; batch 3 unless said), about 1.0 MB with seed 0 (each model_json 8-37 KB):
  more/einsum-dense        Input(4,6) -> QEinsumDense('abc,cd->abd', (4,5), bias_axes='d', relu)
                           -> QEinsumDense('abc,cde->abde', (4,3,2), bias_axes='de')   (bias on two axes)
                           -> QEinsumDense('abcd,bcde->ae', 3)   (no bias; contracts three axes) -> QDense(2)
  more/einsum-ellipsis     Input(3,4) -> QEinsumDense('...c,cd->...d', 5, bias_axes='d', relu,
                           parallelization_factor=1: EBOPs * 1/3) -> QEinsumDense('abc,bd->adc', (2,5),
                           bias_axes='c')   (contracts a middle axis) -> Flatten -> QDense(3)
  more/batchnorm-dense     Input(10) -> QBatchNormDense(8, relu, momentum=0.9) -> QBatchNormDense(5,
                           scale=False, epsilon=0.01) -> QDense(3)   (batch 4)
  more/batchnorm-dense-3d  Input(3,5) -> QBatchNormDense(4, momentum=0.8) (moments over batch and axis 1)
                           -> Flatten -> QDense(3)   (batch 4)
  more/einsum-batchnorm    Input(4,6) -> QEinsumDenseBatchnorm('abc,cd->abd', (4,5), bias_axes='d', relu)
                           -> QEinsumDenseBatchnorm('abc,cde->abde', (4,3,2), bias_axes='de') -> Flatten
                           -> QDense(3)   (batch 4; BN settings at their defaults: see the quirks)
  more/lut                 Input(6) -> QDense(5) -> LUT('tanh') -> QDense(4) -> LUT('sigmoid') -> QDense(3)
                           (LUT = QUnaryFunctionLUT)
  more/lut-activations     Input(6) -> QDense(5) -> LUT('softplus') -> QDense(5) -> LUT('silu', enable_iq=False)
                           -> QDense(5) -> LUT('gelu', allow_heterogeneous_input=False) -> QDense(4)
                           -> LUT('exponential', allow_heterogeneous_table=False) -> QDense(3)
  more/lut-piecewise       Input(6) -> QDense(5) -> LUT('elu') -> LUT('softsign') -> QDense(5)
                           -> LUT('hard_sigmoid', oq_conf=QuantizerConfig('kbi', 'table', heterogeneous_axis=None,
                           homogeneous_axis=(0,)): a per-element table) -> QDense(5) -> LUT('selu')
                           -> LUT('hard_silu') -> QDense(4) -> LUT('log_sigmoid') -> LUT('mish') -> QDense(3)
  more/softmax             Input(6) -> QDense(5) -> QSoftmax()   (defaults: stable, no iq; the model's output)
  more/softmax-variants    Input(6) -> QDense(5) -> QSoftmax(stable=False, input_scaler=0.75) -> QDense(4)
                           -> QSoftmax(enable_iq=True) -> QDense(3)
  more/softmax-3d          Input(2,4) -> e = QEinsumDense('abc,cd->abd', (2,3), bias_axes='d');
                           QSoftmax(axis=-1)(e) = output 1; QSoftmax(axis=1, allow_heterogeneous_table=True,
                           input_scaler=1.5)(e) -> Flatten -> QDense(2) = output 2; QSoftmax(axis=(1, 2),
                           enable_iq=True)(e) -> Flatten -> QDense(2) = output 3   (batch 2). model.layers
                           order: q_einsum_dense, q_softmax_1, q_softmax_2, flatten, flatten_1, q_softmax,
                           q_dense, q_dense_1 (the output softmax, made first, comes late; see gen_graph.py)
  more/softmax-ties        Input(5) -> QSoftmax(enable_iq=True, name='coarse_softmax') -> QDense(2), the iq
                           with f = -1 (a step of 2): tied maxima in training (2-3 rows with seeds 0, 1, 2)
  more/frozen              Input(6) -> QDense(5, relu, trainable=False) -> QBatchNormDense(4, momentum=0.9,
                           trainable=False) -> LUT('tanh', trainable=False) -> QBatchNormalization(momentum=0.8,
                           trainable=False; batch moments still) -> QDense(3)   (batch 3): the frozen
                           layers' own weights get no gradient; their quantizers train and trace as usual; the
                           frozen QBatchNormDense normalizes with its moving statistics in training
Every case builds and runs; none was dropped (QSoftmax on axis 1, on (1, 2) and on -1 of a 3-D input all
work; an equation 'a...c,cd->a...d' is refused by Keras: '...' must lead or trail).

Format: gen_graph.py's (read its docstring), with these additions:
  meta          also cpu_capability (torch.backends.cpu.get_cpu_capability(): AVX512 here)
  layers        the new kinds (the hgq2 ones also carry enable_iq, enable_oq, beta0, output_shape):
                  QEinsumDense: equation, output_shape_arg (the layer's partial output shape, as given;
                    output_shape is the full one without batch), bias_axes (null: no bias), activation,
                    kernel_shape, bias_shape (null: no bias), parallelization_factor (resolved: hgq2 sets
                    it to n_parallel when not given, and writes that into the JSON), n_parallel
                  QEinsumDenseBatchnorm: those, and normalize_axes, reduction_axes (output axes, batch
                    included, not in normalize_axes), norm_shape, norm_offset_cast_shape, fused_kernel_equation,
                    momentum, epsilon (the layer's, NOT used), epsilon_used (1e-7), center, scale
                  QBatchNormDense: units, activation, use_bias, momentum, epsilon, scale, reduction_axes
                    (every axis but the last, batch included), parallelization_factor, n_parallel
                  QUnaryFunctionLUT: activation (its Keras name), allow_heterogeneous_input,
                    allow_heterogeneous_table
                  QSoftmax: axes (as built: sorted, non-negative, the batch axis counted, so -1 of a (B, 2, 3)
                    input is [2]; the JSON's `axes` holds the same), stable, input_scaler,
                    allow_heterogeneous_table, parallelization_factor (-1: all), enable_ebops (True: QSoftmax
                    takes it from the global config, not from enable_iq)
                  Flatten: kind, name, inbound, output_shape only
  calls.ebops   per layer; a QSoftmax's is `layer.ebops` = its own + its exp table's + its inverse table's,
                each already cast to uint32 (what trace_minmax sums); null for Flatten and for a
                QUnaryFunctionLUT without iq (no EBOPs, no beta / ebops variables)
  calls.bn      in the cases with QBatchNormDense / QEinsumDenseBatchnorm: {layer: {mean, var (the batch
                moments, training only), scaler (gamma / sqrt(var + eps), flat), sqrt_inexact (where torch's
                float32 sqrt(var + eps) is not correctly rounded, see gen_graph.py)}}, for debugging
Every model is also rebuilt with keras.models.model_from_json(model_json) (`check_json_roundtrip`):
the same described settings, the same variables (paths up to the global quantizer numbers), and, given
the state after tracing, the same inference outputs.

Variable paths (model name stripped). Quantizers as in gen_graph.py: <layer>/<layer>_iq|_kq|_bq|_oq/
fixed_point_quantizer_kif|kbi_N/{...}, N a global counter (canonicalize it away); KIF datalane
{f (trainable), k, i, i_decay_speed}, KBI {b (trainable), i (trainable unless WRAP), k[, i_decay_speed
when WRAP]}. Per new layer (sample from seed 0):
  QEinsumDense 'abc,cd->abd' on (B,4,6), bias 'd':       kernel (6,5), bias (5,), beta, ebops,
      q_einsum_dense_iq/.../f (1,4,6)  q_einsum_dense_kq/.../b,i,k (6,5)  q_einsum_dense_bq/.../b,k,i (5,)
      kernel shape: the equation's kernel axes; bias: the bias axes as they sit in the output
      ('abc,cde->abde', 'de': kernel (5,3,2), bias (3,2); 'abc,bd->adc', 'c': kernel (3,2), bias (5,));
      no bias, no bq: q_einsum_dense_2/kernel (4,3,2,3) and iq (1,4,3,2), kq (4,3,2,3) only
  QBatchNormDense(8) on (B,10): kernel (10,8), bias (8,), bn_gamma (10,) (absent with scale=False),
      moving_mean (10,), moving_variance (10,) (the INPUT's features, not the units), beta, ebops,
      q_batch_norm_dense_iq/.../f (1,10), _kq/.../b,i,k (10,8), _bq/.../b,k,i (8,)
  QEinsumDenseBatchnorm 'abc,cde->abde', 'de': kernel (5,3,2), bias (3,2) (trainable = center),
      gamma (3,2) (named `gamma`, not bn_gamma), moving_mean (3,2), moving_variance (3,2), beta, ebops,
      iq (1,4,5), kq (5,3,2), bq (3,2)
  QUnaryFunctionLUT on (B,5): beta, ebops, q_unary_function_lut_oq/fixed_point_quantizer_kbi_N/{b,i,k} (1,1),
      q_unary_function_lut_iq/fixed_point_quantizer_kif_N/{f,k,i,i_decay_speed} (1,5); allow_heterogeneous_input
      =False: iq (1,1); enable_iq=False: the oq only, no beta/ebops; the per-element oq_conf: oq (1,5)
  QSoftmax on (B,4) with enable_iq (q_softmax_1 of softmax-variants), in model.variables order:
      q_softmax_1/beta, q_softmax_1/ebops, q_softmax_1/q_softmax_1_iq/fixed_point_quantizer_kif_3/{f,k,i,
      i_decay_speed} (1,4),
      q_softmax_1/q_softmax_1_inv_table/{beta, ebops},
      q_softmax_1/q_softmax_1_inv_table/q_softmax_1_inv_table_oq/fixed_point_quantizer_kbi_6/{b,i,k} (1,1),
      q_softmax_1/q_softmax_1_inv_table/q_softmax_1_inv_table_iq/fixed_point_quantizer_kif_4/{f,k,i,
      i_decay_speed} (1,1),
      q_softmax_1/q_softmax_1_exp_table/{beta, ebops},
      q_softmax_1/q_softmax_1_exp_table/q_softmax_1_exp_table_oq/fixed_point_quantizer_kbi_7/{b,i,k} (1,1),
      q_softmax_1/q_softmax_1_exp_table/q_softmax_1_exp_table_iq/fixed_point_quantizer_kif_5/{f,k,i,
      i_decay_speed} (1,1)
    (inv_table before exp_table: made first in __init__; each table's oq before its iq). Without
    enable_iq (the default) no q_softmax_iq; stable=False: the exp table has no iq and no beta/ebops.
    Shapes: everything (1,)*rank per tensor, except with allow_heterogeneous_table=True the two table
    iqs are per element: exp iq (1,*S) on the input shape S, inv iq (1,*S) with the softmax axes set to 1
    (q_softmax_1 of softmax-3d, axis 1 of (B,2,3): exp iq (1,2,3), inv iq (1,1,3)); the table oqs stay
    per tensor. The table oqs' k is 0 (k0 forced to 0).

assign_varied: gen_graph.py's ranges (kernel 0.7 N, bias 0.4 N, gamma/bn_gamma 1 + 0.3 N, moving_mean
0.5 N, moving_variance U(0.5, 2), b 2..7, kq i -1..2, other i 0..3, f 1..5, each +-0.45), except the
tables' quantizers (see `assign_varied`): LUT iq f 5..9, LUT oq b 3..8 / i 0..2, softmax table oqs
b 3..8 / i 0..1, coarse_softmax's iq f -1. Rounding, WRAP (inference) and SAT / SAT_SYM happen in
every case (the stderr counts).

hgq2 0.2.0 / Keras 3 (torch backend) behaviour these values hold (`Checker` asserts each numerically
after every call, recomputing with the torch ops named here from what the quantizers saw):
- Training flag: a quantizer or inner table called without `training` inherits the outer call's
  (Keras's call context): kq/bq/iq/oq and the softmax tables get True in training, the
  TrainingFlagWrapper('tracing') in trace_minmax, False in inference (checked on every quantizer).
  So every WRAP quantizer (iq, bq, table iqs) tracks its integer bits in training and tracing.
- QEinsumDense: y = act(torch.einsum(equation, iq(x), kq(kernel)) + bq(bias)) (the bias broadcast as
  Keras shapes it; kq is called before iq; use torch's einsum with the same equation string, '...'
  included, for the same reduction order).
- QBatchNormDense (S = input shape, C = S[-1], R = every axis but the last):
    qx = iq(x); training: mean = torch.mean(qx, R), var = torch.mean(qx^2, R) - mean^2 (keras.ops.moments,
    biased); moving_* <- moving_* * momentum + batch * (1.0 - momentum) (float32, as QBatchNormalization
    in gen_graph.py); otherwise (inference, tracing) mean/var = the moving ones, not updated.
    scaler = bn_gamma / torch.sqrt(var + epsilon)   (scale=False: `1 / sqrt(...)`, which torch computes as
             sqrt(...).reciprocal() * 1: the same value as 1/x, but the reciprocal's backward)
    qkernel = kq(scaler[:, None] * kernel)          (row c of the kernel scaled: the INPUT is normalized)
    qbias   = bq(bias + -(torch.matmul(mean, kernel)))   (keras.ops.dot(mean, kernel): 1-D @ 2-D)
    y = act(torch.matmul(qx, qkernel) + qbias)
  QUIRK (kept): the offset is -mean @ kernel, without the scaler; a batch normalization before a dense
  layer would give -(mean * scaler) @ kernel. The bias plays BN's beta (no bn_beta). The gradient flows
  through the batch moments (nothing stopped), into qx and, via mean @ kernel, into the raw kernel.
- QEinsumDenseBatchnorm (normalize_axes defaults to bias_axes; N = norm_shape):
    qx = iq(x); training: z = torch.einsum(equation, qx, kernel) with the RAW (unquantized) kernel,
    mean, var = moments of z over reduction_axes (as above), moving update as above; else the moving ones.
    scaler = gamma / torch.sqrt(var + 1e-7)          QUIRK: keras' epsilon(), the layer's epsilon unused
    qkernel = kq(torch.einsum(fused_kernel_equation, kernel, scaler))   ('cd,d->cd': kernel * scaler)
    qbias = bq(bias + torch.reshape(-mean * scaler, norm_offset_cast_shape))   (here the offset is scaled)
    y = act(torch.einsum(equation, qx, qkernel) + qbias)
  The moments of z come from unquantized products (not exact): use the same torch ops (einsum with the
  same equation, torch.mean) for the same bits.
- QUnaryFunctionLUT: y = oq(act(iq(x))) (iq skipped with enable_iq=False); iq: default datalane KIF
  (per element, (1,*S); allow_heterogeneous_input=False: per tensor); oq: default 'table' KBI (RND,
  SAT_SYM, k0 1, b in [0, 23], MonoL1(1e-8) on b, i trainable, per tensor (1,)*rank).
  allow_heterogeneous_table=False only matters with a per-element oq_conf (it forces it per tensor); the
  default table oq is per tensor either way, so with it the layer is the same as without.
- QSoftmax (q = iq(x) if enable_iq else x; axes as built; s = input_scaler, a Python float):
    stable:   e_in = torch.amax(q, dim=axes, keepdim=True) - q   (>= 0)
              e = exp_oq(torch.exp(-exp_iq(e_in) * s))           (torch: neg, then mul by s as float32)
    unstable: e = exp_oq(torch.exp(q * s))                       (the exp table has no iq)
    sums = torch.sum(e, dim=axes, keepdim=True)                  (exact here: checked)
    inv = inv_oq((inv_iq(sums) + 1e-7).reciprocal() * 1.0)       (hgq2's `1.0 / (x + epsilon())`: torch's
              Tensor.__rtruediv__ is reciprocal() * other, so the backward is ReciprocalBackward's
              -g * r^2, not a division's; 1e-7 is added as float32)
    y = e * inv   (broadcast; exact here: checked)
  The tables are QUnaryFunctionLUT layers q_softmax_exp_table / q_softmax_inv_table called with the
  outer training flag; their oqs are KBI SAT with RND_CONV and k = 0 (forced by QSoftmax whatever the
  config), their iqs the default datalane KIF (WRAP, tracked), per tensor unless allow_heterogeneous_table.
  torch.amax's backward splits the gradient evenly among tied maxima (checked: [1, 1, 0] -> [.5, .5, 0]);
  more/softmax-ties has tied rows. enable_iq defaults to False for QSoftmax.
- Activations (keras.activations.get(name) on the torch backend; checked bit for bit on [-9, 9] against
  the call in ACT_TORCH, recorded with a TorchFunctionMode):
    tanh -> torch.tanh; sigmoid -> torch.sigmoid (tnn.sigmoid); softplus -> F.softplus (beta 1, threshold
    20); silu (alias swish) -> F.silu; gelu -> F.gelu(x) with approximate='none' (the erf form: keras'
    gelu activation defaults to approximate=False); exponential -> torch.exp; hard_sigmoid -> F.hardsigmoid
    (= clamp(x + 3, 0, 6) / 6, a division, not * (1/6)); hard_silu (alias hard_swish) -> F.hardswish
    (= x * clamp(x + 3, 0, 6) / 6, left to right); elu -> F.elu(x, alpha=1.0); selu -> F.selu; softsign ->
    F.softsign, which is Python: x / (x.abs() + 1) (three ATen ops, backward through them); log_sigmoid ->
    F.logsigmoid; mish -> keras' composite x * torch.tanh(F.softplus(x)) (three ops), NOT torch's fused
    F.mish (they differ in the last bit for ~0.15% of inputs); relu6 -> F.relu6; hard_tanh ->
    F.hardtanh(x, -1, 1); relu -> F.relu; linear -> identity. Not used (not plain elementwise or with
    parameters): softmax / log_softmax (refused by QUnaryFunctionLUT), glu, sparsemax, leaky_relu,
    celu, threshold, ...
  libtorch's elementwise CPU kernels run their vectorized (Sleef) loop over chunks of 2 x the vector
  width (16 floats with AVX2, 32 with AVX512) and the scalar loop over the rest, and the two disagree in
  the last bit for sigmoid, softplus, silu, gelu, elu, selu (checked on random inputs). So the bits of an
  activation depend on the tensor's size and on the CPU. Every tensor an activation or the softmax's exp
  sees here has at most 15 elements (MAX_ACT_NUMEL, asserted): only the scalar loop runs, and AVX2 and
  AVX512 give the same bits (ATEN_CPU_CAPABILITY=default differs for log_sigmoid). Apply the activation
  to the whole tensor hgq2 applies it to, with the same libtorch.
- EBOPs, with bits_q(shape) = the quantizer's bits broadcast to shape (KIF WRAP: round(i) + round(f);
  KBI SAT_SYM / WRAP: round(b); KBI SAT: round(b) + k, k = 0 for the softmax tables), S1 = (1, *input
  shape), all float32, then * ebops_factor (1), cast to uint32 (truncation) into `ebops`; the loss term
  is beta * the float32 value before the cast:
    QEinsumDense, QEinsumDenseBatchnorm: torch.einsum(equation's inputs + '->', bits_iq(S1), bits_kq(kernel
      shape)) (every product summed, the '...' dims too) [+ mean(bits_bq) * prod(output shape without
      batch)], then * parallelization_factor / n_parallel, where n_parallel = the product of the input
      axes (batch excluded) that are not in the kernel but in the output, or under '...'
    QDense, QBatchNormDense: sum(matmul(bits_iq(S1), bits_kq)) [+ mean(bits_bq) * prod(S1[:-1]) * units],
      then * parallelization_factor / n_parallel (n_parallel = prod(S[:-1]))
    QUnaryFunctionLUT: sum(2^bits_iq(S1) * bits_oq(S1)) * 1e-4 (float32 1e-4): small, 0..11 here
    QSoftmax, own term, with A = S1 with the axes set to 1, E = bits_exp_oq(S1), V = bits_inv_oq(A):
      (stable: sum(bits_iq(S1)) if enable_iq else sum(bits_exp_iq(S1)))   the subtraction
      + sum(E) - sum(min(E over axes))                                    the accumulation
      + sum(E * V)                                                        the multiplication
      (unstable: + sum(2^bits_iq(S1) * E) * 1e-4, 2^0 = 1 without iq: the exp table's cost, as that
      table has no iq and no EBOPs of its own), times parallelization_factor / prod(A) (1 by default).
      Its exp table (stable only) and inverse table have their own LUT EBOPs on S1 and A.
  layer.ebops of a QSoftmax is round(own uint32 + exp table's uint32 + inverse table's uint32), a Python
  int; model.layers holds only the QSoftmax, so trace_minmax's total counts the tables once, through it.
- model.losses (training) = beta * EBOPs per layer with EBOPs in model.layers order, a QSoftmax's as
  three terms: its own, then its exp table's (stable only), then its inverse table's, each ONCE (no
  doubling as QAveragePow2's: QSoftmax, QUnaryFunctionLUT, QBatchNormDense, QEinsumDense and
  QEinsumDenseBatchnorm each define their own `call`, wrapped once); each table has its own beta
  variable (beta0 cloned from the softmax's); then the MonoL1(1e-8) regularizers of the trainable
  variables in model.variables order (for a QSoftmax: its iq f, inv oq b, inv iq f, exp oq b, exp iq f;
  a LUT: oq b, then iq f). Checked exactly against the recomputed float32 EBOPs.

Other hgq2 quirks found (kept as they are, not used where they would break):
- QEinsumDenseBatchnorm has no get_config of its own: momentum, epsilon, center, scale and
  normalize_axes are not in the JSON, so a model rebuilt from JSON has the defaults (momentum 0.99,
  scale and center True, normalize_axes = bias_axes); the case uses only those. Its gamma is named
  `gamma` (QBatchNormDense's and QBatchNormalization's `bn_gamma`).
- QUnaryFunctionLUT(enable_oq=False) keeps EBOPs on (QLayerBase resets the _enable_ebops = False it sets)
  and then fails in training for want of an oq; not used.
- torch's float32 sqrt is not correctly rounded for some inputs (gen_graph.py): both BN layers'
  scaler may differ by an ulp from a correctly rounded sqrt (`sqrt_inexact`).
- hls4ml 1.3 (jax backend, Vivado with {'Model': {'Precision': 'fixed<1,0>', 'ReuseFactor': 1}} or
  Vitis with bit_exact=True, io_parallel; models rebuilt from model_json with the state after tracing,
  compared on the cases' rows): einsum-dense, einsum-ellipsis, batchnorm-dense(-3d), einsum-batchnorm,
  softmax, softmax-variants and softmax-ties convert, compile and equal Keras' inference bit for bit.
  It refuses QUnaryFunctionLUT with allow_heterogeneous_table=True, that layer's DEFAULT ("Heterogeneous
  table is not supported"; so lut, lut-activations, lut-piecewise), QSoftmax with
  allow_heterogeneous_table=True (softmax-3d) and a LUT without iq. With every table made per tensor
  (JSON patched): lut, softmax-3d (axes -1, 1 and (1, 2)) match; lut-piecewise converts but differs on
  every row: a LUT fed directly by another LUT (elu -> softsign alone: every row, up to 1.09) is wrong
  in hls4ml, each of its activations alone matches.
"""
import argparse
import importlib.util
import json
import os
import re
import sys
from math import prod

os.environ['KERAS_BACKEND'] = 'torch'
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import keras  # noqa: E402
import hgq  # noqa: E402,F401
from hgq.layers import (  # noqa: E402
    QBatchNormalization, QBatchNormDense, QDense, QEinsumDense, QEinsumDenseBatchnorm, QSoftmax,
    QUnaryFunctionLUT,
)
from hgq.quantizer import Quantizer, QuantizerConfig  # noqa: E402
from hgq.utils import trace_minmax  # noqa: E402


def _load_gen_graph():
    """gen_graph.py's helpers (fl, npy, path, state, xs, f32, bits_of, inbound, ...), from this folder."""
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location('gen_graph', os.path.join(here, 'gen_graph.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gg = _load_gen_graph()
fl, npy, f32, state, path, xs, as_list, inbound, qlayers, bits_of = (
    gg.fl, gg.npy, gg.f32, gg.state, gg.path, gg.xs, gg.as_list, gg.inbound, gg.qlayers, gg.bits_of)

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): QSoftmax's inverse table and QEinsumDenseBatchnorm's sqrt

# The torch call each Keras activation (keras.activations.get(name)) makes on the torch backend
# (keras/src/backend/torch/nn.py and numpy.py; checked with a TorchFunctionMode in `check_activations`).
ACT_TORCH = {
    'linear': lambda x: x,
    'relu': F.relu,
    'tanh': torch.tanh,
    'sigmoid': torch.sigmoid,
    'softplus': F.softplus,                       # beta 1, threshold 20
    'silu': F.silu,
    'gelu': F.gelu,                               # approximate='none' (erf): keras' gelu default approximate=False
    'exponential': torch.exp,
    'hard_sigmoid': F.hardsigmoid,
    'hard_silu': F.hardswish,
    'elu': lambda x: F.elu(x, alpha=1.0),
    'selu': F.selu,
    'softsign': F.softsign,                       # python: x / (x.abs() + 1)
    'log_sigmoid': F.logsigmoid,
    'mish': lambda x: x * torch.tanh(F.softplus(x)),  # keras' composite, NOT F.mish
    'relu6': F.relu6,
    'hard_tanh': lambda x: F.hardtanh(x, -1.0, 1.0),
}


# libtorch's elementwise CPU kernels run the vectorized (Sleef) loop over chunks of 2 x the vector
# width (16 floats with AVX2, 32 with AVX512) and the scalar loop over the rest; the two can differ
# in the last bit (sigmoid, softplus, silu, gelu, elu, selu here). Every tensor an activation or the
# softmax's exp sees here has at most 15 elements: the scalar loop only, the same bits with AVX2 and
# AVX512 (ATEN_CPU_CAPABILITY=default differs for log_sigmoid).
MAX_ACT_NUMEL = 15


def act_name(fn):
    return fn.__name__ if fn is not None else 'linear'


# ----------------------------------------------------------------------------------------------
# Varied values.

def quantizer_roles(model):
    """Role of each Quantizer layer (by name): the tables' quantizers get values that keep them sane."""
    roles = {}
    for l_ in qlayers(model):
        if isinstance(l_, QUnaryFunctionLUT):
            if l_.enable_iq:
                roles[l_.iq.name] = 'lut_iq'
            roles[l_.oq.name] = 'lut_oq'
        elif isinstance(l_, QSoftmax):
            if l_.enable_iq and l_.name.startswith('coarse'):
                roles[l_.iq.name] = 'coarse_iq'
            for t, tag in ((l_.exp_table, 'exp'), (l_.inv_table, 'inv')):
                if t.enable_iq:
                    roles[t.iq.name] = f'{tag}_iq'
                roles[t.oq.name] = f'{tag}_oq'
    return roles


def assign_varied(model, rng):
    """gen_graph.py's assign_varied, plus QEinsumDenseBatchnorm's `gamma` and the tables' quantizers:
      LUT iq (KIF WRAP):          f in 5..9 (+-0.45; EBOPs sum 2^bits, so a few LUTs get nonzero EBOPs),
                                  i as any datalane i (tracked in training anyway)
      LUT oq (KBI SAT_SYM):       b in 3..8, i in 0..2 (tanh / sigmoid outputs saturate at 1 - 2^-f)
      QSoftmax exp/inv oq (KBI SAT, RND_CONV, k = 0): b in 3..8, i in 0..1 (i = 0: exp(0) = 1 and
                                  1/sum saturate to 1 - 2^-b)
      QSoftmax exp/inv iq: as any datalane quantizer (gen_graph's ranges).
      coarse_softmax's iq (a QSoftmax named coarse*): f = -1 (+-0.45), a step of 2, for tied maxima."""
    roles = quantizer_roles(model)

    def u(lo, hi, shape):  # integers lo..hi-1 plus a fraction in [-0.45, 0.45]
        return (rng.integers(lo, hi, shape) + rng.uniform(-0.45, 0.45, shape)).astype(np.float32)

    for v in model.variables:
        parts = v.path.split('/')
        name = parts[-1]
        role = roles.get(parts[-3]) if len(parts) >= 3 else None
        shape = tuple(v.shape)
        if name == 'kernel':
            v.assign((rng.normal(size=shape) * 0.7).astype(np.float32))
        elif name == 'bias':
            v.assign((rng.normal(size=shape) * 0.4).astype(np.float32))
        elif name in ('bn_gamma', 'gamma'):
            v.assign((1.0 + rng.normal(size=shape) * 0.3).astype(np.float32))
        elif name == 'moving_mean':
            v.assign((rng.normal(size=shape) * 0.5).astype(np.float32))
        elif name == 'moving_variance':
            v.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif role in ('lut_oq', 'exp_oq', 'inv_oq') and name == 'b':
            v.assign(u(3, 9, shape))
        elif role == 'lut_oq' and name == 'i':
            v.assign(u(0, 3, shape))
        elif role in ('exp_oq', 'inv_oq') and name == 'i':
            v.assign(u(0, 2, shape))
        elif role == 'coarse_iq' and name == 'f':
            v.assign(u(-1, 0, shape))
        elif role == 'lut_iq' and name == 'f':
            v.assign(u(5, 10, shape))
        elif name == 'b':
            v.assign(u(2, 8, shape))
        elif name == 'i' and 'kq' in v.path:
            v.assign(u(-1, 3, shape))
        elif name == 'i':
            v.assign(u(0, 4, shape))
        elif name == 'f':
            v.assign(u(1, 6, shape))


# ----------------------------------------------------------------------------------------------
# Description of the layers.

def describe(layer):
    kind = type(layer).__name__
    if kind in ('QDense', 'QConv2D', 'QBatchNormalization') or kind in gg.MERGES:
        return gg.describe(layer)
    d = dict(kind=kind, name=layer.name, inbound=inbound(layer))
    if kind in ('QEinsumDense', 'QEinsumDenseBatchnorm'):
        d.update(equation=layer.equation, output_shape_arg=[int(s) for s in layer.partial_output_shape],
                 bias_axes=layer.bias_axes, activation=act_name(layer.activation),
                 kernel_shape=[int(s) for s in layer._kernel.shape],
                 bias_shape=None if layer.bias is None else [int(s) for s in layer.bias.shape],
                 parallelization_factor=int(layer.parallelization_factor), n_parallel=int(layer.n_parallel))
        if kind == 'QEinsumDenseBatchnorm':
            d.update(normalize_axes=layer.normalize_axes, reduction_axes=[int(a) for a in layer._reduction_axes],
                     norm_shape=[int(s) for s in layer.moving_mean.shape],
                     norm_offset_cast_shape=[int(s) for s in layer._norm_offset_cast_shape],
                     fused_kernel_equation=layer.fused_kernel_equation, momentum=float(layer.momentum),
                     epsilon=float(layer.epsilon), epsilon_used=KERAS_EPSILON, center=bool(layer.center),
                     scale=bool(layer.scale))
    elif kind == 'QBatchNormDense':
        d.update(units=int(layer.units), activation=act_name(layer.activation), use_bias=bool(layer.use_bias),
                 momentum=float(layer.momentum), epsilon=float(layer.epsilon), scale=bool(layer.scale),
                 reduction_axes=[int(a) for a in layer.reduction_axis],
                 parallelization_factor=int(layer.parallelization_factor), n_parallel=int(layer.n_parallel))
    elif kind == 'QUnaryFunctionLUT':
        d.update(activation=act_name(layer.activation),
                 allow_heterogeneous_input=bool(layer._allow_heterogeneous_input),
                 allow_heterogeneous_table=bool(layer._allow_heterogeneous_table))
    elif kind == 'QSoftmax':
        d.update(axes=[int(a) for a in layer.axes], stable=bool(layer.stable), input_scaler=float(layer.input_scaler),
                 allow_heterogeneous_table=bool(layer._allow_heterogeneous_table),
                 parallelization_factor=int(layer.parallelization_factor), enable_ebops=bool(layer.enable_ebops))
    elif kind == 'Flatten':
        pass
    else:
        raise ValueError(f'no description for {kind}')
    if hasattr(layer, 'enable_ebops'):
        d['enable_iq'], d['enable_oq'] = bool(layer.enable_iq), bool(layer.enable_oq)
        if kind != 'QSoftmax':  # QSoftmax: enable_ebops from the global config, not from enable_iq
            assert layer.enable_ebops == layer.enable_iq, layer.name
        d['beta0'] = float(layer._beta0.value)
    assert len(layer._inbound_nodes[0].outputs) == 1
    d['output_shape'] = [int(s) for s in layer._inbound_nodes[0].outputs[0].shape[1:]]
    return d


# ----------------------------------------------------------------------------------------------
# Spies and checks (the semantics the docstring states, asserted numerically; nothing of this is
# written to the JSON except the `bn` block).

class Spy:
    """Records the last input and output of a layer's call; for quantizers also counts how many
    elements came out rounded (changed by less than half a step) and overflowed (changed by more:
    WRAP or SAT), per call mode."""

    def __init__(self, layer, stats=None):
        self.layer, self.orig, self.rec = layer, layer.call, {}
        spy = self

        def call(*args, **kwargs):
            out = spy.orig(*args, **kwargs)
            spy.rec['in'], spy.rec['out'] = args[0], out
            spy.rec['training'] = kwargs.get('training', None)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.retain_grad()
            if stats is not None:
                spy.count(args[0], out, stats)
            return out

        layer.call = call

    def count(self, x, y, stats):
        q = self.layer.quantizer
        x, y = f32(npy(x)), f32(npy(y))
        step = f32(npy(q.bw_mapper.bw_to_x(2.0 ** -q.f, x.shape)))
        d = np.abs(y.astype(np.float64) - x)
        key = f'{q.overflow_mode}/{MODE[0]}'
        s = stats.setdefault(key, [0, 0, 0])
        s[0] += int(x.size)
        s[1] += int(((d > 0) & (d <= step / 2 * (1 + 1e-6))).sum())
        s[2] += int((d > step / 2 * (1 + 1e-6)).sum())

    def remove(self):
        self.layer.call = self.orig


MODE = ['']


def T(a):
    return torch.tensor(f32(npy(a)))


def same(a, b, what):
    a, b = f32(npy(a)), f32(npy(b))
    assert a.shape == b.shape and np.array_equal(a, b), (what, a, b)


def var_value(v):
    return torch.tensor(f32(npy(v.value)))


def moments(x, axes):
    """keras.ops.moments on torch: mean, then mean(x^2) - mean^2 (biased), keepdim and squeezed."""
    mean = torch.mean(x, dim=axes, keepdim=True)
    var = torch.mean(torch.square(x), dim=axes, keepdim=True) - torch.square(mean)
    return torch.squeeze(mean, axes), torch.squeeze(var, axes)


def sqrt_inexact(t):
    """Elements where torch's float32 sqrt is not the correctly rounded one (see gen_graph.py)."""
    a = f32(npy(t)).ravel()
    s_t = f32(npy(torch.sqrt(torch.tensor(a))))
    s_e = f32(np.sqrt(a.astype(np.float64)))
    return [int(c) for c in np.nonzero(s_t != s_e)[0]]


class Checker:
    def __init__(self, model):
        self.model = model
        self.spies = {}
        self.qstats = {}
        for l_ in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(l_, Quantizer):
                self.spies[id(l_)] = Spy(l_, self.qstats)
        for l_ in qlayers(model):
            self.spies[id(l_)] = Spy(l_)
            if isinstance(l_, QSoftmax):
                self.spies[id(l_.exp_table)] = Spy(l_.exp_table)
                self.spies[id(l_.inv_table)] = Spy(l_.inv_table)

    def rec(self, layer):
        return self.spies[id(layer)].rec

    def remove(self):
        for s in self.spies.values():
            s.remove()

    # Forward checks, after a call. `before`: the state before the call (Keras paths).
    def check_forward(self, mode, before):
        for s in self.spies.values():
            if isinstance(s.layer, Quantizer) and s.rec:
                t = s.rec['training']
                ok = {'training': t is True, 'tracing': t is not True and t == 'tracing', 'inference': t is False}[mode]
                assert ok, (s.layer.name, mode, t)
        info = {}
        for l_ in qlayers(self.model):
            if isinstance(l_, QEinsumDenseBatchnorm):
                info[l_.name] = self.check_edbn(l_, mode, before)
            elif isinstance(l_, QEinsumDense):
                self.check_einsum(l_)
            elif isinstance(l_, QBatchNormDense):
                info[l_.name] = self.check_bn_dense(l_, mode, before)
            elif isinstance(l_, QDense):
                self.check_dense(l_)
            elif isinstance(l_, QUnaryFunctionLUT):
                self.check_lut(l_)
            elif isinstance(l_, QSoftmax):
                self.check_softmax(l_)
        for s in self.spies.values():  # a layer not called next time fails the checks (no stale records)
            s.rec.clear()
        return info

    def qin(self, l_):
        r = self.rec(l_)
        if l_.enable_iq:
            same(self.rec(l_.iq)['in'], r['in'], f'{l_.name}: iq input')
            return T(self.rec(l_.iq)['out'])
        return T(r['in'])

    def finish(self, l_, y, what):
        y = ACT_TORCH[act_name(getattr(l_, 'activation', None))](y)
        assert not l_.enable_oq
        same(self.rec(l_)['out'], y, f'{l_.name}: {what}')

    def check_dense(self, l_):
        qx = self.qin(l_)
        same(self.rec(l_.kq)['in'], l_._kernel.value, f'{l_.name}: kq input')
        y = torch.matmul(qx, T(self.rec(l_.kq)['out']))
        if l_.bias is not None:
            same(self.rec(l_.bq)['in'], l_.bias.value, f'{l_.name}: bq input')
            y = y + T(self.rec(l_.bq)['out'])
        self.finish(l_, y, 'dense output')

    def check_einsum(self, l_):
        qx = self.qin(l_)
        same(self.rec(l_.kq)['in'], l_._kernel.value, f'{l_.name}: kq input')
        y = torch.einsum(l_.equation, qx, T(self.rec(l_.kq)['out']))
        if l_.bias is not None:
            same(self.rec(l_.bq)['in'], l_.bias.value, f'{l_.name}: bq input')
            y = y + T(self.rec(l_.bq)['out'])
        self.finish(l_, y, 'einsum output')

    def moving(self, l_, mode, before, stat):
        """The batch moments (training: checked against the moving averages' update) or the moving
        statistics (other modes: unchanged)."""
        mm_p, mv_p = path(l_.moving_mean), path(l_.moving_variance)
        mm0 = torch.tensor(f32(before[mm_p]['value'])).reshape(tuple(l_.moving_mean.shape))
        mv0 = torch.tensor(f32(before[mv_p]['value'])).reshape(tuple(l_.moving_variance.shape))
        if mode == 'training':
            mean, var = stat
            mom = l_.momentum
            same(l_.moving_mean.value, mm0 * mom + mean * (1.0 - mom), f'{l_.name}: moving_mean')
            same(l_.moving_variance.value, mv0 * mom + var * (1.0 - mom), f'{l_.name}: moving_variance')
            return mean, var
        same(l_.moving_mean.value, mm0, f'{l_.name}: moving_mean unchanged')
        same(l_.moving_variance.value, mv0, f'{l_.name}: moving_variance unchanged')
        return mm0, mv0

    def check_bn_dense(self, l_, mode, before):
        qx = self.qin(l_)
        kernel = var_value(l_._kernel)
        # hgq2 takes the batch's moments only when `training and self.trainable`.
        batch = mode == 'training' and l_.trainable
        stat = moments(qx, l_.reduction_axis) if batch else None
        mean, var = self.moving(l_, 'training' if batch else 'other', before, stat)
        ve = var + l_.epsilon
        scaler = (var_value(l_.bn_gamma) / torch.sqrt(ve)) if l_.scale else (1 / torch.sqrt(ve))
        if not l_.scale:
            same(scaler, torch.reciprocal(torch.sqrt(ve)), f'{l_.name}: 1 / sqrt is reciprocal')
        same(self.rec(l_.kq)['in'], scaler[:, None] * kernel, f'{l_.name}: fused kernel')
        offset = -torch.matmul(mean, kernel)
        same(self.rec(l_.bq)['in'], var_value(l_.bias) + offset, f'{l_.name}: fused bias (-mean @ kernel)')
        y = torch.matmul(qx, T(self.rec(l_.kq)['out'])) + T(self.rec(l_.bq)['out'])
        self.finish(l_, y, 'batchnorm-dense output')
        info = dict(scaler=fl(npy(scaler)), sqrt_inexact=sqrt_inexact(ve))
        if batch:
            info = dict(mean=fl(npy(mean)), var=fl(npy(var)), **info)
        return info

    def check_edbn(self, l_, mode, before):
        qx = self.qin(l_)
        kernel = var_value(l_._kernel)
        stat = moments(torch.einsum(l_.equation, qx, kernel), l_._reduction_axes) if mode == 'training' else None
        mean, var = self.moving(l_, mode, before, stat)
        ve = var + KERAS_EPSILON  # keras' epsilon, not the layer's
        scaler = (var_value(l_.bn_gamma) / torch.sqrt(ve)) if l_.scale else (1 / torch.sqrt(ve))
        same(self.rec(l_.kq)['in'], torch.einsum(l_.fused_kernel_equation, kernel, scaler), f'{l_.name}: fused kernel')
        offset = torch.reshape(-mean * scaler, tuple(l_._norm_offset_cast_shape))
        same(self.rec(l_.bq)['in'], var_value(l_.bias) + offset, f'{l_.name}: fused bias')
        y = torch.einsum(l_.equation, qx, T(self.rec(l_.kq)['out'])) + T(self.rec(l_.bq)['out'])
        self.finish(l_, y, 'einsum-batchnorm output')
        info = dict(scaler=fl(npy(scaler)), sqrt_inexact=sqrt_inexact(ve))
        if mode == 'training':
            info = dict(mean=fl(npy(mean)), var=fl(npy(var)), **info)
        return info

    def check_lut(self, l_):
        qx = self.qin(l_)
        assert qx.numel() <= MAX_ACT_NUMEL, (l_.name, qx.shape)
        a = ACT_TORCH[act_name(l_.activation)](qx)
        same(self.rec(l_.oq)['in'], a, f'{l_.name}: activation of the quantized input')
        same(self.rec(l_)['out'], self.rec(l_.oq)['out'], f'{l_.name}: output quantizer last')

    def check_softmax(self, l_):
        q = self.qin(l_)
        axes = tuple(l_.axes)
        et, it = l_.exp_table, l_.inv_table
        if l_.stable:
            e_in = torch.amax(q, dim=axes, keepdim=True) - q
            same(self.rec(et)['in'], e_in, f'{l_.name}: max - x')
            ei = T(self.rec(et.iq)['out'])
            assert ei.numel() <= MAX_ACT_NUMEL, (l_.name, ei.shape)
            raw = torch.exp(-ei * l_.input_scaler)
        else:
            same(self.rec(et)['in'], q, f'{l_.name}: x into exp')
            assert q.numel() <= MAX_ACT_NUMEL, (l_.name, q.shape)
            raw = torch.exp(q * l_.input_scaler)
        same(self.rec(et.oq)['in'], raw, f'{l_.name}: exp')
        eo = T(self.rec(et)['out'])
        same(eo, self.rec(et.oq)['out'], f'{l_.name}: exp table output')
        sums = torch.sum(eo, dim=axes, keepdim=True)
        s64 = f32(npy(eo)).astype(np.float64).sum(axis=axes, keepdims=True)
        assert np.array_equal(s64, f32(npy(sums)).astype(np.float64)), f'{l_.name}: inexact sums'
        same(self.rec(it)['in'], sums, f'{l_.name}: sums')
        ii = T(self.rec(it.iq)['out'])
        same(self.rec(it.iq)['in'], sums, f'{l_.name}: inv iq input')
        raw_inv = torch.reciprocal(ii + KERAS_EPSILON) * 1.0  # what `1.0 / (x + eps)` does in torch
        same(self.rec(it.oq)['in'], raw_inv, f'{l_.name}: 1 / (x + eps)')
        same(self.rec(it.oq)['in'], 1.0 / (ii + KERAS_EPSILON), f'{l_.name}: 1 / (x + eps) plain')
        io = T(self.rec(it)['out'])
        prod_ = eo * io
        assert np.array_equal(f32(npy(eo)).astype(np.float64) * f32(npy(io)), f32(npy(prod_))), 'inexact product'
        same(self.rec(l_)['out'], prod_, f'{l_.name}: exp * inverse')


# ----------------------------------------------------------------------------------------------
# EBOPs, recomputed (float32, before the uint32 cast).

def ebops_float(l_):
    """{layer name: float32 EBOPs} of the layer's own term (QSoftmax: its tables as their own entries)."""
    shape = (1,) + tuple(int(s) for s in l_._inbound_nodes[0].input_tensors[0].shape[1:])
    out = {}
    if isinstance(l_, QEinsumDense):  # also QEinsumDenseBatchnorm
        bi = bits_of(l_.iq, shape)
        bk = bits_of(l_.kq, tuple(l_._kernel.shape))
        # 'in,ker->' sums every product (torch sums the '...' dims too: '...c,cd->' is allowed).
        e64 = float(torch.einsum(l_.ebops_equation, torch.tensor(bi, dtype=torch.float64),
                                 torch.tensor(bk, dtype=torch.float64)))
        e = f32(e64)
        assert float(e) == e64
        if l_.bias is not None:
            bb = bits_of(l_.bq, tuple(l_.bias.shape))
            e = f32(e + f32(f32(bb.mean()) * f32(prod(l_.full_output_shape[1:]))))
        out[l_.name] = f32(f32(e * f32(l_.parallelization_factor)) / f32(l_.n_parallel))
    elif isinstance(l_, QDense):  # also QBatchNormDense
        bi = bits_of(l_.iq, shape)
        bk = bits_of(l_.kq, tuple(l_._kernel.shape))
        e = f32(np.matmul(bi.astype(np.float64), bk.astype(np.float64)).sum())
        if l_.bias is not None:
            bb = bits_of(l_.bq, tuple(l_.bias.shape))
            e = f32(e + f32(f32(bb.mean()) * f32(prod(shape[:-1]) * l_.units)))
        out[l_.name] = f32(f32(e * f32(l_.parallelization_factor)) / f32(l_.n_parallel))
    elif isinstance(l_, QUnaryFunctionLUT):
        out[l_.name] = lut_ebops(l_, shape)
    elif isinstance(l_, QBatchNormalization):  # gen_graph.py's formula (the last axis here)
        bi = bits_of(l_.iq, shape).astype(np.float64)
        c = shape[-1]
        bk = bits_of(l_.kq, (c,)).astype(np.float64)
        e = f32((bi * bk.reshape((1,) * (len(shape) - 1) + (c,))).sum())
        bb = bits_of(l_.bq, (c,))
        out[l_.name] = f32(e + f32(f32(bb.mean()) * f32(prod(shape[1:]))))
    elif isinstance(l_, QSoftmax):
        axes = tuple(l_.axes)
        accum = tuple(1 if i in axes else s for i, s in enumerate(shape))
        assert l_.parallelization_factor <= 0 or l_.parallelization_factor == prod(accum)
        be = bits_of(l_.exp_table.oq, shape).astype(np.float64)
        bv = bits_of(l_.inv_table.oq, accum).astype(np.float64)
        e = 0.0
        if l_.stable:
            e += (bits_of(l_.iq, shape) if l_.enable_iq else bits_of(l_.exp_table.iq, shape)).astype(np.float64).sum()
        e += be.sum() - be.min(axis=axes).sum()
        e += (be * bv).sum()
        e = f32(e)
        if not l_.stable:
            bi = bits_of(l_.iq, shape) if l_.enable_iq else np.zeros(shape, np.float32)
            e = f32(e + f32(f32(((2.0 ** bi.astype(np.float64)) * be).sum()) * f32(1e-4)))
        out[l_.name] = e
        if l_.exp_table.enable_ebops:
            out[l_.exp_table.name] = lut_ebops(l_.exp_table, shape)
        assert l_.inv_table.enable_ebops
        out[l_.inv_table.name] = lut_ebops(l_.inv_table, accum)
    return out


def lut_ebops(l_, shape):
    bi = bits_of(l_.iq, shape).astype(np.float64)
    bo = bits_of(l_.oq, shape).astype(np.float64)
    s = ((2.0 ** bi) * bo).sum()
    assert f32(s) == s
    return f32(f32(s) * f32(1e-4))


def ebops_layers(model):
    """Every layer with EBOPs, the tables inside QSoftmax too, in model.layers order (a QSoftmax,
    then its exp table, then its inverse table)."""
    out = []
    for l_ in qlayers(model):
        if getattr(l_, 'enable_ebops', False):
            out.append(l_)
            if isinstance(l_, QSoftmax):
                out += [t for t in (l_.exp_table, l_.inv_table) if t.enable_ebops]
    return out


def check_ebops(model):
    floats = {}
    for l_ in qlayers(model):
        if getattr(l_, 'enable_ebops', False):
            floats.update(ebops_float(l_))
    for l_ in ebops_layers(model):
        assert int(npy(l_._ebops.value)) == int(floats[l_.name]), (l_.name, int(npy(l_._ebops.value)), floats[l_.name])
    for l_ in qlayers(model):
        if isinstance(l_, QSoftmax):
            parts = [int(npy(t._ebops.value)) for t in (l_, l_.exp_table, l_.inv_table) if t.enable_ebops]
            assert l_.ebops == sum(parts), (l_.name, l_.ebops, parts)
    return floats


def check_losses(model, losses, floats):
    """model.losses = beta * EBOPs (float32) of every layer with EBOPs, each ONCE, in `ebops_layers`
    order, then the MonoL1 regularizers in model.variables order."""
    terms = ebops_layers(model)
    regs = [float(npy(v.regularizer(v.value))) for v in model.variables
            if v.trainable and getattr(v, 'regularizer', None) is not None]
    assert len(losses) == len(terms) + len(regs), (len(losses), [l_.name for l_ in terms], len(regs))
    for l_, t in zip(terms, losses):
        want = float(f32(floats[l_.name] * f32(npy(l_.beta))))
        assert t == want, (l_.name, t, want)
    assert losses[len(terms):] == regs, 'regularizers'


def check_activations():
    """The torch function each Keras activation calls (recorded with a TorchFunctionMode) gives
    the same bits as ACT_TORCH; and keras' mish is not torch's fused F.mish."""
    x = torch.tensor(np.linspace(-9, 9, 2001, dtype=np.float32))
    for name, fn in ACT_TORCH.items():
        assert torch.equal(keras.activations.get(name)(x), fn(x)), name
    return bool(torch.equal(ACT_TORCH['mish'](x), F.mish(x)))


def canon_path(p):
    """A path with the inner quantizer's global number dropped (each Quantizer here holds one)."""
    return re.sub(r'(fixed_point_quantizer_k(?:if|bi))(_\d+)?(?=/)', r'\1', p)


def check_json_roundtrip(case, descs, xi, yi):
    """keras.models.model_from_json(model_json) rebuilds the same layers (every described setting),
    the same variables, and, given the state after tracing, the same inference outputs: the JSON
    is all a reader needs."""
    keras.backend.clear_session()
    m = keras.models.model_from_json(case['model_json'])
    gg.MODEL_NAME[0] = m.name
    assert m.to_json() == case['model_json'], 'JSON written back'
    descs2 = [describe(l_) for l_ in qlayers(m)]
    assert descs2 == descs, [(a, b) for a, b in zip(descs, descs2) if a != b]
    want = {canon_path(k): v for k, v in case['calls'][1]['state_after'].items()}
    got = {canon_path(path(v)): v for v in m.variables}
    assert len(got) == len(m.variables) and sorted(got) == sorted(want), set(got) ^ set(want)
    for k, v in got.items():
        assert list(v.shape) == want[k]['shape'], k
        v.assign(np.array(want[k]['value'], dtype=np.float64).astype(v.dtype).reshape(tuple(v.shape)))
    with torch.no_grad():
        y2 = as_list(m(xi[0] if len(xi) == 1 else [torch.tensor(a) for a in xi], training=False))
    assert all(np.array_equal(npy(a), b) for a, b in zip(y2, yi)), 'inference of the model rebuilt from JSON'


def softmax_ties(model, chk):
    """How many rows of each QSoftmax's (quantized) input have a tied maximum (torch.amax's backward
    splits the gradient evenly among them)."""
    out = {}
    for l_ in qlayers(model):
        if isinstance(l_, QSoftmax) and l_.stable:
            q = f32(npy(chk.rec(l_.iq)['out'] if l_.enable_iq else chk.rec(l_)['in']))
            mx = q.max(axis=tuple(l_.axes), keepdims=True)
            out[l_.name] = int(((q == mx).sum(axis=tuple(l_.axes)) > 1).sum())
    return out


def check_torch_facts():
    """Torch behaviour the docstring states."""
    x = torch.tensor([[1.0, 1.0, 0.0]], requires_grad=True)
    torch.amax(x, dim=(1,), keepdim=True).sum().backward()
    assert x.grad.tolist() == [[0.5, 0.5, 0.0]], 'amax tie gradient'
    x = torch.tensor([3.0, 0.7], requires_grad=True)
    y = 1.0 / x
    assert type(y.grad_fn).__name__ == 'MulBackward0'
    assert type(y.grad_fn.next_functions[0][0]).__name__ == 'ReciprocalBackward0', '1.0 / x is reciprocal * 1'


# ----------------------------------------------------------------------------------------------

def more_case(name, rng, build, batch):
    keras.backend.clear_session()
    inputs, outputs = build()
    model = keras.Model(inputs, outputs)
    gg.MODEL_NAME[0] = model.name
    model_json = model.to_json()
    in_shapes = [tuple(int(s) for s in t.shape[1:]) for t in model.inputs]
    in_names = [t._keras_history[0].name for t in model.inputs]
    out_names = [t._keras_history[0].name for t in model.outputs]
    out_shapes = [tuple(int(s) for s in t.shape[1:]) for t in model.outputs]
    layers = qlayers(model)
    descs = [describe(l_) for l_ in layers]
    assign_varied(model, rng)
    case = dict(name=name, inputs=[dict(name=n, shape=list(s)) for n, s in zip(in_names, in_shapes)],
                layers=descs, outputs=out_names, model_json=model_json, initial=state(model), calls=[])
    single_in = len(in_shapes) == 1
    has_bn = any(isinstance(l_, (QBatchNormDense, QEinsumDenseBatchnorm)) for l_ in layers)
    chk = Checker(model)

    def call(xlist, training):
        arg = xlist[0] if single_in else list(xlist)
        return as_list(model(arg, training=training))

    # A training step.
    MODE[0] = 'training'
    x = [xs(rng, (batch,) + s) for s in in_shapes]
    dy = [rng.normal(size=(batch,) + s).astype(np.float32) for s in out_shapes]
    tx = [torch.tensor(a, requires_grad=True) for a in x]
    for v in model.trainable_variables:
        v.value.grad = None
    before = state(model)
    y = call(tx, True)
    losses = [npy(l_).item() for l_ in model.losses]
    floats = check_ebops(model)
    check_losses(model, losses, floats)
    loss = sum((yk * torch.tensor(dk)).sum() for yk, dk in zip(y, dy)) + sum(model.losses)
    loss.backward()
    grads = {path(v): fl(npy(v.value.grad) if v.value.grad is not None else np.zeros(v.shape, np.float32))
             for v in model.trainable_variables}
    for j, t in enumerate(tx):
        grads[f'x{j}'] = fl(npy(t.grad))
    st = state(model)
    ties = softmax_ties(model, chk)
    info = chk.check_forward('training', before)
    assert state(model) == st, 'the checks changed the state'
    case['calls'].append(dict(mode='training', x=[fl(a) for a in x], dy=[fl(a) for a in dy],
                              y=[fl(npy(a)) for a in y], ebops=gg.layer_ebops(model), losses=losses, grads=grads,
                              state_after=st))
    if has_bn:
        case['calls'][-1]['bn'] = info

    # trace_minmax over two batches.
    MODE[0] = 'tracing'
    xt = [(rng.normal(size=(2 * batch,) + s) * 3.0).astype(np.float32) for s in in_shapes]
    before = state(model)
    total = trace_minmax(model, xt[0] if single_in else xt, batch_size=batch)
    st = state(model)
    check_ebops(model)
    info = chk.check_forward('tracing', before)
    assert state(model) == st, 'the checks changed the state'
    ebops = gg.layer_ebops(model)
    assert int(total) == sum(e for e in ebops if e is not None)
    case['calls'].append(dict(mode='trace_minmax', x=[fl(a) for a in xt], batch_size=batch, ebops_total=int(total),
                              ebops=ebops, state_after=st))
    if has_bn:
        case['calls'][-1]['bn'] = info

    # Inference.
    MODE[0] = 'inference'
    xi = [(rng.normal(size=(batch,) + s) * 2.0).astype(np.float32) for s in in_shapes]
    before = state(model)
    with torch.no_grad():
        yi = [npy(a) for a in call([torch.tensor(a) for a in xi], False)]
    info = chk.check_forward('inference', before)
    after = state(model)
    with torch.no_grad():
        yi2 = [npy(a) for a in call([torch.tensor(a) for a in xi], False)]
    assert all(np.array_equal(a, b) for a, b in zip(yi, yi2)), f'{name}: two inference calls differ'
    assert state(model) == after == before, f'{name}: inference changed the state'
    case['calls'].append(dict(mode='inference', x=[fl(a) for a in xi], y=[fl(a) for a in yi], state_after=after))
    if has_bn:
        case['calls'][-1]['bn'] = info
    chk.remove()
    check_json_roundtrip(case, descs, xi, yi)
    print(f'{name}: quantizers (elements, rounded, overflowed) {json.dumps(chk.qstats, sort_keys=True)}'
          + (f'; softmax rows with a tied max (training) {ties}' if ties else ''), file=sys.stderr)
    return case


# ----------------------------------------------------------------------------------------------
# The models.

def einsum_dense():
    inp = keras.Input((4, 6))
    h = QEinsumDense('abc,cd->abd', output_shape=(4, 5), bias_axes='d', activation='relu', beta0=1e-3)(inp)
    h = QEinsumDense('abc,cde->abde', output_shape=(4, 3, 2), bias_axes='de', beta0=2e-3)(h)
    h = QEinsumDense('abcd,bcde->ae', output_shape=3, beta0=3e-3)(h)  # no bias; contracts three axes
    return inp, QDense(2, beta0=4e-3)(h)


def einsum_ellipsis():
    inp = keras.Input((3, 4))
    h = QEinsumDense('...c,cd->...d', output_shape=5, bias_axes='d', activation='relu', parallelization_factor=1,
                     beta0=1e-3)(inp)  # n_parallel 3: EBOPs * 1/3
    h = QEinsumDense('abc,bd->adc', output_shape=(2, 5), bias_axes='c', beta0=2e-3)(h)  # contracts a middle axis
    h = keras.layers.Flatten()(h)
    return inp, QDense(3, beta0=3e-3)(h)


def batchnorm_dense():
    inp = keras.Input((10,))
    h = QBatchNormDense(8, activation='relu', momentum=0.9, beta0=1e-3)(inp)
    h = QBatchNormDense(5, scale=False, epsilon=0.01, beta0=2e-3)(h)
    return inp, QDense(3, beta0=3e-3)(h)


def batchnorm_dense_3d():
    inp = keras.Input((3, 5))
    h = QBatchNormDense(4, momentum=0.8, beta0=1e-3)(inp)  # moments over (batch, 3); n_parallel 3
    h = keras.layers.Flatten()(h)
    return inp, QDense(3, beta0=2e-3)(h)


def einsum_batchnorm():
    inp = keras.Input((4, 6))
    # hgq2's QEinsumDenseBatchnorm has no get_config of its own: momentum, epsilon, scale, center and
    # normalize_axes are not in the JSON, so only their defaults can be rebuilt from it.
    h = QEinsumDenseBatchnorm('abc,cd->abd', output_shape=(4, 5), bias_axes='d', activation='relu', beta0=1e-3)(inp)
    h = QEinsumDenseBatchnorm('abc,cde->abde', output_shape=(4, 3, 2), bias_axes='de', beta0=2e-3)(h)
    h = keras.layers.Flatten()(h)
    return inp, QDense(3, beta0=3e-3)(h)


def lut():
    inp = keras.Input((6,))
    h = QDense(5, beta0=1e-3)(inp)
    h = QUnaryFunctionLUT('tanh', beta0=2e-3)(h)
    h = QDense(4, beta0=3e-3)(h)
    h = QUnaryFunctionLUT('sigmoid', beta0=4e-3)(h)
    return inp, QDense(3, beta0=5e-3)(h)


def lut_activations():
    inp = keras.Input((6,))
    h = QDense(5, beta0=1e-3)(inp)
    h = QUnaryFunctionLUT('softplus', beta0=2e-3)(h)
    h = QDense(5, beta0=3e-3)(h)
    h = QUnaryFunctionLUT('silu', enable_iq=False)(h)  # no iq: no EBOPs either
    h = QDense(5, beta0=4e-3)(h)
    h = QUnaryFunctionLUT('gelu', allow_heterogeneous_input=False, beta0=5e-3)(h)  # iq per tensor
    h = QDense(4, beta0=6e-3)(h)
    h = QUnaryFunctionLUT('exponential', allow_heterogeneous_table=False, beta0=7e-3)(h)
    return inp, QDense(3, beta0=8e-3)(h)


def lut_piecewise():
    inp = keras.Input((6,))
    h = QDense(5, beta0=1e-3)(inp)
    h = QUnaryFunctionLUT('elu', beta0=2e-3)(h)
    h = QUnaryFunctionLUT('softsign', beta0=3e-3)(h)
    h = QDense(5, beta0=4e-3)(h)
    # A per-element table (its own output config, allow_heterogeneous_table=True keeps it so).
    h = QUnaryFunctionLUT('hard_sigmoid', oq_conf=QuantizerConfig('kbi', 'table', heterogeneous_axis=None,
                                                                   homogeneous_axis=(0,)), beta0=5e-3)(h)
    h = QDense(5, beta0=6e-3)(h)
    h = QUnaryFunctionLUT('selu', beta0=7e-3)(h)
    h = QUnaryFunctionLUT('hard_silu', beta0=8e-3)(h)
    h = QDense(4, beta0=9e-3)(h)
    h = QUnaryFunctionLUT('log_sigmoid', beta0=1e-2)(h)
    h = QUnaryFunctionLUT('mish', beta0=1.1e-2)(h)
    return inp, QDense(3, beta0=1.2e-2)(h)


def softmax():
    inp = keras.Input((6,))
    h = QDense(5, beta0=1e-3)(inp)
    return inp, QSoftmax(beta0=2e-3)(h)  # the model's output


def softmax_variants():
    inp = keras.Input((6,))
    h = QDense(5, beta0=1e-3)(inp)
    h = QSoftmax(stable=False, input_scaler=0.75, beta0=2e-3)(h)  # exp(0.75 x), no exp iq
    h = QDense(4, beta0=3e-3)(h)
    h = QSoftmax(enable_iq=True, beta0=4e-3)(h)  # its own iq before max - x
    return inp, QDense(3, beta0=5e-3)(h)


def softmax_3d():
    inp = keras.Input((2, 4))
    e = QEinsumDense('abc,cd->abd', output_shape=(2, 3), bias_axes='d', beta0=1e-3)(inp)
    s1 = QSoftmax(axis=-1, beta0=2e-3)(e)  # output 1
    s2 = QSoftmax(axis=1, allow_heterogeneous_table=True, input_scaler=1.5, beta0=3e-3)(e)
    s3 = QSoftmax(axis=(1, 2), enable_iq=True, beta0=4e-3)(e)
    h = keras.layers.Flatten()(s2)
    o2 = QDense(2, beta0=5e-3)(h)
    h = keras.layers.Flatten()(s3)
    o3 = QDense(2, beta0=6e-3)(h)
    return inp, [s1, o2, o3]


def softmax_tied():
    inp = keras.Input((5,))
    # Its iq has -1 fraction bits, a step of 2 (see assign_varied): tied maxima, whose gradient torch.amax splits.
    h = QSoftmax(enable_iq=True, name='coarse_softmax', beta0=1e-3)(inp)
    return inp, QDense(2, beta0=2e-3)(h)


def frozen():
    inp = keras.Input((6,))
    # trainable=False: the layers' own weights are frozen (no gradients); hgq2 keeps their quantizers
    # trainable (bit widths trained, WRAP traced) and its EBOPs; QBatchNormDense then normalizes with its
    # moving statistics in training (`training and self.trainable`), which stay as they are.
    h = QDense(5, activation='relu', trainable=False, beta0=1e-3)(inp)
    h = QBatchNormDense(4, momentum=0.9, trainable=False, beta0=2e-3)(h)
    h = QUnaryFunctionLUT('tanh', trainable=False, beta0=3e-3)(h)
    # hgq2's QBatchNormalization takes the batch's moments whenever training (its call has no
    # `self.trainable` test): frozen, only its bn_gamma / bn_beta stay.
    h = QBatchNormalization(momentum=0.8, trainable=False, beta0=4e-3)(h)
    return inp, QDense(3, beta0=5e-3)(h)


def cases(rng):
    return [
        more_case('more/einsum-dense', rng, einsum_dense, batch=3),
        more_case('more/einsum-ellipsis', rng, einsum_ellipsis, batch=3),
        more_case('more/batchnorm-dense', rng, batchnorm_dense, batch=4),
        more_case('more/batchnorm-dense-3d', rng, batchnorm_dense_3d, batch=4),
        more_case('more/einsum-batchnorm', rng, einsum_batchnorm, batch=4),
        more_case('more/lut', rng, lut, batch=3),
        more_case('more/lut-activations', rng, lut_activations, batch=3),
        more_case('more/lut-piecewise', rng, lut_piecewise, batch=3),
        more_case('more/softmax', rng, softmax, batch=3),
        more_case('more/softmax-variants', rng, softmax_variants, batch=3),
        more_case('more/softmax-3d', rng, softmax_3d, batch=2),
        more_case('more/softmax-ties', rng, softmax_tied, batch=3),
        more_case('more/frozen', rng, frozen, batch=3),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    check_torch_facts()
    mish_fused_same = check_activations()
    print(f'keras mish == torch F.mish bitwise on [-9, 9]: {mish_fused_same}', file=sys.stderr)
    rng = np.random.default_rng(a.seed)
    keras.utils.set_random_seed(a.seed)
    meta = dict(hgq2=hgq.__version__ if hasattr(hgq, '__version__') else 'unknown', keras=keras.__version__,
                torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(), seed=a.seed)
    out = dict(meta=meta, graph=cases(rng))
    with open(a.out, 'w') as f:
        json.dump(out, f, separators=(',', ':'))


if __name__ == '__main__':
    main()
