//! `embedding` and the half-precision gradient sums of `embedding` and `add_bias`: f32 results
//! bit for bit candle's `index_select` / `index_add`, and bf16 table and bias gradients within
//! one bf16 rounding of the exact (f64) sum, where candle's own backward, which adds in bf16,
//! is off by percents.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tram_kernels as k;

const CPU: Device = Device::Cpu;

fn rand_t(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &CPU).unwrap().to_dtype(dtype).unwrap()
}

/// `n` ids in `0..vocab`, most of them a few frequent ones (as tokens are).
fn skewed_ids(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| if rng.random::<f64>() < 0.7 { rng.random_range(0..3) } else { rng.random_range(0..vocab) }).collect()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Bits of a tensor's f32 values (NaN-exact comparison).
fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Largest error of `got` against `exact` in units of bf16's unit roundoff (2^-8 relative: one
/// round-to-nearest to bf16 is at most 1); NaN counts as infinite.
fn bf16_roundings(got: &[f64], exact: &[f64]) -> f64 {
    got.iter()
        .zip(exact)
        .map(|(g, e)| {
            let d = (g - e).abs() / (e.abs() * 2f64.powi(-8)).max(1e-30);
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

/// The gradient of `sum(f(table) · r)` with respect to `table`.
fn grad_of(table: &Tensor, r: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let v = Var::from_tensor(table).unwrap();
    let y = f(v.as_tensor());
    let loss = y.mul(&r.to_dtype(y.dtype()).unwrap()).unwrap().sum_all().unwrap();
    loss.backward().unwrap().get(v.as_tensor()).expect("no gradient").clone()
}

/// Exact (f64) table gradient: Σ over positions of id v of r[pos].
fn exact_table_grad(ids: &[u32], r: &[f64], vocab: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; vocab * d];
    for (i, &id) in ids.iter().enumerate() {
        for j in 0..d {
            out[id as usize * d + j] += r[i * d + j];
        }
    }
    out
}

#[test]
fn f32_embedding_is_bit_for_bit_index_select_and_its_index_add_gradient() {
    let (vocab, d) = (11, 6);
    let table = rand_t(&[vocab, d], 1, DType::F32);
    let ids = Tensor::from_vec(skewed_ids(3 * 40, vocab as u32, 2), (3, 40), &CPU).unwrap();
    let r = rand_t(&[3, 40, d], 3, DType::F32);
    let ours = k::embedding(&table, &ids).unwrap();
    let candle = table.index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((3, 40, d)).unwrap();
    assert_eq!(ours.dims(), [3, 40, d]);
    assert_eq!(bits(&ours), bits(&candle));
    let g_ours = grad_of(&table, &r, |t| k::embedding(t, &ids).unwrap());
    let g_candle = grad_of(&table, &r, |t| t.index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((3, 40, d)).unwrap());
    assert_eq!(bits(&g_ours), bits(&g_candle));
    // Rows no id selects get gradient 0.
    let seen: std::collections::HashSet<u32> = ids.flatten_all().unwrap().to_vec1::<u32>().unwrap().into_iter().collect();
    let g = g_ours.to_vec2::<f32>().unwrap();
    for (v, row) in g.iter().enumerate() {
        if !seen.contains(&(v as u32)) {
            assert!(row.iter().all(|&x| x == 0.0), "row {v} selected by no id has gradient {row:?}");
        }
    }
}

#[test]
fn bf16_table_gradient_of_a_frequent_id_is_one_rounding_of_the_exact_sum() {
    // 4096 positions, 70% of them three ids: each of those sums about 950 gradient rows.
    let (vocab, d, n) = (50, 8, 4096);
    let ids_v = skewed_ids(n, vocab as u32, 4);
    let ids = Tensor::from_vec(ids_v.clone(), n, &CPU).unwrap();
    let table = rand_t(&[vocab, d], 5, DType::BF16);
    let r = rand_t(&[n, d], 6, DType::BF16);
    let exact = exact_table_grad(&ids_v, &vec_f64(&r), vocab, d);
    let ours = grad_of(&table, &r, |t| k::embedding(t, &ids).unwrap());
    assert_eq!(ours.dtype(), DType::BF16);
    let e = bf16_roundings(&vec_f64(&ours), &exact);
    assert!(e <= 1.0 + 1e-3, "bf16 embedding gradient: {e:.2} bf16 roundings from the exact sum");
    // The device path (composed candle ops) keeps the same single rounding.
    let composed = grad_of(&table, &r, |t| k::composed::embedding(t, &ids).unwrap());
    let ec = bf16_roundings(&vec_f64(&composed), &exact);
    assert!(ec <= 1.0 + 1e-3, "composed bf16 embedding gradient: {ec:.2} bf16 roundings from the exact sum");
    // What this replaces: candle's index_add adds in bf16.
    let candle = grad_of(&table, &r, |t| t.index_select(&ids, 0).unwrap());
    let eb = bf16_roundings(&vec_f64(&candle), &exact);
    assert!(eb > 8.0, "candle's bf16 index_add was expected to drift (it is {eb:.2} roundings off); is this test still needed?");
}

#[test]
fn bf16_embedding_rows_are_the_table_rows() {
    let table = rand_t(&[9, 5], 7, DType::BF16);
    let ids = Tensor::new(&[[3u32, 0, 8], [3, 3, 1]], &CPU).unwrap();
    let y = k::embedding(&table, &ids).unwrap();
    assert_eq!((y.dims(), y.dtype()), ([2, 3, 5].as_slice(), DType::BF16));
    assert_eq!(bits(&y), bits(&table.index_select(&ids.flatten_all().unwrap(), 0).unwrap()));
    // Integer ids of other dtypes select the same rows.
    let y64 = k::embedding(&table, &ids.to_dtype(DType::I64).unwrap()).unwrap();
    assert_eq!(bits(&y64), bits(&y));
}

#[test]
fn an_id_outside_the_table_is_an_error_naming_it_and_its_position() {
    let table = rand_t(&[4, 3], 8, DType::F32);
    let ids = Tensor::new(&[1u32, 4, 2], &CPU).unwrap();
    let e = k::embedding(&table, &ids).unwrap_err().to_string();
    for part in ["id 4", "position 1", "4 rows", "vocabulary size"] {
        assert!(e.contains(part), "error {e:?} does not mention {part:?}");
    }
    let e = k::embedding(&table, &Tensor::new(&[1f32], &CPU).unwrap()).unwrap_err().to_string();
    assert!(e.contains("ids must be integers"), "{e}");
    let e = k::embedding(&rand_t(&[4], 8, DType::F32), &ids).unwrap_err().to_string();
    assert!(e.contains("[vocab, dim]"), "{e}");
}

#[test]
fn bf16_bias_gradient_over_many_rows_is_one_rounding_of_the_exact_sum() {
    // 8192 rows (batch 16 × 512 tokens), gradients with a common sign component, as a bias
    // sees: a bf16 running sum stagnates.
    let (rows, n) = (8192, 16);
    let x = rand_t(&[16, 512, n], 9, DType::BF16);
    let b = rand_t(&[n], 10, DType::BF16);
    let r = (rand_t(&[16, 512, n], 11, DType::F32) + 0.3).unwrap().to_dtype(DType::BF16).unwrap();
    let rv = vec_f64(&r);
    let exact: Vec<f64> = (0..n).map(|j| (0..rows).map(|i| rv[i * n + j]).sum()).collect();
    let ours = grad_of(&b, &r, |b| k::add_bias(&x, b).unwrap());
    assert_eq!(ours.dtype(), DType::BF16);
    let e = bf16_roundings(&vec_f64(&ours), &exact);
    assert!(e <= 1.0 + 1e-3, "bf16 bias gradient: {e:.2} bf16 roundings from the exact sum");
    let composed = grad_of(&b, &r, |b| k::composed::add_bias(&x, b).unwrap());
    let ec = bf16_roundings(&vec_f64(&composed), &exact);
    assert!(ec <= 1.0 + 1e-3, "composed bf16 bias gradient: {ec:.2} bf16 roundings from the exact sum");
    let candle = grad_of(&b, &r, |b| x.broadcast_add(b).unwrap());
    let eb = bf16_roundings(&vec_f64(&candle), &exact);
    assert!(eb > 8.0, "candle's bf16 broadcast_add backward was expected to drift (it is {eb:.2} roundings off)");
    // The values are candle's bf16 addition bit for bit, and the input gradient is r itself.
    assert_eq!(bits(&k::add_bias(&x, &b).unwrap()), bits(&x.broadcast_add(&b).unwrap()));
    let gx = grad_of(&x, &r, |x| k::add_bias(x, &b).unwrap());
    assert_eq!(bits(&gx), bits(&r));
}

#[test]
fn a_bias_of_another_dtype_is_cast_to_the_inputs() {
    let x = rand_t(&[3, 4], 12, DType::F32);
    let b = rand_t(&[4], 13, DType::BF16);
    let y = k::add_bias(&x, &b).unwrap();
    assert_eq!(y.dtype(), DType::F32);
    assert_eq!(bits(&y), bits(&x.broadcast_add(&b.to_dtype(DType::F32).unwrap()).unwrap()));
}
