//! The fused CPU kernels (`sepprune::ops::kernels`) against their decomposed Candle forms:
//! the same values and the same gradients (f64), on random shapes and parameters.
use candle_core::{DType, Device, Tensor, Var};
use proptest::prelude::*;
use sepprune::learn::fuse::Kind;
use sepprune::ops::kernels;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
            (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Max |a - b| over the values of `f` and the gradients of `sum(f * r)` with respect to
/// every input, between the fused (`fused`) and decomposed (`plain`) forms.
fn compare(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    plain: impl Fn(&[Tensor]) -> Tensor,
) -> f64 {
    let run = |f: &dyn Fn(&[Tensor]) -> Tensor| {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let r = rand(y.dims(), 99);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![y.flatten_all().unwrap().to_vec1::<f64>().unwrap()];
        for v in &vars {
            let g = grads
                .get(v.as_tensor())
                .expect("a gradient for every input");
            out.push(g.flatten_all().unwrap().to_vec1::<f64>().unwrap());
        }
        out
    };
    let (a, b) = (run(&fused), run(&plain));
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        for (u, v) in x.iter().zip(y) {
            worst = worst.max((u - v).abs());
        }
    }
    worst
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn depthwise_conv1d_matches_pad_and_taps(
        n in 1usize..3, c in 1usize..5, t in 1usize..40, k in 1usize..5,
        dil in 1usize..4, pl in 0usize..6, pr in 0usize..6, seed in 0u64..1000,
    ) {
        prop_assume!(t + pl + pr > dil * (k - 1));
        let x = rand(&[n, c, t], seed);
        let w = rand(&[c, 1, k], seed + 1);
        let d = compare(
            &[x, w],
            |v| kernels::depthwise_conv1d(&v[0], &v[1], (pl, pr), dil).unwrap().expect("applies"),
            |v| {
                let xp = v[0].pad_with_zeros(2, pl, pr).unwrap();
                xp.conv1d(&v[1], 0, 1, dil, c).unwrap()
            },
        );
        prop_assert!(d < 1e-12, "max difference {d}");
    }

    #[test]
    fn prelu_matches_relu_form(
        shape in prop::collection::vec(1usize..6, 1..4), axis_pick in 0usize..4, scalar in any::<bool>(), seed in 0u64..1000,
    ) {
        let rank = shape.len();
        let slope_shape: Vec<usize> = if scalar {
            vec![1]
        } else {
            // per-channel along one axis, right-aligned as ONNX writes it ([C, 1, ..])
            let a = axis_pick % rank;
            shape[a..].iter().enumerate().map(|(i, &d)| if i == 0 { d } else { 1 }).collect()
        };
        let x = rand(&shape, seed);
        let s = rand(&slope_shape, seed + 7);
        let d = compare(
            &[x, s],
            |v| kernels::prelu(&v[0], &v[1]).unwrap().expect("applies"),
            |v| {
                let r = v[0].relu().unwrap();
                let neg = (&v[0] - &r).unwrap();
                r.broadcast_add(&neg.broadcast_mul(&v[1]).unwrap()).unwrap()
            },
        );
        prop_assert!(d < 1e-12, "max difference {d}");
    }

    #[test]
    fn normalize_matches_reduce_mean_form(
        shape in prop::collection::vec(1usize..7, 2..4), from_pick in 1usize..4, seed in 0u64..1000,
    ) {
        let from = 1 + (from_pick - 1) % (shape.len() - 1);
        let x = (rand(&shape, seed) * 3.0).unwrap();
        let eps = 1e-8;
        let axes: Vec<usize> = (from..shape.len()).collect();
        let d = compare(
            &[x],
            |v| kernels::normalize(&v[0], from, eps).unwrap().expect("applies"),
            |v| {
                let d = v[0].broadcast_sub(&v[0].mean_keepdim(axes.clone()).unwrap()).unwrap();
                let var = d.sqr().unwrap().mean_keepdim(axes.clone()).unwrap();
                d.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap()
            },
        );
        prop_assert!(d < 1e-9, "max difference {d}");
    }

    #[test]
    fn normalize_affine_matches_reduce_mean_then_mul_add(
        shape in prop::collection::vec(1usize..7, 2..5), from_pick in 1usize..4, axis_pick in 0usize..4,
        bias in any::<bool>(), offset in -50.0f64..50.0, seed in 0u64..1000,
    ) {
        let from = 1 + (from_pick - 1) % (shape.len() - 1);
        let axis = from + axis_pick % (shape.len() - from);
        // an offset far from zero: the kernel must centre before it scales
        let x = ((rand(&shape, seed) * 3.0).unwrap() + offset).unwrap();
        let eps = 1e-8;
        let axes: Vec<usize> = (from..shape.len()).collect();
        let pshape: Vec<usize> = shape[axis..].iter().enumerate().map(|(i, &d)| if i == 0 { d } else { 1 }).collect();
        let mut inputs = vec![x, rand(&pshape, seed + 1)];
        if bias {
            inputs.push(rand(&[shape[axis]], seed + 2));
        }
        let d = compare(
            &inputs,
            |v| kernels::normalize_affine(&v[0], from, eps, &v[1], v.get(2), axis).unwrap().expect("applies"),
            |v| {
                let d = v[0].broadcast_sub(&v[0].mean_keepdim(axes.clone()).unwrap()).unwrap();
                let var = d.sqr().unwrap().mean_keepdim(axes.clone()).unwrap();
                let n = d.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap();
                let y = n.broadcast_mul(&v[1]).unwrap();
                match v.get(2) {
                    Some(b) => y.broadcast_add(&b.reshape(pshape.as_slice()).unwrap()).unwrap(),
                    None => y,
                }
            },
        );
        prop_assert!(d < 1e-9, "max difference {d}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn channel_affine_matches_broadcast_mul_add(
        shape in prop::collection::vec(1usize..6, 1..4), axis_pick in 0usize..4, bias in any::<bool>(), seed in 0u64..1000,
    ) {
        let axis = axis_pick % shape.len();
        let c = shape[axis];
        // the parameters as a norm holds them: [C, 1, ..] right-aligned to the axis
        let pshape: Vec<usize> = shape[axis..].iter().enumerate().map(|(i, &d)| if i == 0 { d } else { 1 }).collect();
        let mut inputs = vec![rand(&shape, seed), rand(&pshape, seed + 1)];
        if bias {
            inputs.push(rand(&[c], seed + 2).reshape(pshape.as_slice()).unwrap());
        }
        let d = compare(
            &inputs,
            |v| kernels::channel_affine(&v[0], &v[1], v.get(2), axis).unwrap().expect("applies"),
            |v| {
                let y = v[0].broadcast_mul(&v[1]).unwrap();
                match v.get(2) {
                    Some(b) => y.broadcast_add(b).unwrap(),
                    None => y,
                }
            },
        );
        prop_assert!(d < 1e-12, "max difference {d}");
    }

    #[test]
    fn channel_bias_matches_broadcast_add(
        shape in prop::collection::vec(1usize..6, 1..4), axis_pick in 0usize..4, seed in 0u64..1000,
    ) {
        let axis = axis_pick % shape.len();
        let bshape: Vec<usize> = shape[axis..].iter().enumerate().map(|(i, &d)| if i == 0 { d } else { 1 }).collect();
        let inputs = [rand(&shape, seed), rand(&[shape[axis]], seed + 1)];
        let d = compare(
            &inputs,
            |v| kernels::channel_bias(&v[0], &v[1], axis).unwrap().expect("applies"),
            |v| v[0].broadcast_add(&v[1].reshape(bshape.as_slice()).unwrap()).unwrap(),
        );
        prop_assert!(d < 1e-12, "max difference {d}");
    }
}

#[test]
fn kernels_decline_what_they_do_not_cover() {
    let x = rand(&[2, 3, 4], 1);
    // a slope that varies along two axes
    assert!(kernels::prelu(&x, &rand(&[3, 4], 2)).unwrap().is_none());
    // integers
    let xi = x.to_dtype(DType::I64).unwrap();
    assert!(kernels::normalize(&xi, 1, 1e-5).unwrap().is_none());
    // normalising over the batch axis
    assert!(kernels::normalize(&x, 0, 1e-5).unwrap().is_none());
    // a weight that is not depthwise
    assert!(
        kernels::depthwise_conv1d(&x, &rand(&[3, 2, 3], 3), (1, 1), 1)
            .unwrap()
            .is_none()
    );
}

/// Every normalisation of the Conv-TasNet and A-FRCNN fixtures (gLN: two means each) is
/// found as one fused chain with its affine map; `candle_fixtures.rs` checks the fused graphs against tract.
#[test]
fn every_normalisation_of_the_fixtures_is_fused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/models");
    for name in [
        "convtasnet.ts13.onnx",
        "convtasnet.dynamo18.onnx",
        "afrcnn.ts17.onnx",
    ] {
        let model = sepprune::onnx::load(&dir.join(name)).unwrap();
        let ir = sepprune::ir::Ir::new(model, 8000).unwrap();
        let means = ir
            .nodes()
            .iter()
            .filter(|n| n.op_type() == "ReduceMean")
            .count();
        let fused = sepprune::learn::fuse::find(&ir);
        assert!(means > 0, "{name}: no ReduceMean");
        // each norm is fused with its gamma and beta: seven nodes, then Mul and Add,
        // between two transposes in gLN as exported
        assert_eq!(fused.len() * 2, means, "{name}: {fused:?}");
        for f in &fused {
            assert!(
                matches!(f.kind, Kind::NormalizeAffine { axis: 1, .. }),
                "{name}: {f:?}"
            );
            assert!([9, 11].contains(&f.nodes.len()), "{name}: {f:?}");
            assert_eq!(f.inputs.len(), 3, "{name}: {f:?}");
        }
    }
}
