"""Writes the reference model JSONs in this folder (`model.to_json()` of hgq2 models).

Run from this folder:  python make_models.py [NAME ...]   (all models without names)
Made with hgq2 0.2.0, keras 3.15.1, jax 0.10.2 (KERAS_BACKEND=jax), Python 3.11; the torch
backend (KERAS_BACKEND=torch, which this script then keeps) writes the same bytes for every model
here (checked for all of them; `seq_mlp` and `seq_cnn` were made with it).
Each model is built after keras.backend.clear_session(), so auto names start afresh
(`input_layer`, `q_dense`, `q_dense_1`, `functional`).

The first four (`demo`, `named`, `quantizers`, `mixed`) are chains of QDense layers
(`DenseModelSpec`); the next eight mix QConv1D/2D, the pooling layers, Flatten and Reshape
(`ChainModelSpec`); the `graph_*` ones are functional graphs with merge layers and
QBatchNormalization, several inputs and outputs (`GraphModelSpec`); the `seq_*` ones are
`keras.Sequential` models (`ChainModelSpec::from_keras_sequential_json`): `to_json()` of a
built Sequential (an `InputLayer` first, `build_input_shape`), whose layers' configs are those of
the same functional model, without `name` and `inbound_nodes` beside them. The `act_*`,
`graph_act` and `seq_act` ones put Keras' own `Activation` and `ReLU` layers between hgq2 layers
(`ActivationSpec`, `ReluSpec`). The last ones (`einsum`, `einsum_free`, `bn_dense`, `einsum_bn`,
`lut`, `softmax`, `graph_more`, `seq_more`) have hgq2's QEinsumDense, QEinsumDenseBatchnorm,
QBatchNormDense, QUnaryFunctionLUT and QSoftmax (`QEinsumDenseSpec`, ...).
"""

import os

import sys  # noqa: E402

os.environ.setdefault('KERAS_BACKEND', 'jax')

import keras  # noqa: E402
from hgq.config import QuantizerConfig  # noqa: E402
from hgq.layers import (  # noqa: E402
    QAdd,
    QAveragePooling1D,
    QAveragePow2,
    QBatchNormalization,
    QBatchNormDense,
    QAveragePooling2D,
    QConv1D,
    QConv2D,
    QDense,
    QEinsumDense,
    QEinsumDenseBatchnorm,
    QGlobalAveragePooling1D,
    QGlobalAveragePooling2D,
    QGlobalMaxPooling2D,
    QMaxPooling1D,
    QMaxPooling2D,
    QMaximum,
    QMinimum,
    QMultiply,
    QSoftmax,
    QSubtract,
    QUnaryFunctionLUT,
)


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


def cnn2d():
    # (a) Conv, max pooling, flatten, dense.
    inp = keras.Input((6, 6, 2))
    x = QConv2D(3, (3, 3), activation='relu')(inp)
    x = QMaxPooling2D((2, 2))(x)
    x = keras.layers.Flatten()(x)
    out = QDense(4)(x)
    return keras.Model(inp, out)


def cnn2d_same():
    # (b) Strides with 'same' padding, no bias, average pooling with strides, global max pooling.
    inp = keras.Input((7, 5, 2))
    x = QConv2D(4, (2, 3), strides=(2, 1), padding='same', use_bias=False, beta0=2e-5)(inp)
    x = QAveragePooling2D((2, 2), strides=(1, 1))(x)
    x = QGlobalMaxPooling2D()(x)
    out = QDense(3)(x)
    return keras.Model(inp, out)


def cnn1d():
    # (c) Dilation, a named conv (the unnamed one after it is `q_conv1d`), 1-D pooling.
    inp = keras.Input((10, 3))
    x = QConv1D(4, 3, dilation_rate=2, activation='relu', name='c1')(inp)
    x = QAveragePooling1D(2)(x)
    x = QConv1D(2, 2, strides=2, padding='same')(x)
    x = keras.layers.Flatten()(x)
    out = QDense(3)(x)
    return keras.Model(inp, out)


def causal():
    # (d) Causal padding, 'same' max pooling with strides, global average pooling.
    inp = keras.Input((9, 2))
    x = QConv1D(3, 3, padding='causal')(inp)
    x = QMaxPooling1D(3, strides=2, padding='same')(x)
    x = QGlobalAveragePooling1D()(x)
    out = QDense(2)(x)
    return keras.Model(inp, out)


def grouped():
    # (e) Groups, custom quantizers, output quantizers, explicit parallelization factors,
    # pooling without an input quantizer, global pooling with keepdims.
    iq = QuantizerConfig('kif', 'datalane', i0=3, f0=4)
    kq = QuantizerConfig('kbi', 'weight', b0=6)
    oq = QuantizerConfig('kif', 'datalane', i0=4, f0=3, round_mode='TRN')
    inp = keras.Input((5, 5, 4), name='img')
    x = QConv2D(
        4, (2, 2), groups=2, activation='tanh', iq_conf=iq, kq_conf=kq, enable_oq=True, oq_conf=oq,
        parallelization_factor=4, name='gconv',
    )(inp)
    x = QMaxPooling2D((2, 2), padding='same', enable_iq=False, enable_oq=True)(x)
    x = QGlobalAveragePooling2D(keepdims=True, ebops_factor=0.5, trainable=False, beta0=0)(x)
    x = keras.layers.Flatten()(x)
    out = QDense(2, enable_iq=False)(x)
    return keras.Model(inp, out, name='grouped')


def nd_dense():
    # (f) QDense on a 3-D input (the last axis), then flatten.
    inp = keras.Input((4, 8))
    x = QDense(5)(inp)
    x = keras.layers.Flatten()(x)
    out = QDense(2)(x)
    return keras.Model(inp, out)


def digits():
    # (g) The digits CNN: 8x8 images as 64 inputs.
    inp = keras.Input((64,))
    x = keras.layers.Reshape((8, 8, 1))(inp)
    x = QConv2D(4, (3, 3), activation='relu')(x)
    x = QMaxPooling2D((2, 2))(x)
    x = keras.layers.Flatten()(x)
    out = QDense(10)(x)
    return keras.Model(inp, out)


def misc():
    # Dilation in 2-D with 'same' padding, a kernel size given as one int, a Reshape with -1,
    # QDense on its 3-D output, named Flatten/Reshape, parallelization factors given.
    inp = keras.Input((8, 8, 1))
    x = QConv2D(2, (3, 3), dilation_rate=(2, 1), padding='same', parallelization_factor=8)(inp)
    x = QConv2D(3, 3, strides=2)(x)
    x = keras.layers.Reshape((-1, 3), name='rows')(x)
    x = QDense(4, parallelization_factor=2)(x)
    x = QDense(2)(x)
    x = keras.layers.Flatten(name='flat')(x)
    x = keras.layers.Reshape((6, 3))(x)
    x = QGlobalAveragePooling1D(parallelization_factor=3)(x)
    out = QDense(1)(x)
    return keras.Model(inp, out)


def graph_residual():
    # (a) A residual block of dense layers: the input is added to the block's output.
    inp = keras.Input((8,))
    x = QDense(8, activation='relu')(inp)
    x = QDense(8)(x)
    x = QAdd()([inp, x])
    out = QDense(3)(x)
    return keras.Model(inp, out)


def graph_ops():
    # (b) Two branches merged by every element-wise op, then added: per-input iq_confs,
    # a merge without its input quantizer, one with a single custom config and an oq.
    iq_a = QuantizerConfig('kif', 'datalane', i0=3, f0=4)
    iq_b = QuantizerConfig('kbi', 'datalane', b0=6, i0=2)
    iq = QuantizerConfig('kif', 'datalane', i0=1, f0=5, round_mode='TRN')
    inp = keras.Input((6,))
    a = QDense(5, activation='relu')(inp)
    b = QDense(5)(inp)
    s = QSubtract(iq_confs=[iq_a, iq_b])([a, b])
    m = QMultiply(beta0=2e-5, ebops_factor=0.5)([a, b])
    mx = QMaximum(enable_iq=False)([a, b])
    mn = QMinimum(iq_confs=iq, enable_oq=True, name='lowest')([a, b])
    x = QAdd()([s, m, mx, mn])
    out = QDense(2)(x)
    return keras.Model(inp, out, name='ops')


def graph_two_inputs():
    # (c) Two inputs, three outputs (one a merge layer itself).
    xa = keras.Input((4,), name='xa')
    xb = keras.Input((4,), name='xb')
    o1 = QDense(3)(QAdd()([xa, xb]))
    o2 = QDense(2)(QMultiply()([xa, xb]))
    o3 = QAveragePow2(enable_iq=False, enable_oq=True, trainable=False)([xa, xb])
    return keras.Model([xa, xb], [o1, o2, o3], name='two_in')


def graph_bn_dense():
    # (d) QBatchNormalization with its defaults between dense layers.
    inp = keras.Input((10,))
    x = QDense(8)(inp)
    x = QBatchNormalization()(x)
    x = QDense(4, activation='relu')(x)
    out = QDense(3)(x)
    return keras.Model(inp, out)


def graph_bn_conv():
    # (e) A residual convolution block with a batch normalization inside.
    inp = keras.Input((6, 6, 2))
    c = QConv2D(4, (3, 3), padding='same')(inp)
    x = QBatchNormalization()(c)
    x = QConv2D(4, (3, 3), padding='same', activation='relu')(x)
    x = QAdd()([c, x])
    x = QGlobalAveragePooling2D()(x)
    out = QDense(3)(x)
    return keras.Model(inp, out)


def graph_bn_custom():
    # (f) QBatchNormalization's options: momentum, epsilon, center, custom kq/bq, an oq;
    # a second one on axis 1 without scale nor input quantizer.
    kq = QuantizerConfig('kbi', 'weight', b0=6, i0=1)
    bq = QuantizerConfig('kif', 'bias', i0=2, f0=6, overflow_mode='SAT')
    inp = keras.Input((4, 3))
    x = QBatchNormalization(
        momentum=0.9, epsilon=1e-5, center=False, kq_conf=kq, bq_conf=bq, enable_oq=True, name='bn',
    )(inp)
    x = QBatchNormalization(axis=1, scale=False, enable_iq=False, beta0=0, trainable=False)(x)
    x = keras.layers.Flatten()(x)
    out = QDense(2)(x)
    return keras.Model(inp, out)


def seq_mlp():
    # (g) A Sequential MLP with a batch normalization.
    return keras.Sequential([
        keras.Input((16,)),
        QDense(8, activation='relu'),
        QBatchNormalization(),
        QDense(4),
    ])


def seq_cnn():
    # (h) A named Sequential CNN: reshape, convolution, pooling, flatten, dense; a named input.
    return keras.Sequential([
        keras.Input((64,), name='pixels'),
        keras.layers.Reshape((8, 8, 1)),
        QConv2D(4, (3, 3), activation='relu'),
        QMaxPooling2D((2, 2)),
        QConv2D(2, (2, 2), padding='same', use_bias=False),
        keras.layers.Flatten(),
        QDense(10),
    ], name='digits_seq')


def act_chain():
    # Keras' Activation and ReLU layers between dense layers.
    inp = keras.Input((16,))
    x = QDense(8)(inp)
    x = keras.layers.Activation('relu')(x)
    x = QDense(4)(x)
    x = keras.layers.ReLU()(x)
    out = QDense(2)(x)
    return keras.Model(inp, out)


def act_cnn():
    # A ReLU layer after a convolution, a named Activation and a named ReLU6 (not counted by
    # the automatic names: the last layer is `activation`), a linear Activation last.
    inp = keras.Input((6, 6, 2))
    x = QConv2D(3, (3, 3))(inp)
    x = keras.layers.ReLU()(x)
    x = QMaxPooling2D((2, 2))(x)
    x = keras.layers.Flatten()(x)
    x = QDense(4)(x)
    x = keras.layers.Activation('relu', name='act')(x)
    x = keras.layers.ReLU(max_value=6.0, name='relu6')(x)
    out = keras.layers.Activation('linear')(x)
    return keras.Model(inp, out)


def graph_act():
    # Activation layers in a graph: a leaky thresholded ReLU, 'swish' (written 'silu') on a
    # branch from the input, tanh after the merge, softmax last.
    inp = keras.Input((8,))
    x = QDense(8)(inp)
    x = keras.layers.ReLU(negative_slope=0.125, threshold=0.5)(x)
    x = QDense(8)(x)
    b = keras.layers.Activation('swish')(inp)
    x = QAdd()([b, x])
    x = keras.layers.Activation('tanh')(x)
    x = QDense(3)(x)
    out = keras.layers.Activation('softmax')(x)
    return keras.Model(inp, out)


def seq_act():
    # `act_chain()` as a Sequential.
    return keras.Sequential([
        keras.Input((16,)),
        QDense(8),
        keras.layers.Activation('relu'),
        QDense(4),
        keras.layers.ReLU(),
        QDense(2),
    ])


def einsum():
    # QEinsumDense: a dense layer on the last axis with a bias and an activation; `...` with an
    # int output_shape and a parallelization factor; two output axes with a 2-D bias, custom
    # quantizers and an output quantizer; a contraction over two axes without input quantizer.
    iq = QuantizerConfig('kif', 'datalane', i0=3, f0=4)
    kq = QuantizerConfig('kbi', 'weight', b0=6, i0=1)
    inp = keras.Input((4, 6))
    x = QEinsumDense('abc,cd->abd', (4, 5), bias_axes='d', activation='relu')(inp)
    x = QEinsumDense('...b,bc->...c', 3, kq_conf=kq, parallelization_factor=2)(x)
    x = QEinsumDense('abc,cde->abde', (4, 2, 2), bias_axes='de', iq_conf=iq, enable_oq=True, beta0=2e-5)(x)
    x = QEinsumDense('abcd,bcde->ae', (3,), bias_axes='e', enable_iq=False, name='reduce')(x)
    out = QDense(2)(x)
    return keras.Model(inp, out)


def einsum_free():
    # `...` on the right (a bias with trailing 1s), then output sizes left None (the input's)
    # on the last layer.
    inp = keras.Input((3, 4, 6))
    x = QEinsumDense('ab...,bc->ac...', (5,), bias_axes='c', ebops_factor=0.5)(inp)
    out = QEinsumDense('abcd,de->abce', (None, None, 2), bias_axes='e', trainable=False)(x)
    return keras.Model(inp, out)


def bn_dense():
    # QBatchNormDense with its defaults and an activation; one with its options (no scale,
    # momentum, epsilon, synchronized), custom quantizers, an output quantizer; then QDense.
    kq = QuantizerConfig('kbi', 'weight', b0=6, i0=1)
    bq = QuantizerConfig('kif', 'bias', i0=2, f0=6, overflow_mode='SAT')
    inp = keras.Input((10,))
    x = QBatchNormDense(8, activation='relu')(inp)
    x = QBatchNormDense(
        4, scale=False, momentum=0.9, epsilon=1e-5, synchronized=True, kq_conf=kq, bq_conf=bq,
        enable_oq=True, name='bnd',
    )(x)
    out = QDense(3)(x)
    return keras.Model(inp, out)


def einsum_bn():
    # QEinsumDenseBatchnorm: on the last axis with an activation; `...` with two normalized
    # output axes and options hgq2 does not write (normalize_axes, momentum, epsilon, center,
    # scale: lost in the JSON); a 3-D input with a parallelization factor given.
    inp = keras.Input((4, 6))
    x = QEinsumDenseBatchnorm('abc,cd->abd', (4, 5), bias_axes='d', activation='relu')(inp)
    x = QEinsumDenseBatchnorm(
        '...c,cde->...de', (3, 2), bias_axes='de', normalize_axes='e', momentum=0.9, epsilon=1e-5,
        center=False, scale=False, enable_oq=True,
    )(x)
    x = keras.layers.Flatten()(x)
    out = QDense(2)(x)
    return keras.Model(inp, out)


def lut():
    # QUnaryFunctionLUT: its defaults; without input quantizer; homogeneous input and table
    # with a custom table quantizer and k0 forced to 0 ('swish' is written 'silu'); the identity
    # without output quantizer (hgq2 keeps enable_ebops=True there).
    oq = QuantizerConfig('kif', 'datalane', i0=1, f0=5)
    inp = keras.Input((8,))
    x = QDense(8)(inp)
    x = QUnaryFunctionLUT('tanh')(x)
    x = QDense(4)(x)
    x = QUnaryFunctionLUT('sigmoid', enable_iq=False, beta0=0)(x)
    x = QDense(4, enable_iq=False)(x)
    x = QUnaryFunctionLUT(
        'swish', allow_heterogeneous_input=False, allow_heterogeneous_table=False,
        override_oq_k0_to_0=True, oq_conf=oq, name='act',
    )(x)
    out = QUnaryFunctionLUT('linear', enable_oq=False, ebops_factor=0.5)(x)
    return keras.Model(inp, out)


def softmax():
    # QSoftmax: its defaults (last axis); over axis 1 unstable with an input quantizer;
    # over two axes with heterogeneous tables, custom table quantizers (changed by hgq2),
    # an input scaler, a parallelization factor, an output quantizer, no EBOPs; a last one
    # after a dense layer.
    exp_oq = QuantizerConfig('kif', 'table', i0=1, f0=7)
    inv_iq = QuantizerConfig('kbi', 'datalane', b0=7)
    inp = keras.Input((4, 6))
    x = QDense(6)(inp)
    x = QSoftmax()(x)
    x = QSoftmax(axis=1, stable=False, enable_iq=True, name='col_softmax')(x)
    x = QSoftmax(
        axis=(1, 2), allow_heterogeneous_table=True, input_scaler=0.5, parallelization_factor=2,
        exp_oq_conf=exp_oq, inv_iq_conf=inv_iq, enable_oq=True, enable_ebops=False, beta0=0,
    )(x)
    x = keras.layers.Flatten()(x)
    x = QDense(3)(x)
    out = QSoftmax(axis=-1, trainable=False)(x)
    return keras.Model(inp, out)


def graph_more():
    # A graph of the new layers: an einsum and a softmax on one branch, a LUT on the input on
    # the other, added, then an einsum batch normalization (two outputs).
    inp = keras.Input((4, 6))
    a = QEinsumDense('abc,cd->abd', (4, 6), bias_axes='d')(inp)
    a = QSoftmax()(a)
    b = QUnaryFunctionLUT('tanh')(inp)
    x = QAdd()([a, b])
    out = QEinsumDenseBatchnorm('abc,cb->ab', (4,), bias_axes='b')(x)
    return keras.Model(inp, [out, b])


def seq_more():
    # A Sequential of the new layers.
    return keras.Sequential([
        keras.Input((4, 6)),
        QEinsumDense('abc,cd->abd', (4, 5), bias_axes='d'),
        QUnaryFunctionLUT('tanh'),
        QSoftmax(),
        keras.layers.Flatten(),
        QBatchNormDense(3),
    ])


MODELS = [
    ('demo', demo),
    ('named', named),
    ('quantizers', quantizers),
    ('mixed', mixed),
    ('cnn2d', cnn2d),
    ('cnn2d_same', cnn2d_same),
    ('cnn1d', cnn1d),
    ('causal', causal),
    ('grouped', grouped),
    ('nd_dense', nd_dense),
    ('digits', digits),
    ('misc', misc),
    ('graph_residual', graph_residual),
    ('graph_ops', graph_ops),
    ('graph_two_inputs', graph_two_inputs),
    ('graph_bn_dense', graph_bn_dense),
    ('graph_bn_conv', graph_bn_conv),
    ('graph_bn_custom', graph_bn_custom),
    ('seq_mlp', seq_mlp),
    ('seq_cnn', seq_cnn),
    ('act_chain', act_chain),
    ('act_cnn', act_cnn),
    ('graph_act', graph_act),
    ('seq_act', seq_act),
    ('einsum', einsum),
    ('einsum_free', einsum_free),
    ('bn_dense', bn_dense),
    ('einsum_bn', einsum_bn),
    ('lut', lut),
    ('softmax', softmax),
    ('graph_more', graph_more),
    ('seq_more', seq_more),
]


if __name__ == '__main__':
    names = sys.argv[1:] or [n for n, _ in MODELS]
    unknown = set(names) - {n for n, _ in MODELS}
    if unknown:
        sys.exit(f'unknown models: {sorted(unknown)}')
    for name, make in MODELS:
        if name not in names:
            continue
        keras.backend.clear_session()
        with open(f'{name}.json', 'w') as f:
            f.write(make().to_json())
