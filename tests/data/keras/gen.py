"""Reference `.keras` archives of hgq2 models for hgq-keras' tests, and the check that Keras loads an
archive hgq-keras wrote.

Usage (from the repository root; the project's .venv has keras 3.15.1, hgq2 0.2.0, torch and h5py):

    KERAS_BACKEND=torch .venv/bin/python tests/data/keras/gen.py [--out DIR] [NAME ...]
        writes tests/data/keras/NAME.keras (hgq2's `model.save`) and NAME.json for the named models
        (all of them without names; into DIR with --out), each JSON:
        {"variables": [{"path", "dtype", "shape", "values"}...] in `model.variables` order,
         "optimizer_variables": [...] (the compiled MLP's Adam state; [] for the others),
         "inference": {x_shape, x, y_shape, y} (32 rows at several scales and the model's
         inference outputs, for hgq-torch's loading test)},
        values flat, row-major, floats as the exact float64 of each float32.

    KERAS_BACKEND=torch .venv/bin/python tests/data/keras/gen.py check ARCHIVE.keras REF.json [A2 R2 ...]
        `keras.models.load_model(ARCHIVE)` after `import hgq`, then every variable (and the
        optimizer's, when REF has them) must equal REF's by path (less a leading model name),
        dtype, shape and value, exactly.
        Prints `OK: ...` per archive and exits 0, or lists the differences and exits 1. Run it on archives
        hgq-keras wrote (`cargo run -p hgq-keras --example from_reference -- REF.json IN.keras
        OUT.keras`; `crates/hgq-keras/tests/keras_python.rs` does both).

The models (`keras.utils.clear_session()` before each, so the names restart as in a fresh process):
- mlp: Input(16) -> QDense(8, relu) -> QDense(4) (hgq-torch's demo is 64 -> 32 -> 10; smaller
  here to keep the files small), compiled (Adam 1e-3, mse) and trained one
  batch, so model.weights.h5 has an `optimizer` group;
- cnn: Input(6, 6, 2) -> QConv2D(3, (3, 3)) -> QMaxPooling2D((2, 2)) -> Flatten -> QDense(4),
  not compiled;
- seq: Sequential([Input(4), QDense(3, relu), QDense(2)]), not compiled: a Sequential has no
  `layers/input_layer` group, and names its variables `sequential/q_dense/kernel`;
- residual: Input(8) -> QDense(8, relu) -> QDense(8); QAdd([input, that]) -> QDense(3): a merge
  layer keeps its input quantizers in a `MultipleQuantizers` sub-layer, saved as
  `layers/q_add/iq/quantizers/{quantizer,quantizer_1}/quantizer`;
- merges: Input(6) -> a = QDense(6, relu), b = QDense(6); s = QSubtract([a, b]);
  m = QMultiply([s, b]); mx = QMaximum([m, a]); mn = QMinimum([mx, s]);
  av = QAveragePow2([mn, a, b]) (three inputs: `quantizers/quantizer_2`) -> QDense(3);
- bn: Input(10) -> QDense(8) -> QBatchNormalization() -> QDense(3) (variables bn_gamma, bn_beta,
  moving_mean, moving_variance, beta, ebops).
Every float variable is set from a seeded generator (kernels and biases N(0, 0.5), quantizer
bit widths uniform in [0, 6] (b, f) or [-2, 4] (i), k 0/1, a batch normalization's moving
variance uniform in [0.25, 2]), then one `model(x, training=True)` (the MLP: `train_on_batch`)
makes hgq2's ebops non-zero. mlp, cnn and seq draw from one generator, in that order (so
writing one of them builds those before it too); each later model has a generator of its own,
so that adding models changes none of the archives before them.
"""

import json
import os
import sys
import zlib

os.environ.setdefault('KERAS_BACKEND', 'torch')
import keras  # noqa: E402
import numpy as np  # noqa: E402

import hgq  # noqa: E402,F401
from hgq.layers import (  # noqa: E402
    QAdd,
    QAveragePow2,
    QBatchNormalization,
    QConv2D,
    QDense,
    QMaximum,
    QMaxPooling2D,
    QMinimum,
    QMultiply,
    QSubtract,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 1234


def randomize(model, rng):
    for v in model.variables:
        shape = tuple(v.shape)
        leaf = v.path.rsplit('/', 1)[-1]
        dtype = keras.backend.standardize_dtype(v.dtype)
        if dtype == 'uint8':
            value = rng.integers(0, 2, shape)
        elif not dtype.startswith('float'):
            continue
        elif leaf in ('b', 'f'):
            value = rng.uniform(0, 6, shape)
        elif leaf == 'i':
            value = rng.uniform(-2, 4, shape)
        elif leaf in ('beta', 'i_decay_speed'):
            value = rng.uniform(0, 1e-3, shape)
        elif leaf == 'moving_variance':
            value = rng.uniform(0.25, 2, shape)
        else:
            value = rng.normal(0, 0.5, shape)
        v.assign(np.asarray(value).astype(dtype))


def dump(variables):
    out = []
    for v in variables:
        a = keras.ops.convert_to_numpy(v.value)
        dtype = keras.backend.standardize_dtype(v.dtype)
        values = [float(x) for x in a.ravel()] if dtype.startswith('float') else [int(x) for x in a.ravel()]
        out.append({'path': v.path, 'dtype': dtype, 'shape': list(a.shape), 'values': values})
    return out


def mlp(rng):
    inp = keras.Input((16,))
    x = QDense(8, activation='relu')(inp)
    model = keras.Model(inp, QDense(4)(x))
    randomize(model, rng)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss='mse')
    x = rng.normal(0, 1, (16, 16)).astype('float32')
    y = rng.normal(0, 1, (16, 4)).astype('float32')
    model.train_on_batch(x, y)
    return model


def cnn(rng):
    inp = keras.Input((6, 6, 2))
    x = QConv2D(3, (3, 3))(inp)
    x = QMaxPooling2D((2, 2))(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, QDense(4)(x))
    randomize(model, rng)
    model(rng.normal(0, 1, (8, 6, 6, 2)).astype('float32'), training=True)
    return model


def seq(rng):
    model = keras.Sequential([keras.Input((4,)), QDense(3, activation='relu'), QDense(2)])
    randomize(model, rng)
    model(rng.normal(0, 1, (8, 4)).astype('float32'), training=True)
    return model


def residual(rng):
    inp = keras.Input((8,))
    x = QDense(8, activation='relu')(inp)
    x = QDense(8)(x)
    x = QAdd()([inp, x])
    model = keras.Model(inp, QDense(3)(x))
    randomize(model, rng)
    model(rng.normal(0, 1, (8, 8)).astype('float32'), training=True)
    return model


def merges(rng):
    inp = keras.Input((6,))
    a = QDense(6, activation='relu')(inp)
    b = QDense(6)(inp)
    s = QSubtract()([a, b])
    m = QMultiply()([s, b])
    mx = QMaximum()([m, a])
    mn = QMinimum()([mx, s])
    av = QAveragePow2()([mn, a, b])
    model = keras.Model(inp, QDense(3)(av))
    randomize(model, rng)
    model(rng.normal(0, 1, (8, 6)).astype('float32'), training=True)
    return model


def bn(rng):
    inp = keras.Input((10,))
    x = QDense(8)(inp)
    x = QBatchNormalization()(x)
    model = keras.Model(inp, QDense(3)(x))
    randomize(model, rng)
    model(rng.normal(0, 1, (8, 10)).astype('float32'), training=True)
    return model


# Drawing from one generator, in this order.
SHARED = [('mlp', mlp), ('cnn', cnn), ('seq', seq)]
# Each with a generator of its own (seeded by SEED and the name).
OWN = [('residual', residual), ('merges', merges), ('bn', bn)]
NAMES = [n for n, _ in SHARED + OWN]


def generate(names, out_dir):
    shared = np.random.default_rng(SEED)
    # The shared generator's models up to the last one asked for.
    last_shared = max((i for i, (n, _) in enumerate(SHARED) if n in names), default=-1)
    for k, (name, build) in enumerate(SHARED + OWN):
        if k < len(SHARED):
            if k > last_shared:
                continue
            rng = shared
        elif name in names:
            rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
        else:
            continue
        keras.utils.clear_session()
        keras.utils.set_random_seed(SEED)
        model = build(rng)
        if name not in names:
            continue  # built for the shared generator's sake
        ebops = [int(keras.ops.convert_to_numpy(v.value)) for v in model.variables if v.path.endswith('/ebops')]
        assert all(e > 0 for e in ebops), ebops
        model.save(os.path.join(out_dir, f'{name}.keras'))
        ref = {
            'keras_version': keras.__version__,
            'backend': keras.backend.backend(),
            'variables': dump(model.variables),
            'optimizer_variables': dump(model.optimizer.variables) if getattr(model, 'optimizer', None) else [],
        }
        # Inference on inputs of several scales (WRAP and saturation matter), from a generator
        # of their own so that the variables above do not depend on it.
        xrng = np.random.default_rng(SEED + 1)
        shape = (32,) + tuple(model.inputs[0].shape[1:])
        x = (xrng.normal(0, 1, shape) * 2.0 ** xrng.integers(-1, 4, shape)).astype('float32')
        y = keras.ops.convert_to_numpy(model(x, training=False))
        ref['inference'] = {'x_shape': list(x.shape), 'x': [float(v) for v in x.ravel()],
                            'y_shape': list(y.shape), 'y': [float(v) for v in y.ravel()]}
        with open(os.path.join(out_dir, f'{name}.json'), 'w') as f:
            json.dump(ref, f, separators=(',', ':'))
            f.write('\n')
        print(f'{name}: {len(ref["variables"])} variables, ebops {ebops}')


def check(archive, ref_path):
    with open(ref_path) as f:
        ref = json.load(f)
    keras.utils.clear_session()  # names as in a fresh process
    model = keras.models.load_model(archive)
    errors = []
    pairs = [('variables', model.variables)]
    if ref['optimizer_variables']:
        pairs.append(('optimizer_variables', model.optimizer.variables if getattr(model, 'optimizer', None) else []))
    n = 0
    # A Sequential names its variables `sequential/q_dense/kernel` when built at creation and
    # `q_dense/kernel` when loaded: compare paths without the model's name.
    def strip(vs):
        pre = model.name + '/'
        return [dict(v, path=v['path'][len(pre):] if v['path'].startswith(pre) else v['path']) for v in vs]

    for key, got in pairs:
        got = strip(dump(got))
        want = strip(ref[key])
        if [g['path'] for g in got] != [w['path'] for w in want]:
            errors.append(f'{key}: paths differ:\n  got  {[g["path"] for g in got]}\n  want {[w["path"] for w in want]}')
            continue
        for g, w in zip(got, want):
            n += 1
            for field in ('dtype', 'shape', 'values'):
                if g[field] != w[field]:
                    errors.append(f'{g["path"]}: {field} differs')
    if errors:
        print(f'FAILED: {archive}:\n' + '\n'.join(errors))
        return False
    print(f'OK: {archive}: {n} variables equal {ref_path}')
    return True


if __name__ == '__main__':
    args = sys.argv[2:]
    if len(sys.argv) >= 4 and sys.argv[1] == 'check' and len(args) % 2 == 0:
        results = [check(a, r) for a, r in zip(args[::2], args[1::2])]
        sys.exit(0 if all(results) else 1)
    elif len(sys.argv) < 2 or sys.argv[1] != 'check':
        args = sys.argv[1:]
        out_dir = HERE
        if args[:1] == ['--out'] and len(args) >= 2:
            out_dir, args = args[1], args[2:]
        unknown = [n for n in args if n not in NAMES]
        if unknown or any(a.startswith('-') for a in args):
            sys.exit(f'unknown models {unknown} (known: {NAMES})\n' + __doc__)
        os.makedirs(out_dir, exist_ok=True)
        generate(args or NAMES, out_dir)
    else:
        sys.exit(__doc__)
