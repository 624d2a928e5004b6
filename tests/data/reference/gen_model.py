"""A model trained in hgq2, written as an export folder, for hgq-torch's tests (`tests/keras_files.rs`):
hgq reads it (`Sequential::from_keras_json`, `load_keras_variables`) and must reproduce hgq2's outputs.

Usage: KERAS_BACKEND=jax python gen_model.py OUT_DIR [--seed N]
Needs: pip install 'hgq2==0.2.0' keras jax safetensors (the project's .venv-ref has them).
Writes OUT_DIR/model.json (`model.to_json()` before `compile`), weights.safetensors (every variable by its Keras path,
hgq2's dtypes, k as uint8; not the uint32 `ebops`), predictions.safetensors (`x`, and `y`: hgq2's inference outputs on it).
The model: Input(12) -> QDense(8, relu, beta0=1e-4) -> QDense(3), hgq2's default quantizers, trained
three epochs (Adam 3e-3, cross entropy from logits) on random data, then trace_minmax.
"""
import argparse
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')
import numpy as np  # noqa: E402
import keras  # noqa: E402
import hgq  # noqa: E402,F401
from hgq.layers import QDense  # noqa: E402
from hgq.utils import trace_minmax  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument('out')
ap.add_argument('--seed', type=int, default=0)
a = ap.parse_args()
os.makedirs(a.out, exist_ok=True)
keras.utils.set_random_seed(a.seed)
rng = np.random.default_rng(a.seed)
x = rng.uniform(-2, 2, (256, 12)).astype('float32')
y = (x[:, :4].sum(1) > 0).astype('int64') + (x[:, 4:8].sum(1) > 1).astype('int64')

inp = keras.Input((12,))
h = QDense(8, activation='relu', beta0=1e-4)(inp)
out = QDense(3)(h)
model = keras.Model(inp, out)
# The architecture before `compile` (a compiled model's JSON adds its `compile_config`, the
# optimizer and loss, which hgq's reader refuses: it reads models, not training set-ups).
architecture = model.to_json()
model.compile(optimizer=keras.optimizers.Adam(3e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x, y, batch_size=32, epochs=3, verbose=0)
trace_minmax(model, x, batch_size=256, verbose=0)

with open(os.path.join(a.out, 'model.json'), 'w') as f:
    f.write(architecture)


def key(v):
    """A variable's Keras path without the model's name, where it has it (as `weights.safetensors`)."""
    return v.path[len(model.name) + 1:] if v.path.startswith(model.name + '/') else v.path


# `.../ebops` (uint32 in hgq2: a dtype tch's safetensors reader does not take) stays out; it is
# bookkeeping a reader recomputes. `.../beta` stays in (a reader skips it).
weights = {key(v): np.array(v.value) for v in model.variables  # np.array keeps 0-d shapes
           if not key(v).endswith('/ebops')}
assert len(weights) == len(model.variables) - 2, 'two variables with one path'
save_file(weights, os.path.join(a.out, 'weights.safetensors'))
xt = x[:64]
save_file(dict(x=xt, y=np.asarray(model.predict(xt, verbose=0), dtype='float32')),
          os.path.join(a.out, 'predictions.safetensors'))
