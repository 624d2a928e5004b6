"""Time the reference's training step (hgq2 on Keras 3) on the work of hgq-torch's hgq-bench-step.

Usage: KERAS_BACKEND=jax python hgq2_step.py [--threads 1] [--epochs 30] [--filter S]
Needs: pip install hgq2==0.2.0 keras jax numpy (`cargo xtask bench --step --reference` uses .venv-ref)

Models (hgq2's default quantizers, EBOPs in the loss with beta0 = 1e-5; Adam(3e-3), sparse
cross entropy from logits): step/mlp/h{h}/b{batch}: Input(64) -> QDense(h, relu) -> QDense(h, relu)
-> QDense(10) for h in 16, 32, 128, 512 and batch 64, 1024; step/demo/b64: Input(64) -> QDense(32,
relu) -> QDense(10), batch 64; step/cnn/b64: Input(64) -> Reshape(8, 8, 1) -> QConv2D(8, 3x3, relu) ->
QMaxPooling2D(2x2) -> Flatten -> QDense(10), batch 64. Data: 1438 rows x 64 features, 10 classes, drawn from SplitMix64
seeded with 0 exactly as hgq-bench-step draws them (per row 64 draws, pixel = draw % 17 / 16, then
label = draw % 10). `model.fit(x, y, batch_size=B, epochs=E, shuffle=False, verbose=0)` with a
callback that times each epoch (the loss is read at each epoch's end, which waits for its steps).
Prints one JSON object per line: {"backend", "case", "threads", "ms_per_step", "epoch_ms",
"first_epoch_ms", "steps", "loss"}: epoch_ms is the median epoch after the first (which compiles),
ms_per_step that divided by the steps of an epoch. `--threads 1` sets XLA's flags for one thread
as hgq2_ref.py does (jax still uses every CPU it may: `cargo xtask bench` pins the process to one).
"""
import argparse, json, math, os, statistics, time
ap = argparse.ArgumentParser()
ap.add_argument('--threads', type=int, default=1)
ap.add_argument('--epochs', type=int, default=30)
ap.add_argument('--filter', default='')
a = ap.parse_args()
if a.epochs < 2:
    raise SystemExit('--epochs must be at least 2 (the first is dropped)')
os.environ.setdefault('KERAS_BACKEND', 'jax')
if a.threads == 1:
    os.environ.setdefault('XLA_FLAGS', '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1')
import numpy as np, keras
from hgq.layers import QConv2D, QDense, QMaxPooling2D

ROWS, FEATURES, CLASSES, BETA, LR = 1438, 64, 10, 1e-5, 3e-3
M64 = (1 << 64) - 1


def splitmix64(state):
    """Yields SplitMix64's numbers from `state` (as hgq-bench-step's Rng)."""
    while True:
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        yield z ^ (z >> 31)


def data():
    rng = splitmix64(0)
    x = np.empty((ROWS, FEATURES), np.float32)
    y = np.empty(ROWS, np.int64)
    for r in range(ROWS):
        for c in range(FEATURES):
            x[r, c] = (next(rng) % 17) / 16.0
        y[r] = next(rng) % CLASSES
    return x, y


CASES = [(f'step/mlp/h{h}/b{b}', [h, h], b) for h in (16, 32, 128, 512) for b in (64, 1024)]
CASES.append(('step/demo/b64', [32], 64))
CASES.append(('step/cnn/b64', 'cnn', 64))


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ms, self.loss = [], math.nan

    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.loss = float(logs['loss'])  # waits for the epoch's steps
        self.ms.append((time.perf_counter() - self.t) * 1e3)


def run(hidden, batch, x, y):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((FEATURES,))]
    if hidden == 'cnn':  # the CNN demo's model
        layers += [keras.layers.Reshape((8, 8, 1)), QConv2D(8, (3, 3), activation='relu', beta0=BETA),
                   QMaxPooling2D((2, 2), beta0=BETA), keras.layers.Flatten()]
    else:
        layers += [QDense(h, activation='relu', beta0=BETA) for h in hidden]
    layers.append(QDense(CLASSES, beta0=BETA))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(LR), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = EpochTimer()
    model.fit(x, y, batch_size=batch, epochs=a.epochs, shuffle=False, verbose=0, callbacks=[timer])
    return timer


backend = keras.backend.backend()
if backend != 'jax':
    raise SystemExit(f'hgq2_step.py times the jax backend, not {backend}')
x, y = data()
selected = [c for c in CASES if a.filter in c[0]]
if not selected:
    raise SystemExit(f'no case matches --filter {a.filter!r}')
for name, hidden, batch in selected:
    t = run(hidden, batch, x, y)
    steps = math.ceil(ROWS / batch)
    epoch_ms = statistics.median(t.ms[1:])
    print(json.dumps(dict(backend=backend, case=name, threads=a.threads, ms_per_step=round(epoch_ms / steps, 4), epoch_ms=round(epoch_ms, 3),
                          first_epoch_ms=round(t.ms[0], 3), steps=steps, loss=round(t.loss, 5))), flush=True)
