"""Reference values of hgq2's merge layers (QAdd, QSubtract, QMultiply, QMaximum, QMinimum,
QAveragePow2) and QBatchNormalization inside small Keras functional graphs (residual blocks, several
inputs, several outputs) for hgq-torch's tests: the forward pass, the EBOPs, the gradients of a
training step (every input's too), WRAP integer-bit tracking, BatchNorm's moving statistics,
trace_minmax and inference, to be compared bit for bit.

Usage: KERAS_BACKEND=torch .venv/bin/python tests/data/reference/gen_graph.py tests/data/reference/graph.json [--seed N]
Needs: hgq2==0.2.0, quantizers==1.2.2, keras 3 and torch (the project's `.venv`: keras 3.15.1, torch
2.11). Self-contained; the helpers follow gen_cnn.py.

Cases (see `cases()`):
  graph/residual-dense            Input(8) -> QDense(8, relu) -> QDense(8); QAdd([input, that]) -> QDense(3)
                                  (batch 3, as the next two)
  graph/merges                    Input(6) -> a = QDense(5, relu), b = QDense(5); QSubtract, QMultiply,
                                  QMaximum, QMinimum of [a, b]; QAdd of the four (4 inputs) -> QDense(2)
  graph/two-inputs-two-outputs    xa, xb = Input(4); s = QAdd([xa, xb]) -> QDense(3) = output 1;
                                  m = QMultiply([xa, xb]); QAveragePow2([m, s, xb]) (3 inputs: scale 1/4)
                                  -> QDense(2) = output 2 (s and both inputs fan out to two layers)
  graph/batchnorm-chain           Input(10) -> QDense(8) -> QBatchNormalization(momentum=0.9, epsilon=0.01)
                                  -> QDense(4, relu) -> QDense(3)   (batch 4)
  graph/merges-without-iq         Input(6) -> a, b = QDense(5, enable_oq=True) x2; QAdd([a, b]) and
                                  QMultiply([that, b], enable_oq=True) with enable_iq=False -> QDense(2)
  graph/conv-batchnorm-residual   Input(6,6,2) -> c = QConv2D(4,(3,3),'same') -> QBatchNormalization()
                                  -> QConv2D(4,(3,3),'same',relu) = d; QAdd([c, d]) -> QGlobalAveragePooling2D
                                  -> QDense(3)   (batch 2)
About 624 KB with seed 0 (the conv case 260 KB: per-element quantizers and four copies of the state;
each model_json is 14-28 KB).

Format (conventions of gen.py / gen_cnn.py): every float array is a flat list in row-major order
(float32 values written exactly, as float64). Variables are keyed by their Keras path without the
model's name (a functional model's variables carry none). Every layer is channels_last.
Top level: {"meta": {hgq2, keras, torch, seed}, "graph": [case, ...]}. A case:
  name          "graph/..."
  inputs        [{name, shape}] of the model's inputs, in order (name as Keras gives it: "input_layer"
                or the name passed to keras.Input; shape without the batch dimension)
  layers        one dict per non-input layer, in `model.layers` order (a topological order that is NOT
                always the order the layers were made and called: in two-inputs-two-outputs q_dense,
                made second, comes after q_multiply and q_average_pow2), every value read from the
                built layer:
                  kind (class name), name, inbound (names of the layers / inputs whose outputs it takes,
                  in argument order; every layer here is called once and has one output), output_shape
                  (without batch), and
                  QAdd/QSubtract/QMultiply/QMaximum/QMinimum/QAveragePow2: beta0 (and for QAveragePow2
                    also `scale`, the power of two it multiplies the sum by)
                  QBatchNormalization: axis (the layer's own value, -1 here), reduction_axes (the axes the
                    batch moments reduce over, batch axis included: [0] for (B, C), [0, 1, 2] for
                    (B, H, W, C)), momentum, epsilon, center, scale, beta0
                  QConv2D: filters, kernel_size, strides, padding, dilation_rate, groups, activation,
                    use_bias, beta0;  QDense: units, activation, use_bias, beta0;
                  QGlobalAveragePooling2D: keepdims, beta0   (all as in gen_cnn.py)
  outputs       names of the output layers, in the model's output order
  model_json    `model.to_json()` right after building (before any call, weights or training)
  initial       {path: {shape, value}} of every variable after `assign_varied` (the state the calls
                start from)
  calls         [training, trace_minmax, inference], in that order, each changing the state:
    training:     x (list, one flat array per input), dy (list, one per output), y (list per output:
                  model(x, training=True)), ebops (per layer of `layers`: int(layer.ebops) after the
                  call, null for a layer without EBOPs), losses (model.losses in order), grads
                  ({path: flat gradient} of every trainable variable, and "x0", "x1", ...: the gradient
                  of each input) of sum_k sum(y_k * dy_k) + sum(model.losses), state_after
    trace_minmax: x (list per input, two batches each), batch_size, ebops_total (what trace_minmax
                  returns), ebops (per layer), state_after. hgq2's trace_minmax takes a multi-input
                  model's data as a list of arrays (its Dataset slices each the same way); that is how
                  it is called here (a bare array for a one-input model).
    inference:    x (list), y (list per output: model(x, training=False)), state_after
  and, in every call of a case with a QBatchNormalization, bn: {layer name: {mean, var (the batch
                  moments; training only), scale, offset (what kq and bq were given), qscale, qoffset
                  (what they returned; for trace_minmax, those of the last batch), sqrt_inexact (the
                  channels where torch's float32 sqrt(var + epsilon) is NOT the correctly rounded square
                  root, see below), same_if_sqrt_exact (whether kq and bq give the same qscale and
                  qoffset from a correctly rounded sqrt)}}: intermediates for debugging.

Variable paths. A merge layer's input quantizers live in a MultipleQuantizers sublayer made at BUILD
time with Keras's global auto-names, one Quantizer per input, in argument order:
  q_add/multiple_quantizers/quantizer/fixed_point_quantizer_kif/{f,k,i,i_decay_speed}
  q_add/multiple_quantizers/quantizer_1/fixed_point_quantizer_kif_1/...
(the counters run across the whole model in build order: the second merge built gets
multiple_quantizers_1/quantizer_2/..., and the fixed_point_quantizer_kif_N counter is shared with the
other layers' quantizers; so they are read from the paths, never rebuilt by rule). Each is the default
datalane KIF quantizer (RND, WRAP, per element, batch axis collapsed: shape (1, *input_shape)).
Plus q_add/beta, q_add/ebops. QBatchNormalization (layer `q_batch_normalization`, C channels, input
shape S without batch):
  q_batch_normalization/bn_gamma (C,) trainable      (Keras's `gamma`, renamed by hgq2)
  q_batch_normalization/bn_beta (C,) trainable       (Keras's `beta`, renamed by hgq2)
  q_batch_normalization/moving_mean (C,), moving_variance (C,)  non-trainable
  q_batch_normalization/beta (), ebops ()  (hgq2's EBOPs beta, not the BN offset)
  q_batch_normalization/q_batch_normalization_iq/fixed_point_quantizer_kif_N/{f (1,*S) trainable, k, i,
      i_decay_speed}     input quantizer, default datalane KIF (WRAP, per element)
  q_batch_normalization/q_batch_normalization_kq/fixed_point_quantizer_kbi_N/{b, i (C,) trainable; k}
      quantizes the scale; default weight KBI (RND, SAT_SYM, MonoL1(1e-8) on b, b in [0, 23];
      bits = round(b))
  q_batch_normalization/q_batch_normalization_bq/fixed_point_quantizer_kbi_N/{b (C,) trainable; k, i,
      i_decay_speed}     quantizes the offset; default bias KBI (RND, WRAP, i tracked with
      i_decay_speed 0.01, MonoL1(1e-8) on b, b in [0, 24]; bits = round(b))
assign_varied gives bn_gamma = 1 + 0.3 N(0,1), bn_beta = 0.3 N(0,1), moving_mean = 0.5 N(0,1),
moving_variance = U(0.5, 2), and the kq/bq/iq b, i, f as gen_cnn.py (the kq's path contains "kq", so
its i is drawn from -1..2).

hgq2 0.2.0 / Keras 3 (torch backend) behaviour these values hold (the generator asserts each of these
numerically, see `check_*`):
- Merge forward: every input goes through its own input quantizer (training flag passed on), then
  Keras's merge: Add = sum in argument order (((x0 + x1) + x2) + x3, float32), Subtract = x0 - x1,
  Multiply = product in argument order, Maximum / Minimum elementwise, pairwise left to right
  (max(max(x0, x1), x2)). QAveragePow2 = (sum in argument order) * 2^round(log2(1/n)) (Python's
  round): n = 2 -> 0.5, n = 3 -> 0.25 (NOT 1/3), n = 4 -> 0.25.
  Ties in Maximum / Minimum: torch.maximum/minimum's backward gives grad/2 to each of two EQUAL
  operands, applied pairwise left to right: for max(max(a, b), c) with a == b == c, a and b get 1/4
  each and c 1/2; with a == b > c, a and b 1/2 each; with a == c > b, a and c 1/2 each (checked on a
  3-input QMaximum/QMinimum outside these cases).
- Merge EBOPs, with bits_j = input j's quantizer bits (quantizer.bits_: for these WRAP KIF
  quantizers relu(round(i) + round(f)), k NOT added (hgq2 adds k only in overflow mode SAT), per
  element over (1, *input_shape)), all in float32, then * ebops_factor (1), cast to uint32
  (truncation):
    QAdd, QAveragePow2:   0.65 * (sum_j sum(bits_j) - sum(min_j bits_j))   (elementwise min over inputs;
                          the helper is called "_excl_max" but subtracts the MINIMUM)
    QMaximum, QMinimum:   1.0 * (sum_j sum(bits_j) - sum(min_j bits_j))
    QSubtract:            sum(max(bits_0, bits_1))
    QMultiply:            sum(prod_j bits_j)
  The loss term is beta * the float32 EBOPs before the cast.
- QAveragePow2 adds its EBOPs loss TWICE (two equal adjacent entries in model.losses, so its beta *
  EBOPs gradient doubles), whenever a QAdd was instantiated before the first QAveragePow2 of the
  process (always so here: every case that has one makes a QAdd first). hgq2's QLayerMeta wraps a
  class's `call` (EBOPs + add_loss) the first time the class is instantiated; QAveragePow2 inherits
  QAdd's `call`, already wrapped once QAdd has been instantiated, and wraps it again. (Instantiated
  first, it wraps the unwrapped call and adds the loss once.) layer.ebops is the same either way.
  losses (training call) = beta * EBOPs per layer with EBOPs, in `layers` order (QAveragePow2's twice),
  then the MonoL1(1e-8) regularizers in model.variables order: per layer, iq f (a merge: each input's
  f in order), kq b, bq b (QBatchNormalization: iq f, kq b, bq b).
- QBatchNormalization forward, training=True (input x, reduction axes R, N = number of elements
  reduced per channel):
    qx = iq(x, training)                                   (WRAP i tracked as for any datalane iq)
    mean = torch.mean(qx, R); var = torch.mean(qx^2, R) - mean^2      (biased: E[x^2] - E[x]^2, / N)
    moving_mean <- moving_mean * momentum + mean * (1 - momentum)     (float32; the Python float
    moving_variance <- moving_variance * momentum + var * (1 - momentum)  1 - momentum, e.g.
                                                           0.010000000000000009, rounded to float32)
    scale = bn_gamma / sqrt(var + epsilon); offset = bn_beta - mean * scale     (batch moments)
    qscale = kq(scale, training); qoffset = bq(offset, training)  (bq's WRAP i tracks |offset|)
    y = qx * qscale + qoffset   (qscale/qoffset reshaped to (1,..,1,C))
  (all float32; `var + epsilon` adds epsilon rounded to float32; torch.sqrt, see below). The moving
  averages are updated from the batch moments of the QUANTIZED input (the iq's output); the output
  uses the batch moments, not the updated moving ones. The gradient flows through the batch moments
  (mean and var are not stopped), and through kq and bq by the straight-through estimator: kq
  (SAT_SYM) passes the gradient where the scale lies in [kq.min, kq.max] and 0 where it saturates (in
  the batchnorm-chain case channel 4's scale 0.589 saturates to 0.375 with kq i = -1, b = 2); bq (WRAP,
  its i raised to cover the offset first) always passes it. So dL/dqx = g * qscale + the terms through
  mean and var; checked (to float32 rounding) against a torch re-implementation of these formulas, as
  are the gradients of bn_gamma and bn_beta (which carry no regularizer).
  training=False: the same with moving_mean/moving_variance in place of the batch moments, no update.
  trace_minmax calls the model with training=TrainingFlagWrapper('tracing'), whose bool is False: BN
  uses the MOVING statistics and does not update them, while its WRAP quantizers (iq, bq; they compare
  training == 'tracing') trace their integer bits and k as in any other layer; kq (SAT_SYM) just
  quantizes.
  center=False is broken in hgq2 0.2.0: offset = 1 - mean * scale (bn_beta taken as 1; there is no
  bn_beta variable); scale=False takes bn_gamma as 1 correctly. Checked outside these cases; not used.
- torch.sqrt on float32 CPU tensors (torch 2.11.0+cu130 here, whatever ATEN_CPU_CAPABILITY, contiguous
  or not; reportedly the MKL VML path, a known PyTorch issue: pytorch/pytorch#31250) is NOT correctly
  rounded: it is off by one ulp for ~17% of random inputs (checked against the float64 sqrt). So
  BN's scale = gamma / sqrt(var + eps) can differ by one ulp from a correctly rounded computation
  (`sqrt_inexact` lists those channels per call: seed 0 has some in both BN cases). After kq and bq
  the quantized scale and offset are almost always the same (`same_if_sqrt_exact`: whether they are
  for this call; true for every call with seeds 0 and 1), so the forward values are unaffected, but
  the gradients through 1/sqrt (bn_gamma, and through var to the input and everything before BN)
  carry the difference. A Rust implementation with a correctly rounded sqrt may need a tolerance of
  an ulp or so there, or libtorch's own sqrt.
- QBatchNormalization EBOPs: sum(bits_iq(1, *S) * reshape(bits_kq, (1,..,1,C))) + mean(bits_bq) *
  prod(S)  (prod(S) counts every element of one sample, channels included), float32, cast to uint32.
- Moments: torch reduces in its own order; for these data torch's float32 mean(qx) and mean(qx^2)
  equal the float64 means rounded to float32 (checked), so the summation order does not matter here,
  and var = f32(mean(qx^2)) - f32(mean^2) exactly (checked; biased, NOT the unbiased estimate).
"""
import argparse
import json
import os
from math import log2

os.environ['KERAS_BACKEND'] = 'torch'
import numpy as np  # noqa: E402
import torch  # noqa: E402
import keras  # noqa: E402
import hgq  # noqa: E402,F401
from hgq.layers import (  # noqa: E402
    QAdd, QAveragePow2, QBatchNormalization, QConv2D, QDense, QGlobalAveragePooling2D, QMaximum, QMinimum,
    QMultiply, QSubtract,
)
from hgq.utils import trace_minmax  # noqa: E402

MERGES = ('QAdd', 'QSubtract', 'QMultiply', 'QMaximum', 'QMinimum', 'QAveragePow2')


def fl(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def npy(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


MODEL_NAME = ['']  # the current model's name (a functional model's variables do not carry it)


def path(v):
    """A variable's Keras path without the model's name (as a layer of ours names it)."""
    p = v.path
    prefix = MODEL_NAME[0] + '/'
    return p[len(prefix):] if MODEL_NAME[0] and p.startswith(prefix) else p


def state(model):
    return {path(v): dict(shape=list(v.shape), value=fl(npy(v.value))) for v in model.variables}


def assign_varied(model, rng):
    """Weights, BatchNorm statistics and bit widths away from their defaults (heterogeneous,
    non-integer raw bit widths), so that every element's own path is exercised."""
    for v in model.variables:
        name = v.path.split('/')[-1]
        shape = tuple(v.shape)
        if name == 'kernel':
            v.assign((rng.normal(size=shape) * 0.7).astype(np.float32))
        elif name == 'bias':
            v.assign((rng.normal(size=shape) * 0.4).astype(np.float32))
        elif name == 'bn_gamma':
            v.assign((1.0 + rng.normal(size=shape) * 0.3).astype(np.float32))
        elif name == 'bn_beta':
            v.assign((rng.normal(size=shape) * 0.3).astype(np.float32))
        elif name == 'moving_mean':
            v.assign((rng.normal(size=shape) * 0.5).astype(np.float32))
        elif name == 'moving_variance':
            v.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif name == 'b':
            v.assign((rng.integers(2, 8, shape) + rng.uniform(-0.45, 0.45, shape)).astype(np.float32))
        elif name == 'i' and 'kq' in v.path:
            v.assign((rng.integers(-1, 3, shape) + rng.uniform(-0.45, 0.45, shape)).astype(np.float32))
        elif name == 'i':
            v.assign((rng.integers(0, 4, shape) + rng.uniform(-0.45, 0.45, shape)).astype(np.float32))
        elif name == 'f':
            v.assign((rng.integers(1, 6, shape) + rng.uniform(-0.45, 0.45, shape)).astype(np.float32))


def _tuple(t):
    return [int(v) for v in t]


def _act(layer):
    return layer.activation.__name__ if layer.activation is not None else 'linear'


def inbound(layer):
    """Names of the layers / inputs whose outputs the layer takes, in argument order."""
    assert len(layer._inbound_nodes) == 1, layer.name
    names = []
    for t in layer._inbound_nodes[0].input_tensors:
        op, _, tensor_index = t._keras_history
        assert tensor_index == 0
        names.append(op.name)
    return names


def describe(layer):
    """The layer in the simple form the Rust tests build from, every value read from the layer."""
    kind = type(layer).__name__
    d = dict(kind=kind, name=layer.name, inbound=inbound(layer))
    if kind == 'QConv2D':
        d.update(filters=int(layer.filters), kernel_size=_tuple(layer.kernel_size), strides=_tuple(layer.strides),
                 padding=layer.padding, dilation_rate=_tuple(layer.dilation_rate), groups=int(layer.groups),
                 activation=_act(layer), use_bias=bool(layer.use_bias))
    elif kind.startswith('QGlobal'):
        d.update(keepdims=bool(layer.keepdims))
    elif kind == 'QDense':
        d.update(units=int(layer.units), activation=_act(layer), use_bias=bool(layer.use_bias))
    elif kind in MERGES:
        if kind == 'QAveragePow2':
            d['scale'] = float(layer._scale)
    elif kind == 'QBatchNormalization':
        d.update(axis=int(layer.axis), reduction_axes=[int(a) for a in layer._reduction_axes],
                 momentum=float(layer.momentum), epsilon=float(layer.epsilon), center=bool(layer.center),
                 scale=bool(layer.scale))
    else:
        raise ValueError(f'no description for {kind}')
    if hasattr(layer, 'enable_ebops'):
        d['enable_iq'], d['enable_oq'] = bool(layer.enable_iq), bool(layer.enable_oq)
        assert layer.enable_ebops == layer.enable_iq
        d['beta0'] = float(layer._beta0.value)
    assert len(layer._inbound_nodes[0].outputs) == 1
    d['output_shape'] = [int(s) for s in layer._inbound_nodes[0].outputs[0].shape[1:]]
    return d


def qlayers(model):
    return [l_ for l_ in model.layers if not isinstance(l_, keras.layers.InputLayer)]


def layer_ebops(model):
    return [int(npy(l_.ebops)) if getattr(l_, 'enable_ebops', False) else None for l_ in qlayers(model)]


def xs(rng, shape):
    """Inputs scaled by powers of two, so that WRAP and rounding matter."""
    return (rng.normal(size=shape) * 2.0 ** rng.integers(-1, 3, shape)).astype(np.float32)


def as_list(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


# ----------------------------------------------------------------------------------------------
# Checks of the semantics the docstring states (not written to the JSON).

def f32(a):
    return np.asarray(a, dtype=np.float32)


def bits_of(q, shape):
    return f32(npy(q.bits_(shape)))


def check_merge_ebops(layer, in_shapes):
    kind = type(layer).__name__
    bitss = [bits_of(q, (1,) + tuple(s)) for q, s in zip(layer.iq, in_shapes)]
    assert all(np.array_equal(b, np.round(b)) for b in bitss), 'non-integer bits'
    if kind in ('QAdd', 'QAveragePow2', 'QMaximum', 'QMinimum'):
        tot = f32(0)
        for b in bitss:
            tot = tot + f32(b.sum())
        mn = bitss[0]
        for b in bitss[1:]:
            mn = np.minimum(mn, b)
        e = f32((tot - f32(mn.sum())) * f32(0.65 if kind in ('QAdd', 'QAveragePow2') else 1.0))
    elif kind == 'QSubtract':
        e = f32(np.maximum(bitss[0], bitss[1]).sum())
    elif kind == 'QMultiply':
        p = bitss[0]
        for b in bitss[1:]:
            p = p * b
        e = f32(p.sum())
    else:
        raise ValueError(kind)
    assert int(npy(layer.ebops)) == int(e), (layer.name, int(npy(layer.ebops)), float(e))


def check_bn_ebops(layer, in_shape):
    shape = (1,) + tuple(in_shape)
    bi = bits_of(layer.iq, shape)
    bk = bits_of(layer.kq, tuple(layer.moving_mean.shape)).reshape(layer._shape)
    bb = bits_of(layer.bq, tuple(layer.moving_mean.shape))
    e = f32(f32((bi * bk).sum()) + f32(bb.mean()) * f32(np.prod(shape)))
    assert int(npy(layer.ebops)) == int(e), (layer.name, int(npy(layer.ebops)), float(e))


class Spy:
    """Records the input and output of a layer's call (the computation is unchanged)."""

    def __init__(self, layer):
        self.layer, self.orig, self.rec = layer, layer.call, {}

        def call(*args, **kwargs):
            out = self.orig(*args, **kwargs)
            self.rec['in'], self.rec['out'] = args[0], out
            if isinstance(out, torch.Tensor) and out.requires_grad:
                out.retain_grad()
            return out

        layer.call = call

    def remove(self):
        self.layer.call = self.orig


def ste(x, q):
    return x + (q - x).detach()


def bn_scale(gamma, var, eps):
    """gamma / sqrt(var + eps) as torch computes it on the CPU, and the channels where torch's float32
    sqrt (MKL VML, not correctly rounded) differs from the correctly rounded square root."""
    ve = f32(var + f32(eps))
    ve_t = torch.tensor(var) + eps
    assert np.array_equal(npy(ve_t), ve), 'var + eps'
    sq_t = f32(npy(torch.sqrt(ve_t)))
    sq_exact = f32(np.sqrt(ve.astype(np.float64)))
    assert np.array_equal(sq_exact, np.sqrt(ve)), 'numpy float32 sqrt'
    inexact = [int(c) for c in np.nonzero(sq_t != sq_exact)[0]]
    assert all(abs(int(sq_t.view(np.int32)[c]) - int(sq_exact.view(np.int32)[c])) == 1 for c in inexact)
    return f32(gamma / sq_t), inexact


def same_if_sqrt_exact(bn, gamma, beta, mean, var, qs, qo):
    """Whether kq and bq (training=False: no state change; the same rounding) give the same qscale and
    qoffset from a correctly rounded sqrt. Call it last: it goes through the spies."""
    sq = f32(np.sqrt(f32(var + f32(bn.epsilon)).astype(np.float64)))
    scale = f32(gamma / sq)
    offset = f32(beta - f32(mean * scale))
    qs2 = f32(npy(bn.kq(torch.tensor(scale), training=False))).reshape(bn._shape)
    qo2 = f32(npy(bn.bq(torch.tensor(offset), training=False))).reshape(bn._shape)
    return bool(np.array_equal(qs2, qs) and np.array_equal(qo2, qo))


def check_bn_training(bn, spies, before):
    """QBatchNormalization in training, against numpy (values) and torch (gradient)."""
    rec_bn, rec_iq, rec_kq, rec_bq = (spies[k].rec for k in ('bn', 'iq', 'kq', 'bq'))
    qx_t = rec_iq['out']
    qx = f32(npy(qx_t))
    axes = tuple(bn._reduction_axes)
    mom = bn.momentum
    # Moments: float64 of the quantized input rounds to what torch gets in float32 (exact sums).
    mean64 = qx.astype(np.float64).mean(axis=axes)
    sq64 = (qx.astype(np.float64) ** 2).mean(axis=axes)
    mean = f32(mean64)
    msq = f32(sq64)
    var = f32(msq - f32(mean * mean))
    qxt = torch.tensor(qx)
    tmean = torch.mean(qxt, dim=axes)
    tvar = torch.mean(torch.square(qxt), dim=axes) - torch.square(tmean)
    assert np.array_equal(npy(tmean), mean) and np.array_equal(npy(tvar), var), 'moments'
    var_unbiased = f32(((qx.astype(np.float64) - mean64.reshape(bn._shape)) ** 2).sum(axis=axes)
                       / (qx.size / mean.size - 1))
    assert not np.allclose(var, var_unbiased), 'variance looks unbiased'
    # Moving averages: float32, momentum and 1 - momentum rounded to float32.
    mm0, mv0 = f32(before['moving_mean']), f32(before['moving_variance'])
    mm1 = f32(mm0 * f32(mom)) + f32(mean * f32(1.0 - mom))
    mv1 = f32(mv0 * f32(mom)) + f32(var * f32(1.0 - mom))
    assert np.array_equal(npy(bn.moving_mean.value), mm1), 'moving_mean'
    assert np.array_equal(npy(bn.moving_variance.value), mv1), 'moving_variance'
    # scale and offset from the batch moments, into kq and bq.
    g, b = f32(before['bn_gamma']), f32(before['bn_beta'])
    scale, inexact = bn_scale(g, var, bn.epsilon)
    offset = f32(b - f32(mean * scale))
    assert np.array_equal(f32(npy(rec_kq['in'])), scale), ('scale', npy(rec_kq['in']), scale)
    assert np.array_equal(f32(npy(rec_bq['in'])), offset), ('offset', npy(rec_bq['in']), offset)
    qs, qo = f32(npy(rec_kq['out'])).reshape(bn._shape), f32(npy(rec_bq['out'])).reshape(bn._shape)
    y = f32(f32(qx * qs) + qo)
    assert np.array_equal(f32(npy(rec_bn['out'])), y), 'bn output'
    info = dict(mean=fl(mean), var=fl(var), scale=fl(scale), offset=fl(offset), qscale=fl(qs), qoffset=fl(qo),
                sqrt_inexact=inexact)
    # Gradient: through the batch moments, identity STE through kq and bq (where they do not clip).
    gout = rec_bn['out'].grad
    xq = qxt.clone().requires_grad_(True)
    gam = torch.tensor(g, requires_grad=True)
    bet = torch.tensor(b, requires_grad=True)
    m = torch.mean(xq, dim=axes)
    v = torch.mean(torch.square(xq), dim=axes) - torch.square(m)
    s = gam / torch.sqrt(v + bn.epsilon)
    o = bet - m * s
    # kq (SAT_SYM): the gradient passes where the scale is inside [min, max], else 0 (clipped);
    # bq (WRAP, i tracked in training): it always passes.
    kmin, kmax = f32(npy(bn.kq.quantizer.min)), f32(npy(bn.kq.quantizer.max))
    inside = torch.tensor((scale >= kmin) & (scale <= kmax))
    qs_t = torch.where(inside, ste(s, torch.tensor(qs.reshape(-1))), torch.tensor(qs.reshape(-1)))
    out = xq * qs_t.reshape(bn._shape) + ste(o, torch.tensor(qo.reshape(-1))).reshape(bn._shape)
    (out * gout).sum().backward()
    gx_hgq = npy(qx_t.grad)
    gx_detached = npy(gout) * qs
    assert not np.allclose(gx_hgq, gx_detached, rtol=1e-4, atol=1e-6), 'moments look detached'
    assert np.allclose(gx_hgq, npy(xq.grad), rtol=1e-4, atol=1e-5), ('grad x', gx_hgq, npy(xq.grad))
    gg = npy(bn.bn_gamma.value.grad)
    gb = npy(bn.bn_beta.value.grad)
    # bn_gamma/bn_beta have no regularizer: their gradient is the data term only.
    assert np.allclose(gg, npy(gam.grad), rtol=1e-4, atol=1e-5), ('grad gamma', gg, npy(gam.grad))
    assert np.allclose(gb, npy(bet.grad), rtol=1e-4, atol=1e-5), ('grad beta', gb, npy(bet.grad))
    info['same_if_sqrt_exact'] = same_if_sqrt_exact(bn, g, b, mean, var, qs, qo)
    return info


def check_bn_moving(bn, spies, stats):
    """training=False or tracing: the moving statistics make scale and offset, and stay as they were."""
    mm, mv = f32(stats['moving_mean']), f32(stats['moving_variance'])
    assert np.array_equal(npy(bn.moving_mean.value), mm) and np.array_equal(npy(bn.moving_variance.value), mv)
    scale, inexact = bn_scale(f32(stats['bn_gamma']), mv, bn.epsilon)
    offset = f32(f32(stats['bn_beta']) - f32(mm * scale))
    assert np.array_equal(f32(npy(spies['kq'].rec['in'])), scale), 'moving scale'
    assert np.array_equal(f32(npy(spies['bq'].rec['in'])), offset), 'moving offset'
    qx = f32(npy(spies['iq'].rec['out']))
    qs = f32(npy(spies['kq'].rec['out'])).reshape(bn._shape)
    qo = f32(npy(spies['bq'].rec['out'])).reshape(bn._shape)
    assert np.array_equal(f32(npy(spies['bn'].rec['out'])), f32(f32(qx * qs) + qo)), 'bn output (moving)'
    same = same_if_sqrt_exact(bn, f32(stats['bn_gamma']), f32(stats['bn_beta']), mm, mv, qs, qo)
    return dict(scale=fl(scale), offset=fl(offset), qscale=fl(qs), qoffset=fl(qo), sqrt_inexact=inexact,
                same_if_sqrt_exact=same)


def bn_stats(bn):
    return {k: f32(npy(getattr(bn, k).value)).copy() for k in ('moving_mean', 'moving_variance', 'bn_gamma', 'bn_beta')}


def check_merge_forward(layer, spy):
    """The merge of the quantized inputs (recorded from the iq sublayer) is what the layer returns."""
    qs = [f32(npy(t)) for t in spy['iq'].rec['out']]
    kind = type(layer).__name__
    r = qs[0]
    for q in qs[1:]:
        if kind in ('QAdd', 'QAveragePow2'):
            r = f32(r + q)
        elif kind == 'QSubtract':
            r = f32(r - q)
        elif kind == 'QMultiply':
            r = f32(r * q)
        elif kind == 'QMaximum':
            r = np.maximum(r, q)
        elif kind == 'QMinimum':
            r = np.minimum(r, q)
    if kind == 'QAveragePow2':
        sc = 2.0 ** round(log2(1.0 / len(qs)))
        assert layer._scale == sc
        r = f32(r * f32(sc))
    assert np.array_equal(f32(npy(spy['layer'].rec['out'])), r), (layer.name, 'merge forward')


def check_losses(model, losses):
    """model.losses = beta * EBOPs of every layer with EBOPs in model.layers order (QAveragePow2's
    twice: its call is wrapped twice, see the docstring), then the regularizers of the variables in
    model.variables order."""
    terms = []
    for l_ in qlayers(model):
        if getattr(l_, 'enable_ebops', False):
            terms += [(l_, float(npy(l_.beta)), int(npy(l_.ebops)))] * (2 if isinstance(l_, QAveragePow2) else 1)
    regs = [float(npy(v.regularizer(v.value))) for v in model.variables
            if v.trainable and getattr(v, 'regularizer', None) is not None]
    assert len(losses) == len(terms) + len(regs), (len(losses), len(terms), len(regs))
    for (l_, beta, e), t in zip(terms, losses):
        assert e * (1 - 1e-6) - 1e-3 <= t / beta < (e + 1) * (1 + 1e-6), (l_.name, t, beta, e)
    assert losses[len(terms):] == regs, 'regularizers'


# ----------------------------------------------------------------------------------------------

def graph_case(name, rng, build, batch):
    keras.backend.clear_session()  # layer and quantizer names counted from the start
    inputs, outputs = build()  # made after clear_session: their names and their quantizers' too
    model = keras.Model(inputs, outputs)
    MODEL_NAME[0] = model.name
    model_json = model.to_json()  # before any call: the architecture only
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

    # Spies for the checks (they change nothing).
    spies = {}
    for l_ in layers:
        kind = type(l_).__name__
        if kind == 'QBatchNormalization':
            spies[l_.name] = dict(bn=Spy(l_), iq=Spy(l_.iq), kq=Spy(l_.kq), bq=Spy(l_.bq))
        elif kind in MERGES and l_.enable_iq:
            spies[l_.name] = dict(layer=Spy(l_), iq=Spy(l_.iq))
    bns = [l_ for l_ in layers if type(l_).__name__ == 'QBatchNormalization']
    merges = [l_ for l_ in layers if type(l_).__name__ in MERGES and l_.enable_iq]

    def call(xlist, training):
        arg = xlist[0] if single_in else list(xlist)
        return as_list(model(arg, training=training))

    # A training step: outputs, EBOPs, the loss terms, the gradients (inputs too), the state after.
    x = [xs(rng, (batch,) + s) for s in in_shapes]
    dy = [rng.normal(size=(batch,) + s).astype(np.float32) for s in out_shapes]
    tx = [torch.tensor(a, requires_grad=True) for a in x]
    for v in model.trainable_variables:
        v.value.grad = None
    before = {l_.name: bn_stats(l_) for l_ in bns}
    y = call(tx, True)
    losses = [npy(l_).item() for l_ in model.losses]
    check_losses(model, losses)
    loss = sum((yk * torch.tensor(dk)).sum() for yk, dk in zip(y, dy)) + sum(model.losses)
    loss.backward()
    grads = {path(v): fl(npy(v.value.grad) if v.value.grad is not None else np.zeros(v.shape, np.float32))
             for v in model.trainable_variables}
    for j, t in enumerate(tx):
        assert f'x{j}' not in grads
        grads[f'x{j}'] = fl(npy(t.grad))
    st = state(model)
    bn_info = {}
    for l_ in bns:
        bn_info[l_.name] = check_bn_training(l_, spies[l_.name], before[l_.name])
        check_bn_ebops(l_, l_._inbound_nodes[0].input_tensors[0].shape[1:])
    for l_ in merges:
        check_merge_forward(l_, spies[l_.name])
        check_merge_ebops(l_, [t.shape[1:] for t in l_._inbound_nodes[0].input_tensors])
    assert state(model) == st, 'the checks changed the state'
    case['calls'].append(dict(mode='training', x=[fl(a) for a in x], dy=[fl(a) for a in dy],
                              y=[fl(npy(a)) for a in y], ebops=layer_ebops(model), losses=losses, grads=grads,
                              state_after=state(model)))
    if bns:
        case['calls'][-1]['bn'] = bn_info

    # trace_minmax over two batches (a list of arrays for a multi-input model), then inference.
    xt = [(rng.normal(size=(2 * batch,) + s) * 3.0).astype(np.float32) for s in in_shapes]
    stats = {l_.name: bn_stats(l_) for l_ in bns}
    total = trace_minmax(model, xt[0] if single_in else xt, batch_size=batch)
    st = state(model)
    bn_info = {}
    for l_ in bns:
        bn_info[l_.name] = check_bn_moving(l_, spies[l_.name], stats[l_.name])  # the last batch
        check_bn_ebops(l_, l_._inbound_nodes[0].input_tensors[0].shape[1:])
    for l_ in merges:
        check_merge_forward(l_, spies[l_.name])
        check_merge_ebops(l_, [t.shape[1:] for t in l_._inbound_nodes[0].input_tensors])
    assert state(model) == st, 'the checks changed the state'
    ebops = layer_ebops(model)
    assert int(total) == sum(e for e in ebops if e is not None)
    case['calls'].append(dict(mode='trace_minmax', x=[fl(a) for a in xt], batch_size=batch, ebops_total=int(total),
                              ebops=ebops, state_after=state(model)))
    if bns:
        case['calls'][-1]['bn'] = bn_info
    xi = [(rng.normal(size=(batch,) + s) * 2.0).astype(np.float32) for s in in_shapes]
    stats = {l_.name: bn_stats(l_) for l_ in bns}
    with torch.no_grad():
        yi = [npy(a) for a in call([torch.tensor(a) for a in xi], False)]
    bn_info = {}
    for l_ in bns:
        bn_info[l_.name] = check_bn_moving(l_, spies[l_.name], stats[l_.name])
    for l_ in merges:
        check_merge_forward(l_, spies[l_.name])
    after = state(model)
    # hgq2 itself deterministic: the same inference again gives the same outputs and state.
    with torch.no_grad():
        yi2 = [npy(a) for a in call([torch.tensor(a) for a in xi], False)]
    assert all(np.array_equal(a, b) for a, b in zip(yi, yi2)), f'{name}: two inference calls differ'
    assert state(model) == after, f'{name}: inference changed the state'
    case['calls'].append(dict(mode='inference', x=[fl(a) for a in xi], y=[fl(a) for a in yi], state_after=after))
    if bns:
        case['calls'][-1]['bn'] = bn_info
    for d in spies.values():
        for s in d.values():
            s.remove()
    return case


def residual_dense():
    inp = keras.Input((8,))
    h = QDense(8, activation='relu', beta0=1e-3)(inp)
    h = QDense(8, beta0=2e-3)(h)
    s = QAdd(beta0=3e-3)([inp, h])
    return inp, QDense(3, beta0=4e-3)(s)


def merges_without_iq():
    # Output quantizers before merges that take their inputs as they are (enable_iq=False).
    inp = keras.Input((6,))
    a = QDense(5, activation='relu', enable_oq=True, beta0=1e-3)(inp)
    b = QDense(5, enable_oq=True, beta0=1.5e-3)(inp)
    s = QAdd(enable_iq=False, beta0=2e-3)([a, b])
    m = QMultiply(enable_iq=False, enable_oq=True, beta0=2.5e-3)([s, b])
    return inp, QDense(2, beta0=3e-3)(m)


def merges():
    inp = keras.Input((6,))
    a = QDense(5, activation='relu', beta0=1e-3)(inp)
    b = QDense(5, beta0=1.5e-3)(inp)
    d = QSubtract(beta0=2e-3)([a, b])
    m = QMultiply(beta0=2.5e-3)([a, b])
    mx = QMaximum(beta0=3e-3)([a, b])
    mn = QMinimum(beta0=3.5e-3)([a, b])
    s = QAdd(beta0=4e-3)([d, m, mx, mn])
    return inp, QDense(2, beta0=4.5e-3)(s)


def two_inputs_two_outputs():
    xa = keras.Input((4,), name='xa')
    xb = keras.Input((4,), name='xb')
    s = QAdd(beta0=1e-3)([xa, xb])
    o1 = QDense(3, beta0=2e-3)(s)
    m = QMultiply(beta0=3e-3)([xa, xb])
    av = QAveragePow2(beta0=4e-3)([m, s, xb])  # 3 inputs: the sum times 2^round(log2(1/3)) = 1/4
    o2 = QDense(2, beta0=5e-3)(av)
    return [xa, xb], [o1, o2]


def batchnorm_chain():
    inp = keras.Input((10,))
    h = QDense(8, beta0=1e-3)(inp)
    h = QBatchNormalization(momentum=0.9, epsilon=0.01, beta0=2e-3)(h)
    h = QDense(4, activation='relu', beta0=3e-3)(h)
    return inp, QDense(3, beta0=4e-3)(h)


def conv_batchnorm_residual():
    inp = keras.Input((6, 6, 2))
    c = QConv2D(4, (3, 3), padding='same', beta0=1e-3)(inp)
    h = QBatchNormalization(beta0=2e-3)(c)
    h = QConv2D(4, (3, 3), padding='same', activation='relu', beta0=3e-3)(h)
    s = QAdd(beta0=4e-3)([c, h])
    g = QGlobalAveragePooling2D(beta0=5e-3)(s)
    return inp, QDense(3, beta0=6e-3)(g)


def cases(rng):
    return [
        graph_case('graph/residual-dense', rng, residual_dense, batch=3),
        graph_case('graph/merges', rng, merges, batch=3),
        graph_case('graph/two-inputs-two-outputs', rng, two_inputs_two_outputs, batch=3),
        graph_case('graph/batchnorm-chain', rng, batchnorm_chain, batch=4),
        graph_case('graph/conv-batchnorm-residual', rng, conv_batchnorm_residual, batch=2),
        graph_case('graph/merges-without-iq', rng, merges_without_iq, batch=3),
    ]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    keras.utils.set_random_seed(a.seed)
    meta = dict(hgq2=hgq.__version__ if hasattr(hgq, '__version__') else 'unknown', keras=keras.__version__,
                torch=torch.__version__, seed=a.seed)
    out = dict(meta=meta, graph=cases(rng))
    with open(a.out, 'w') as f:
        json.dump(out, f, separators=(',', ':'))


if __name__ == '__main__':
    main()
