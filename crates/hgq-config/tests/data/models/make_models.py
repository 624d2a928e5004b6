"""Writes the reference model JSONs in this folder (`model.to_json()` of hgq2 models).

Run from this folder:  python make_models.py
Made with hgq2 0.2.0, keras 3.15.1, jax 0.10.2 (KERAS_BACKEND=jax), Python 3.11.
Each model is built after keras.backend.clear_session(), so auto names start afresh
(`input_layer`, `q_dense`, `q_dense_1`, `functional`).
"""

import os

os.environ['KERAS_BACKEND'] = 'jax'

import keras  # noqa: E402
from hgq.config import QuantizerConfig  # noqa: E402
from hgq.layers import QDense  # noqa: E402


def demo():
    # The demo network, exactly as in the task.
    inp = keras.Input((64,))
    x = QDense(32, activation='relu')(inp)
    out = QDense(10)(x)
    return keras.Model(inp, out)


def named():
    # User names, other sizes, beta0, activation, no bias on the last layer.
    inp = keras.Input((16,), name='features')
    x = QDense(8, activation='tanh', name='hidden', beta0=3e-6)(inp)
    out = QDense(4, activation=None, use_bias=False, name='logits')(x)
    return keras.Model(inp, out, name='mlp')


def quantizers():
    # Custom iq/kq/bq/oq configurations, three layers, ebops and iq switches.
    iq = QuantizerConfig('kif', 'datalane', i0=3, f0=4)
    kq = QuantizerConfig('kbi', 'weight', b0=6, i0=1)
    bq = QuantizerConfig('kif', 'bias', i0=1, f0=7, overflow_mode='SAT')
    oq = QuantizerConfig('kif', 'datalane', i0=4, f0=3, round_mode='TRN')
    inp = keras.Input((20,))
    x = QDense(12, activation='relu', iq_conf=iq, kq_conf=kq, bq_conf=bq, beta0=0)(inp)
    x = QDense(6, activation='sigmoid', enable_oq=True, oq_conf=oq, enable_ebops=False, parallelization_factor=3)(x)
    out = QDense(3, enable_iq=False, ebops_factor=0.5, beta0=2.5e-4)(x)
    return keras.Model(inp, out)


def mixed():
    # Named and unnamed layers mixed, a non-trainable layer with an output quantizer only.
    inp = keras.Input((7,), name='xin')
    x = QDense(5)(inp)
    kq = QuantizerConfig('kif', 'weight', f0=5)
    iq = QuantizerConfig('kbi', 'datalane', b0=6, i0=3)
    x = QDense(5, name='mid', activation='gelu', kq_conf=kq, iq_conf=iq, use_bias=False)(x)
    oq = QuantizerConfig('kbi', 'datalane', b0=5)
    out = QDense(3, activation='softmax', enable_iq=False, trainable=False, enable_oq=True, oq_conf=oq)(x)
    return keras.Model(inp, out, name='m2')


if __name__ == '__main__':
    for name, make in [('demo', demo), ('named', named), ('quantizers', quantizers), ('mixed', mixed)]:
        keras.backend.clear_session()
        with open(f'{name}.json', 'w') as f:
            f.write(make().to_json())
