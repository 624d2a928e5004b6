"""Reference values of hgq2's layers for hgq-torch's tests: QDense models (forward, EBOPs, the
gradients of a training step, WRAP integer-bit tracking, trace_minmax, inference) and the
Quantizer layer's scaler, qnoise_factor and affine.

Usage: KERAS_BACKEND=torch python gen.py OUT.json [--seed N]
Needs: pip install 'hgq2==0.2.0' 'quantizers==1.2.2' keras torch (the project's .venv has them).
Every float array is a flat list in row-major order (float32 values written exactly). Variables
are keyed by hgq2's Keras path (`q_dense/q_dense_iq/fixed_point_quantizer_kif/f`, ...). The
gradients are those of `sum(y * dy) + sum(model.losses)` (the EBOPs terms, beta * ebops).
"""
import argparse
import json
import os

os.environ['KERAS_BACKEND'] = 'torch'
import numpy as np  # noqa: E402
import torch  # noqa: E402
import keras  # noqa: E402
import hgq  # noqa: E402,F401
from hgq.layers import QDense  # noqa: E402
from hgq.quantizer import Quantizer, QuantizerConfig  # noqa: E402
from hgq.utils import trace_minmax  # noqa: E402


def fl(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def npy(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def path(v):
    """A variable's Keras path without the model's name (as a layer of ours names it)."""
    return v.path.split('/', 1)[1]


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


def qdense_case(name, rng, n_in, hidden, n_out, batch, act):
    keras.backend.clear_session()  # layer and quantizer names counted from the start
    model = keras.Sequential([
        keras.Input((n_in,)),
        QDense(hidden, activation=act, beta0=1e-3),
        QDense(n_out, beta0=2e-3),
    ])
    assign_varied(model, rng)
    case = dict(name=name, n_in=n_in, hidden=hidden, n_out=n_out, activation=act or 'linear',
                betas=[1e-3, 2e-3], initial=state(model), calls=[])
    # A training step: outputs, EBOPs, the loss terms, the gradients, the state after.
    x = (rng.normal(size=(batch, n_in)) * 2.0 ** rng.integers(-1, 3, (batch, n_in))).astype(np.float32)
    dy = rng.normal(size=(batch, n_out)).astype(np.float32)
    for v in model.trainable_variables:
        v.value.grad = None
    y = model(torch.tensor(x), training=True)
    losses = [npy(l_).item() for l_ in model.losses]
    loss = (y * torch.tensor(dy)).sum() + sum(model.losses)
    loss.backward()
    grads = {path(v): fl(npy(v.value.grad) if v.value.grad is not None else np.zeros(v.shape, np.float32))
             for v in model.trainable_variables}
    case['calls'].append(dict(mode='training', x=fl(x), dy=fl(dy), y=fl(npy(y)),
                              ebops=[int(npy(l_.ebops)) for l_ in model.layers], losses=losses,
                              grads=grads, state_after=state(model)))
    # trace_minmax over two batches, then inference.
    xt = (rng.normal(size=(2 * batch, n_in)) * 3.0).astype(np.float32)
    total = trace_minmax(model, xt, batch_size=batch)
    case['calls'].append(dict(mode='trace_minmax', x=fl(xt), batch_size=batch, ebops_total=int(total),
                              ebops=[int(npy(l_.ebops)) for l_ in model.layers], state_after=state(model)))
    xi = (rng.normal(size=(batch, n_in)) * 2.0).astype(np.float32)
    yi = model(torch.tensor(xi), training=False)
    case['calls'].append(dict(mode='inference', x=fl(xi), y=fl(npy(yi)), state_after=state(model)))
    return case


def quantizer_case(name, rng, conf_kwargs, shape):
    """The Quantizer layer with scaler / qnoise_factor / affine: training (with gradients of
    sum(y * dy)) and inference."""
    q = Quantizer(QuantizerConfig('kif', 'datalane', **conf_kwargs))
    q.build(shape)
    for v in q.variables:
        n = v.path.split('/')[-1]
        s = tuple(v.shape)
        if n == 'i':
            v.assign((rng.integers(0, 3, s) + rng.uniform(-0.45, 0.45, s)).astype(np.float32))
        elif n == 'f':
            v.assign((rng.integers(1, 5, s) + rng.uniform(-0.45, 0.45, s)).astype(np.float32))
    case = dict(name=name, config={k: (list(v) if isinstance(v, tuple) else v) for k, v in conf_kwargs.items()},
                input_shape=list(shape), initial={v.path.split('/')[-1]: dict(shape=list(v.shape), value=fl(npy(v.value)))
                                                  for v in q.variables}, calls=[])
    for mode in ('training', 'inference'):
        x = (rng.normal(size=shape) * 3.0).astype(np.float32)
        dy = rng.normal(size=shape).astype(np.float32)
        tx = torch.tensor(x, requires_grad=True)
        for v in q.trainable_variables:
            v.value.grad = None
        y = q(tx, training=(mode == 'training'))
        call = dict(mode=mode, x=fl(x), y=fl(npy(y)))
        if mode == 'training':
            (y * torch.tensor(dy)).sum().backward()
            call['dy'] = fl(dy)
            call['grads'] = {'x': fl(npy(tx.grad))}
            for v in q.trainable_variables:
                g = v.value.grad
                call['grads'][v.path.split('/')[-1]] = fl(npy(g) if g is not None else np.zeros(v.shape, np.float32))
        call['state_after'] = {v.path.split('/')[-1]: fl(npy(v.value)) for v in q.variables}
        case['calls'].append(call)
    return case


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('out')
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    keras.utils.set_random_seed(a.seed)
    cases = [
        qdense_case('qdense/16-8-5/relu/b6', rng, 16, 8, 5, 6, 'relu'),
        qdense_case('qdense/12-7-3/linear/b9', rng, 12, 7, 3, 9, None),
    ]
    qcases = [
        quantizer_case('quantizer/scaler', rng, dict(scaler=0.5), (4, 6)),
        quantizer_case('quantizer/qnoise', rng, dict(qnoise_factor=0.25), (4, 6)),
        quantizer_case('quantizer/affine', rng, dict(affine=(2.0, -1.0)), (4, 6)),
        quantizer_case('quantizer/all', rng, dict(scaler=0.75, qnoise_factor=0.5, affine=(-1.5, 0.25)), (4, 6)),
    ]
    meta = dict(hgq2=hgq.__version__ if hasattr(hgq, '__version__') else 'unknown', keras=keras.__version__,
                torch=torch.__version__, seed=a.seed)
    with open(a.out, 'w') as f:
        json.dump(dict(meta=meta, qdense=cases, quantizer=qcases), f, separators=(',', ':'))


if __name__ == '__main__':
    main()
