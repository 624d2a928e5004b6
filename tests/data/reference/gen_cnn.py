"""Reference values of hgq2's convolution, pooling and Flatten layers for hgq-torch's tests:
small functional CNNs (QConv1D/QConv2D, QMaxPooling1D/2D, QAveragePooling1D/2D, QGlobal{Max,Average}
Pooling1D/2D, keras Flatten, QDense) with hgq2's default quantizers: the forward pass, the EBOPs,
the gradients of a training step (inputs included), WRAP integer-bit tracking, trace_minmax and
inference, to be compared bit for bit.

Usage: KERAS_BACKEND=torch .venv/bin/python tests/data/reference/gen_cnn.py tests/data/reference/cnn.json [--seed N]
Needs: hgq2==0.2.0, quantizers==1.2.2, keras 3 and torch. The project's `.venv` has them all (keras
3.15.1, torch 2.11); `.venv-ref` has the same hgq2 but no torch (only jax), so it cannot run this.

Cases (see `cases()`; batches of 2 rows): conv2d-maxpool-dense, conv2d-same-stride-avgpool,
conv2d-dilation-groups, conv1d, conv1d-pools (planned with a causal conv, see below), pool2d-same and
pool1d-same ('same' average and max pooling, symmetric and asymmetric padding), output-quantizers
(enable_oq=True on a convolution, a pooling and a dense layer), ebops-options (enable_ebops=False,
ebops_factor), dense-nd-parallel (QDense on a 3-D input, parallelization factors of one's own),
no-input-quantizers (enable_iq=False after output quantizers);
layer descriptions carry `enable_iq`, `enable_oq`, `enable_ebops`, `ebops_factor` and, for QDense and the
convolutions, the resolved `parallelization_factor`. About 570 KB with
seed 0: the per-element input quantizers and the four copies of the state (initial + one per call)
make most of it, and each model_json is 11-17 KB.

Format (conventions of gen.py): every float array is a flat list in row-major order (float32 values
written exactly, as float64). Variables are keyed by their Keras path; a functional model's variables
carry no model-name prefix (`q_conv2d/kernel`, `q_conv2d/q_conv2d_kq/fixed_point_quantizer_kbi/b`),
so `path()` drops the model's name only where it is there. Every layer is channels_last.
Top level: {"meta": {hgq2, keras, torch, seed}, "cnn": [case, ...]}. A case:
  name          "cnn/..."
  input_shape   the model's input shape without the batch dimension
  model_json    `model.to_json()` right after building (before any call, weights or training)
  layers        one dict per layer (the InputLayer left out), in order, every value read from the
                built layer: kind (the class name), name, output_shape (without batch), and
                  QConv1D/QConv2D: filters, kernel_size, strides, padding ('valid'|'same'),
                    dilation_rate, groups, activation (keras name, 'linear' for none), use_bias, beta0
                  QMaxPooling*/QAveragePooling*: pool_size, strides (as Keras resolved them: pool_size
                    when None), padding, beta0
                  QGlobal*Pooling*: keepdims (always false here), beta0
                  QDense: units, activation, use_bias, beta0
                  Flatten: nothing more
  initial       {path: {shape, value}} of every variable after `assign_varied` (the state the calls
                start from)
  calls         [training, trace_minmax, inference], in that order, each changing the state:
    training:     x, dy, y (model(x, training=True)), ebops (per layer of `layers`: int(layer.ebops)
                  after the call, null for a layer without EBOPs, i.e. Flatten), losses (model.losses
                  in order: each quantized layer's beta * ebops, in layer order, then the MonoL1(1e-8)
                  regularizers of the trainable bit widths: iq f, kq b, bq b), grads
                  ({path: flat gradient} of every trainable variable, and "x": the gradient of the
                  input) of sum(y * dy) + sum(model.losses), state_after ({path: {shape, value}})
    trace_minmax: x (two batches), batch_size, ebops_total (what trace_minmax returns), ebops (per
                  layer, as above), state_after
    inference:    x, y (model(x, training=False)), state_after

hgq2 0.2.0 / Keras 3 (torch backend) behaviour these values hold:
- A conv/pooling layer's input quantizer is per element over the whole input, batch axis collapsed:
  iq `f`/`i`/`k` have shape (1, *input_shape); conv kq `b`/`i`/`k` have the kernel's shape
  (k..., in_channels / groups, filters); bq `b`/`i`/`k` have shape (filters,).
- QConv EBOPs = sum(conv(iq_bits(1, *input_shape), kq_bits)) (the layer's own strides, padding,
  dilation and groups on the bit widths), times parallelization_factor / n_parallel (1 by default),
  plus mean(bq bits) * prod(input_shape[:-1]) * filters: the bias term counts the INPUT's spatial
  size, not the output's.
- Pooling EBOPs = sum(iq bits over (1, *input_shape)) * parallelization_factor / n_parallel, where
  n_parallel = prod(output spatial dims) (1 for the global poolings); by default the factor cancels,
  so it is just the sum of the input bit widths (max and average alike).
- QConv1D padding='causal' does not work in hgq2 0.2.0: its call pads the input on the left by
  dilation * (kernel - 1) BEFORE the input quantizer, whose per-element `f`/`i` were built for the
  unpadded shape, and the first real call fails ("The expanded size of the tensor (11) must match
  the existing size (9)"; building the model symbolically succeeds). So the planned case
  `cnn/conv1d-causal-pools` is `cnn/conv1d-pools` here, with the conv's default 'valid' padding.
  (Were it to work, its EBOPs would see padding 'causal', which the torch backend's conv treats as
  'valid', on the unpadded input.)
- 'same' pooling on the torch backend (keras/src/backend/torch/nn.py): left pad = total // 2, right
  pad = the rest (per dim; total = pool - 1 for stride 1, else max(0, (ceil(L/s) - 1) s + pool - L)).
  Where every dim's padding is symmetric, torch pools with `padding=` and (average)
  count_include_pad=False: the average counts only the real elements. Where ANY dim is asymmetric,
  the input is padded in EVERY dim with mode='replicate' (edge values copied) and pooled with no
  padding: an average then counts the copied edge values (a window over the padding averages the
  edge value again, and its gradient reaches the edge element through every copy). Max pooling gives
  the same values either way (a window over the right padding holds the edge element itself).
  That average is the torch backend's alone: Keras' definition (its jax and TensorFlow backends,
  hgq2's default backend jax) and hls4ml's bit-exact firmware average the input's values only
  (`cargo xtask interop` on `cnn/pool1d-same` exported: hgq2 on jax = firmware, the replicated
  average differs on 46 of 512 rows). This generator therefore replaces the torch backend's
  `average_pool` by Keras' definition where the padding is asymmetric (`average_pool_as_keras`:
  window sums over zero padding divided by the count of input values in the window); every
  other value is hgq2's as it runs.
- Tied maxima (common: quantized values are coarse, and relu makes zeros; these data hold several):
  windowed max pooling (torch max_pool, CPU) sends the gradient to the FIRST maximum in the window's
  row-major order (a replicated copy never comes before its own edge element, so this is always a
  real element); the global max poolings (ops.max = torch.amax) split the gradient EVENLY among all
  tied maxima of a (row, channel).
- EBOPs are computed in float32 and cast to uint32 (truncation) for `layer.ebops`; the loss term is
  beta * the float32 value before the cast.
- 'same' convolution pads with zeros (torch's `padding=` when symmetric, else an explicit zero pad),
  left = total // 2 as in TensorFlow.
"""
import argparse
import json
import os

os.environ['KERAS_BACKEND'] = 'torch'
import numpy as np  # noqa: E402
import torch  # noqa: E402
import keras  # noqa: E402
import hgq  # noqa: E402,F401
from hgq.layers import (  # noqa: E402
    QAveragePooling1D, QAveragePooling2D, QConv1D, QConv2D, QDense, QGlobalAveragePooling1D,
    QGlobalAveragePooling2D, QGlobalMaxPooling1D, QGlobalMaxPooling2D, QMaxPooling1D, QMaxPooling2D,
)
from hgq.utils import trace_minmax  # noqa: E402
import keras.src.backend.torch.nn as torch_nn  # noqa: E402

_torch_average_pool = torch_nn.average_pool


def average_pool_as_keras(inputs, pool_size, strides=None, padding='valid', data_format=None):
    """Keras' average pooling (jax/TensorFlow semantics) where the torch backend replicates
    edges: 'same' with asymmetric padding averages the input's values only."""
    x = torch_nn.convert_to_tensor(inputs)
    rank = x.ndim - 2
    pool = torch_nn.standardize_tuple(pool_size, rank, 'pool_size')
    stride = pool if strides is None else torch_nn.standardize_tuple(strides, rank, 'strides')
    pads = [torch_nn._compute_padding_length(n, k, s) for n, k, s in zip(x.shape[1:-1], pool, stride)]
    if padding != 'same' or all(a == b for a, b in pads):
        return _torch_average_pool(inputs, pool_size, strides, padding, data_format)
    assert (data_format or 'channels_last') == 'channels_last'
    xc = torch.movedim(x, -1, 1)
    flat = [p for ab in reversed(pads) for p in ab]
    xp = torch.nn.functional.pad(xc, flat)
    ones = torch.nn.functional.pad(torch.ones((1, 1) + tuple(xc.shape[2:]), dtype=x.dtype), flat)
    if rank == 1:
        xp, ones = xp.unsqueeze(2), ones.unsqueeze(2)
        pool, stride = (1,) + tuple(pool), (1,) + tuple(stride)
    total = torch.nn.functional.avg_pool2d(xp, pool, stride, 0, divisor_override=1)
    count = torch.nn.functional.avg_pool2d(ones, pool, stride, 0, divisor_override=1)
    out = total / count
    if rank == 1:
        out = out.squeeze(2)
    return torch.movedim(out, 1, -1)


torch_nn.average_pool = average_pool_as_keras

Flatten = keras.layers.Flatten


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
    """Weights and bit widths away from their defaults (heterogeneous, non-integer raw bit
    widths), so that every element's own path is exercised."""
    for v in model.variables:
        name = v.path.split('/')[-1]
        shape = tuple(v.shape)
        if name == 'kernel':
            v.assign((rng.normal(size=shape) * 0.7).astype(np.float32))
        elif name == 'bias':
            v.assign((rng.normal(size=shape) * 0.4).astype(np.float32))
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


def describe(layer, out_shape):
    """The layer in the simple form the Rust tests build from, every value read from the layer."""
    kind = type(layer).__name__
    d = dict(kind=kind, name=layer.name)
    if kind in ('QConv1D', 'QConv2D'):
        d.update(filters=int(layer.filters), kernel_size=_tuple(layer.kernel_size), strides=_tuple(layer.strides),
                 padding=layer.padding, dilation_rate=_tuple(layer.dilation_rate), groups=int(layer.groups),
                 activation=_act(layer), use_bias=bool(layer.use_bias),
                 parallelization_factor=int(layer.parallelization_factor))
    elif kind in ('QMaxPooling1D', 'QMaxPooling2D', 'QAveragePooling1D', 'QAveragePooling2D'):
        d.update(pool_size=_tuple(layer.pool_size), strides=_tuple(layer.strides), padding=layer.padding)
    elif kind.startswith('QGlobal'):
        d.update(keepdims=bool(layer.keepdims))
    elif kind == 'QDense':
        d.update(units=int(layer.units), activation=_act(layer), use_bias=bool(layer.use_bias),
                 parallelization_factor=int(layer.parallelization_factor))
    elif kind == 'Flatten':
        pass
    else:
        raise ValueError(f'no description for {kind}')
    for k in ('padding',):
        if k in d:
            assert d[k] in ('valid', 'same', 'causal'), d[k]
    if hasattr(layer, 'enable_ebops'):
        d['enable_iq'] = bool(layer.enable_iq)
        d['beta0'] = float(layer._beta0.value)
        d['enable_oq'] = bool(layer.enable_oq)  # hgq2's default output quantizer when true
        d['enable_ebops'] = bool(layer.enable_ebops)
        d['ebops_factor'] = float(layer.ebops_factor)
    d['output_shape'] = [int(s) for s in out_shape[1:]]
    return d


def layer_ebops(model):
    return [int(npy(l_.ebops)) if getattr(l_, 'enable_ebops', False) else None for l_ in qlayers(model)]


def qlayers(model):
    return [l_ for l_ in model.layers if not isinstance(l_, keras.layers.InputLayer)]


def xs(rng, shape):
    """Inputs scaled by powers of two, so that WRAP and rounding matter."""
    return (rng.normal(size=shape) * 2.0 ** rng.integers(-1, 3, shape)).astype(np.float32)


def cnn_case(name, rng, input_shape, make_layers, batch):
    keras.backend.clear_session()  # layer and quantizer names counted from the start
    layers = make_layers()  # made after clear_session: their names and their quantizers' too
    inp = keras.Input(input_shape)
    x = inp
    descs = []
    for layer in layers:
        in_shape = tuple(x.shape)
        x = layer(x)
        out_shape = tuple(x.shape)
        assert tuple(layer.compute_output_shape(in_shape)) == out_shape, (layer.name, out_shape)
        descs.append(describe(layer, out_shape))
    model = keras.Model(inp, x)
    MODEL_NAME[0] = model.name
    model_json = model.to_json()  # before any call: the architecture only
    assert [l_.name for l_ in qlayers(model)] == [d['name'] for d in descs]
    assign_varied(model, rng)
    case = dict(name=name, input_shape=list(input_shape), model_json=model_json, layers=descs,
                initial=state(model), calls=[])
    out_shape = tuple(model.output.shape[1:])

    # A training step: outputs, EBOPs, the loss terms, the gradients (inputs too), the state after.
    x = xs(rng, (batch,) + tuple(input_shape))
    dy = rng.normal(size=(batch,) + out_shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    for v in model.trainable_variables:
        v.value.grad = None
    y = model(tx, training=True)
    losses = [npy(l_).item() for l_ in model.losses]
    loss = (y * torch.tensor(dy)).sum() + sum(model.losses)
    loss.backward()
    grads = {path(v): fl(npy(v.value.grad) if v.value.grad is not None else np.zeros(v.shape, np.float32))
             for v in model.trainable_variables}
    assert 'x' not in grads
    grads['x'] = fl(npy(tx.grad))
    case['calls'].append(dict(mode='training', x=fl(x), dy=fl(dy), y=fl(npy(y)), ebops=layer_ebops(model),
                              losses=losses, grads=grads, state_after=state(model)))

    # trace_minmax over two batches, then inference.
    xt = (rng.normal(size=(2 * batch,) + tuple(input_shape)) * 3.0).astype(np.float32)
    total = trace_minmax(model, xt, batch_size=batch)
    case['calls'].append(dict(mode='trace_minmax', x=fl(xt), batch_size=batch, ebops_total=int(total),
                              ebops=layer_ebops(model), state_after=state(model)))
    xi = (rng.normal(size=(batch,) + tuple(input_shape)) * 2.0).astype(np.float32)
    yi = npy(model(torch.tensor(xi), training=False))
    after = state(model)
    # hgq2 itself deterministic: the same inference again gives the same outputs and state.
    yi2 = npy(model(torch.tensor(xi), training=False))
    assert np.array_equal(yi, yi2), f'{name}: two inference calls differ'
    assert state(model) == after, f'{name}: inference changed the state'
    case['calls'].append(dict(mode='inference', x=fl(xi), y=fl(yi), state_after=after))
    return case


def cases(rng):
    return [
        cnn_case('cnn/conv2d-maxpool-dense', rng, (6, 6, 2), lambda: [
            QConv2D(3, (3, 3), activation='relu', beta0=1e-3),
            QMaxPooling2D((2, 2), beta0=2e-3),
            Flatten(),
            QDense(4, beta0=3e-3),
        ], batch=2),
        cnn_case('cnn/conv2d-same-stride-avgpool', rng, (7, 5, 2), lambda: [
            QConv2D(4, (2, 3), strides=(2, 1), padding='same', use_bias=False, beta0=1.5e-3),  # zero pads (0,1),(1,1)
            QAveragePooling2D((2, 2), strides=(1, 1), padding='valid', beta0=2.5e-3),
            QGlobalMaxPooling2D(beta0=3.5e-3),
            QDense(3, beta0=4.5e-3),
        ], batch=2),
        cnn_case('cnn/conv2d-dilation-groups', rng, (7, 7, 4), lambda: [
            QConv2D(4, (3, 3), dilation_rate=(2, 2), groups=2, activation='relu', beta0=1e-3),
            QGlobalAveragePooling2D(beta0=2e-3),
            QDense(2, beta0=3e-3),
        ], batch=2),
        cnn_case('cnn/conv1d', rng, (10, 3), lambda: [
            QConv1D(4, 3, dilation_rate=2, activation='relu', beta0=1e-3),
            QAveragePooling1D(2, beta0=2e-3),
            QConv1D(2, 2, strides=2, padding='same', beta0=3e-3),  # zero pads (0,1)
            Flatten(),
            QDense(3, beta0=4e-3),
        ], batch=2),
        # padding='causal' dropped: hgq2 0.2.0 cannot call it (see the docstring).
        cnn_case('cnn/conv1d-pools', rng, (9, 2), lambda: [
            QConv1D(3, 3, beta0=1e-3),
            QMaxPooling1D(3, strides=2, padding='same', beta0=2e-3),  # pads (1,1)
            QGlobalAveragePooling1D(beta0=3e-3),
            QDense(2, beta0=4e-3),
        ], batch=2),
        cnn_case('cnn/pool2d-same', rng, (5, 4, 2), lambda: [
            QAveragePooling2D((3, 3), strides=(1, 1), padding='same', beta0=1e-3),  # pads (1,1),(1,1)
            QAveragePooling2D((2, 2), padding='same', beta0=2e-3),  # pads (0,1),(0,0): replicate
            QMaxPooling2D((2, 2), strides=(1, 1), padding='same', beta0=3e-3),  # pads (0,1),(0,1)
            Flatten(),
            QDense(2, beta0=4e-3),
        ], batch=2),
        cnn_case('cnn/pool1d-same', rng, (6, 2), lambda: [
            QAveragePooling1D(3, strides=1, padding='same', beta0=1e-3),  # pads (1,1)
            QAveragePooling1D(3, strides=2, padding='same', beta0=2e-3),  # pads (0,1): replicate
            QMaxPooling1D(2, strides=1, padding='same', beta0=3e-3),  # pads (0,1): replicate
            QGlobalMaxPooling1D(beta0=4e-3),
            QDense(2, beta0=5e-3),
        ], batch=2),
        # Output quantizers (enable_oq, hgq2's default datalane config) after every layer kind.
        cnn_case('cnn/output-quantizers', rng, (6, 6, 2), lambda: [
            QConv2D(3, (3, 3), activation='relu', enable_oq=True, beta0=1e-3),
            QMaxPooling2D((2, 2), enable_oq=True, beta0=2e-3),
            Flatten(),
            QDense(4, enable_oq=True, beta0=3e-3),
        ], batch=2),
        # EBOPs off (enable_ebops=False: no beta, no ebops variables) and scaled (ebops_factor).
        cnn_case('cnn/ebops-options', rng, (6, 6, 2), lambda: [
            QConv2D(3, (3, 3), activation='relu', enable_ebops=False, beta0=1e-3),
            QMaxPooling2D((2, 2), ebops_factor=0.5, beta0=2e-3),
            Flatten(),
            QDense(4, ebops_factor=2.0, beta0=3e-3),
        ], batch=2),
        # Dense on the last axis of a 3-D input, and parallelization factors of one's own.
        cnn_case('cnn/dense-nd-parallel', rng, (4, 8), lambda: [
            QDense(5, activation='relu', parallelization_factor=2, beta0=1e-3),
            QConv1D(3, 2, parallelization_factor=1, beta0=2e-3),
            Flatten(),
            QDense(2, parallelization_factor=3, beta0=3e-3),
        ], batch=2),
        # No input quantizers (enable_iq=False, EBOPs off with them) after output quantizers.
        cnn_case('cnn/no-input-quantizers', rng, (6, 6, 2), lambda: [
            QConv2D(3, (3, 3), activation='relu', enable_oq=True, beta0=1e-3),
            QMaxPooling2D((2, 2), enable_iq=False, beta0=2e-3),
            Flatten(),
            QDense(4, enable_iq=False, enable_oq=True, beta0=3e-3),
            QDense(2, beta0=4e-3),
        ], batch=2),
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
    out = dict(meta=meta, cnn=cases(rng))
    with open(a.out, 'w') as f:
        json.dump(out, f, separators=(',', ':'))


if __name__ == '__main__':
    main()
