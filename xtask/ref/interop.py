"""`cargo xtask interop PATH`: a model of this project run by hgq2 and by hls4ml's firmware.

Usage: KERAS_BACKEND=jax python xtask/ref/interop.py PATH OURS [WORK]

PATH is an export folder (below) or a `.keras` archive, opened with
`keras.models.load_model(PATH, compile=False)` (its variables are the archive's).
Needs: hgq2==0.2.0, keras, jax, safetensors, numpy, hls4ml==1.3.0 and g++ (xtask installs the
Python part into .venv-ref).

DIR is an export folder (`cargo xtask demo --out DIR`): `model.json` (Keras JSON), `weights.safetensors`
(by Keras variable path), `predictions.safetensors` (`x`, the inputs, and `y`, our outputs on them
when exported). OURS is a safetensors file of `x` and `y`: the model read back into hgq-torch
and run on `x` (`hgq-interop`, run by `cargo xtask interop`). When its `x` is the export's own,
our outputs then are also compared with the exported ones (`ours_vs_export`).
The model is loaded into hgq2 (every variable of the file must match one of the model's, by path
and shape), converted by hls4ml (Vitis, io_parallel, bit_exact=True) and compiled with g++. The
same `x` goes through hgq2 and the firmware; twice `x` too (the overflow paths), through both.
Prints one JSON line: rows, per pair how many rows differ (any element not identical) and the
largest difference, unmatched variables and unused tensors. Exit 1 on any difference.
"""
import json, os, sys, tempfile
os.environ.setdefault('KERAS_BACKEND', 'jax')
import numpy as np
import keras
import hgq  # noqa: F401  (registers hgq2's layers with Keras)
from safetensors.numpy import load_file

out = sys.argv[1]
ours = load_file(sys.argv[2])
work = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix='hgq_interop_')
x, y = ours['x'], ours['y']
archive = out.endswith('.keras')
if archive:
    model = keras.models.load_model(out, compile=False)
    w, p = {}, None
else:
    model = keras.models.model_from_json(open(os.path.join(out, 'model.json')).read())
    w = load_file(os.path.join(out, 'weights.safetensors'))
    p = load_file(os.path.join(out, 'predictions.safetensors'))
    model(x[:1])
unmatched, used = [], set()
for v in ([] if archive else model.variables):
    key = v.path[len(model.name) + 1:] if v.path.startswith(model.name + '/') else v.path
    if key in w:
        if tuple(w[key].shape) != tuple(v.shape):
            unmatched.append(f'{key}: shape {w[key].shape} != {tuple(v.shape)}')
            continue
        v.assign(w[key].astype(v.dtype))
        used.add(key)
    elif key.endswith('/ebops') or key.endswith('/beta'):
        continue  # hgq2's bookkeeping, recomputed by the model
    else:
        unmatched.append(key)
unused = sorted(set(w) - used)


def differ(a, b):
    """(rows whose outputs are not identical, largest absolute difference)."""
    if a.shape != b.shape:
        return len(a), float('inf')
    return int(np.sum(np.any(a != b, axis=-1))), float(np.max(np.abs(a - b))) if a.size else 0.0


from hls4ml.converters import convert_from_keras_model  # noqa: E402

hls = convert_from_keras_model(model, output_dir=os.path.join(work, 'prj'), backend='Vitis',
                               io_type='io_parallel', bit_exact=True)
hls.compile()
res = dict(rows=int(len(y)), unmatched_variables=unmatched, unused_tensors=unused)
if p is not None and p['x'].shape == x.shape and np.array_equal(p['x'], x):
    res['ours_vs_export_rows_differ'], res['ours_vs_export_max_abs'] = differ(y, p['y'])
hk = np.asarray(model.predict(x, verbose=0))
fw = np.asarray(hls.predict(np.ascontiguousarray(x, dtype=np.float32))).reshape(hk.shape)
for name, (a, b) in dict(ours_vs_hgq2=(y, hk), ours_vs_firmware=(y, fw), hgq2_vs_firmware=(hk, fw)).items():
    res[name + '_rows_differ'], res[name + '_max_abs'] = differ(a, b)
x2 = np.ascontiguousarray(2 * x, dtype=np.float32)
k2 = np.asarray(model.predict(x2, verbose=0))
f2 = np.asarray(hls.predict(x2)).reshape(k2.shape)
res['x2_hgq2_vs_firmware_rows_differ'], res['x2_hgq2_vs_firmware_max_abs'] = differ(k2, f2)
print(json.dumps(res))
ok = not unmatched and not unused and all(res[k] == 0 for k in res if k.endswith('_rows_differ'))
sys.exit(0 if ok else 1)
