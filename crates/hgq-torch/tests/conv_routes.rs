//! `QConv` on the CPU takes one of two routes by the size of the call: a small one as one gather
//! and one matrix product (`conv_gather`), a large one through libtorch's convolution. The same
//! samples give the same outputs either way (the quantized operands make every sum exact), and
//! the same gradients up to float32 summation order, for strides, `same` padding, dilation and
//! 1-D layers.
mod common;

use common::seeded;
use hgq_torch::hgq_core::CallMode;
use hgq_torch::layers::{Layer, Names, Padding, QConv, QConvBuilder};
use tch::{Device, Kind, Tensor, nn};

/// A batch large enough for libtorch's convolution (more than `3 << 17` gathered values) whose
/// first `small` samples are run alone through the gather.
fn check(builder: QConvBuilder, sample: &[i64], big: i64, small: i64) {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = builder.build(&vs.root(), &mut Names::default()).unwrap();
    let mut shape = vec![big];
    shape.extend_from_slice(sample);
    let x = seeded(7, || {
        Tensor::rand(shape.as_slice(), (Kind::Float, Device::Cpu)) * 6.0 - 3.0
    });
    let run = |x: &Tensor| {
        let x = x.detach().set_requires_grad(true);
        let y = layer.forward(&x, CallMode::Inference).unwrap().y;
        // A gradient that is not uniform, so the backward's sums are not trivial.
        let w = Tensor::arange(y.numel() as i64, (Kind::Float, Device::Cpu))
            .reshape(y.size())
            .remainder(7.0)
            - 3.0;
        (&y * &w).sum(Kind::Float).backward();
        (y.detach(), x.grad())
    };
    let (y_big, dx_big) = run(&x);
    let (y_small, dx_small) = run(&x.narrow(0, 0, small));
    let head = y_big.narrow(0, 0, small);
    assert!(head.equal(&y_small), "outputs differ");
    let dx_head = dx_big.narrow(0, 0, small);
    let err = (&dx_head - &dx_small).abs().max().double_value(&[]);
    assert!(err <= 1e-4, "input gradients differ by {err}");
}

#[test]
fn the_gather_and_libtorchs_convolution_agree() {
    check(QConv::builder_2d([8, 8, 2], 4, [3, 3]), &[8, 8, 2], 1024, 3);
    check(
        QConv::builder_2d([9, 7, 3], 5, [2, 3])
            .strides(&[2, 1])
            .padding(Padding::Same),
        &[9, 7, 3],
        1024,
        2,
    );
    check(
        QConv::builder_2d([10, 10, 2], 3, [3, 3]).dilation(&[2, 2]),
        &[10, 10, 2],
        1024,
        2,
    );
    check(
        QConv::builder_1d([40, 3], 4, 3)
            .strides(&[2])
            .padding(Padding::Same),
        &[40, 3],
        4096,
        3,
    );
}
