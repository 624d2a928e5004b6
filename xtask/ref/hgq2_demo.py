"""The demo's recipe in the reference (hgq2, Keras 3), to compare against `cargo xtask demo`.

Usage: KERAS_BACKEND=jax python xtask/ref/hgq2_demo.py [--epochs 200] [--seed 0] [--beta 1e-5] [--model mlp|cnn]
Needs: pip install hgq2==0.2.0 keras jax numpy
Prints one JSON line: test accuracy, EBOPs after the tracing pass (hgq2's trace_minmax), train
seconds, the first epoch's seconds (jax compiles in it) and the median epoch after it in ms (the
steady-state step). The split is the demo's (SplitMix64 Fisher-Yates with the seed; the first 80% train).
"""
import argparse, gzip, json, os, time
os.environ.setdefault('KERAS_BACKEND', 'jax')
import numpy as np
import keras
from hgq.layers import QConv2D, QDense, QMaxPooling2D
from hgq.utils import trace_minmax

ap = argparse.ArgumentParser()
ap.add_argument('--epochs', type=int, default=200)
ap.add_argument('--seed', type=int, default=0)
ap.add_argument('--beta', type=float, default=1e-5)
ap.add_argument('--model', choices=['mlp', 'cnn'], default='mlp')
ap.add_argument('--data', default=os.path.join(os.path.dirname(__file__), '../../tests/data/digits/digits.csv.gz'))
a = ap.parse_args()

rows = np.loadtxt(gzip.open(a.data, 'rt'), delimiter=',', )
x, y = rows[:, :64].astype('float32') / 16.0, rows[:, 64].astype('int64')


class SplitMix64:
    """The demo's generator (crates/hgq-torch/examples/demo.rs), so both see the same split."""
    M = (1 << 64) - 1

    def __init__(self, seed):
        self.s = seed & self.M

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & self.M
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.M
        return z ^ (z >> 31)

    def shuffle(self, v):
        for i in range(len(v) - 1, 0, -1):
            j = self.next() % (i + 1)
            v[i], v[j] = v[j], v[i]


perm = list(range(len(x)))
SplitMix64(a.seed).shuffle(perm)
perm = np.array(perm)
n_train = int(round(0.8 * len(x)))
tr, te = perm[:n_train], perm[n_train:]
keras.utils.set_random_seed(a.seed)
inp = keras.Input((64,))
if a.model == 'mlp':
    h = QDense(32, activation='relu', beta0=a.beta)(inp)
else:  # the demo's --model cnn
    h = keras.layers.Reshape((8, 8, 1))(inp)
    h = QConv2D(8, (3, 3), activation='relu', beta0=a.beta)(h)
    h = QMaxPooling2D((2, 2), beta0=a.beta)(h)
    h = keras.layers.Flatten()(h)
out = QDense(10, beta0=a.beta)(h)
model = keras.Model(inp, out)
model.compile(optimizer=keras.optimizers.Adam(3e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=['accuracy'])


class EpochTimes(keras.callbacks.Callback):
    """Wall seconds of each epoch: the first includes jax's compile, the others are the step."""
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.time() - self.t)


epochs = EpochTimes()
t0 = time.time()
model.fit(x[tr], y[tr], batch_size=64, epochs=a.epochs, verbose=0, callbacks=[epochs])
train_s = time.time() - t0
ebops = trace_minmax(model, x[tr], batch_size=1024, verbose=False)
pred = np.argmax(model.predict(x[te], verbose=0), -1)
print(json.dumps(dict(backend=keras.backend.backend(), model=a.model, epochs=a.epochs, seed=a.seed, beta=a.beta,
                      test_accuracy=float(np.mean(pred == y[te])), ebops=float(ebops), train_seconds=train_s,
                      first_epoch_seconds=epochs.times[0],
                      epoch_ms_median=float(np.median(epochs.times[1:])) * 1e3 if a.epochs > 1 else None)))
