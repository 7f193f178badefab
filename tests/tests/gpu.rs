//! The GPU test binary (README "GPU (CUDA)"; `scripts/gpu/build.sh` builds it with
//! `--features cuda`, `scripts/gpu/check.sh` runs it on the GPU machine). Wherever no GPU is
//! present every GPU test prints why it did not run and passes; on the CPU it still checks the
//! device paths of `tram-kernels` against the fused kernels.
//!
//! - `kernels`: every custom op of `tram-kernels` on CUDA against its CPU kernel (values and
//!   gradients, f32 and bf16; included from `framework/kernels/tests/device.rs`);
//! - `models`: the four architectures (GPT-2, ViT, BERT, XLM-R) on CUDA against the same model on
//!   the CPU and against PyTorch's reference outputs (the fixtures of
//!   `apps/runtime/models/tests/fixtures`), logits and parameter gradients, f32 and bf16;
//! - `golden`: the PyTorch golden optimizer fixtures replayed on `TRAM_TEST_DEVICE`
//!   (included from `golden.rs`; it stands aside on the CPU, where the golden binary runs it);
//! - `keyed`: dropout masks and seeded noise drawn on CUDA (`tram_kernels::keyed`, the ChaCha8
//!   kernel) against the CPU's: masks bit for bit (f32, bf16, f16, f64, with a row offset), noise
//!   within `NOISE_ULPS` f32 ulps (uniform bitwise). The `models` check's training pass runs
//!   every architecture's dropout (p = 0.1) on both devices, so it also covers the masks inside a
//!   model.
//!
//! `TRAM_TEST_DEVICE=cpu` runs the model and golden checks on the CPU (a check of the checks).
//! Fixture folders: `TRAM_MODELS_FIXTURES` (default: the source tree's) and `TRAM_GOLDEN_DIR`.

#[path = "../../framework/kernels/tests/device.rs"]
mod kernels;

mod golden;

mod keyed {
    use candle_core::{DType, Device, Shape, Tensor};
    use std::time::Instant;
    use tram::noise::{NoiseKind, NoiseSource, SeededNoise};
    use tram_kernels::keyed::NOISE_ULPS;
    use tram_models::layers::Dropout;

    fn gpu(test: &str) -> Option<Device> {
        match tram_tests::cuda_device(0) {
            Ok(d) => Some(d),
            Err(why) => {
                println!("SKIPPED {test}: {why}");
                None
            }
        }
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn sync(d: &Device) {
        d.synchronize().unwrap();
    }

    #[test]
    fn dropout_masks_on_cuda_are_the_cpus_bit_for_bit_in_every_dtype_with_a_row_offset() {
        let Some(dev) = gpu("dropout_masks_on_cuda_are_the_cpus_bit_for_bit_in_every_dtype_with_a_row_offset") else { return };
        let mut bad = Vec::new();
        // Rows of 3·997 elements (a partial last ChaCha8 block), and a 1-D tensor (one row).
        for (dims, p) in [(vec![6usize, 3, 997], 0.1), (vec![4, 64], 0.5), (vec![1001], 0.3)] {
            for dtype in [DType::F32, DType::BF16, DType::F16, DType::F64] {
                let x = Tensor::ones(dims.as_slice(), DType::F32, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
                let (cpu, cuda) = (Dropout::new(p, 17), Dropout::new(p, 17));
                for d in [&cpu, &cuda] {
                    d.set_example_offset(5).unwrap();
                }
                for draw in 0..2 {
                    let a = cpu.apply(&x, true).unwrap();
                    let b = cuda.apply(&x.to_device(&dev).unwrap(), true).unwrap();
                    assert!(b.device().is_cuda() && b.dtype() == dtype);
                    let (a, b) = (f32s(&a), f32s(&b));
                    let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                    println!("dropout {dims:?} p {p} {dtype:?} draw {draw}: {differ} of {} elements differ", a.len());
                    if differ > 0 {
                        bad.push(format!("{dims:?} p {p} {dtype:?} draw {draw}: {differ} elements differ"));
                    }
                }
            }
        }
        // The time of a GPT-2-small step's largest mask (16 × 12 × 512 × 512 attention probabilities).
        let shape = Shape::from((16, 12, 512, 512));
        let key = tram_kernels::keyed::Key { seed: 1, domain: 2, draw: 3, offset: 0 };
        let _ = tram_kernels::keyed::dropout_mask(&shape, DType::BF16, &dev, key, 0.9).unwrap();
        sync(&dev);
        let t = Instant::now();
        let m = tram_kernels::keyed::dropout_mask(&shape, DType::BF16, &dev, key, 0.9).unwrap();
        sync(&dev);
        println!("dropout mask {:?} bf16 on CUDA: {:.2} ms", m.dims(), t.elapsed().as_secs_f64() * 1e3);
        assert!(bad.is_empty(), "CUDA dropout masks differ from the CPU's:\n{}", bad.join("\n"));
    }

    /// Distance in f32 ulps (same sign assumed; a sign change counts as far).
    fn ulps(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        if a.is_sign_negative() != b.is_sign_negative() {
            return u32::MAX;
        }
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn seeded_noise_on_cuda_matches_the_cpu_within_the_stated_ulps() {
        let Some(dev) = gpu("seeded_noise_on_cuda_matches_the_cpu_within_the_stated_ulps") else { return };
        let mut bad = Vec::new();
        // A TRAM-x-sized sample (16 × 512 × 768 embeddings) and an odd row length.
        for dims in [vec![16usize, 512, 768], vec![5, 3, 7]] {
            let shape = Shape::from(dims.as_slice());
            for kind in [NoiseKind::Normal, NoiseKind::Uniform] {
                let (mut cpu, mut cuda) = (SeededNoise::new(23), SeededNoise::new(23));
                cpu.set_example_offset(3);
                cuda.set_example_offset(3);
                let a = f32s(&cpu.sample(&shape, kind, 1e-5, &Device::Cpu, DType::F32).unwrap());
                let b = cuda.sample(&shape, kind, 1e-5, &dev, DType::F32).unwrap();
                assert!(b.device().is_cuda());
                let b = f32s(&b);
                let worst = a.iter().zip(&b).map(|(x, y)| ulps(*x, *y)).max().unwrap();
                let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
                println!("noise {dims:?} {kind:?}: {differ} of {} elements differ, at most {worst} ulp", a.len());
                let allowed = if kind == NoiseKind::Uniform { 0 } else { NOISE_ULPS };
                if worst > allowed {
                    bad.push(format!("{dims:?} {kind:?}: {worst} ulp > {allowed}"));
                }
                // bf16: the same f32 values rounded on each device (1 bf16 ulp where the f32s differ).
                let a16 = f32s(&cpu.sample(&shape, kind, 0.5, &Device::Cpu, DType::BF16).unwrap());
                let b16 = f32s(&cuda.sample(&shape, kind, 0.5, &dev, DType::BF16).unwrap());
                let w16 = a16.iter().zip(&b16).map(|(x, y)| ulps(*x, *y) >> 16).max().unwrap();
                if w16 > 1 {
                    bad.push(format!("{dims:?} {kind:?} bf16: {w16} bf16 ulp > 1"));
                }
            }
        }
        let shape = Shape::from((16, 512, 768));
        let mut n = SeededNoise::new(1);
        n.sample(&shape, NoiseKind::Normal, 1e-5, &dev, DType::F32).unwrap();
        sync(&dev);
        let t = Instant::now();
        n.sample(&shape, NoiseKind::Normal, 1e-5, &dev, DType::F32).unwrap();
        sync(&dev);
        println!("normal noise {:?} on CUDA: {:.2} ms", shape.dims(), t.elapsed().as_secs_f64() * 1e3);
        assert!(bad.is_empty(), "CUDA noise differs from the CPU's:\n{}", bad.join("\n"));
    }
}

mod models {
    use candle_core::{DType, Device, Tensor};
    use std::collections::HashMap;
    use std::path::PathBuf;
    use tram::{Batch, Mode, Model};
    use tram_models::{Bert, EncoderConfig, Gpt2, Gpt2Config, LoadOptions, Roberta, Vit, VitConfig};

    fn fixture_dir(name: &str) -> PathBuf {
        match std::env::var_os("TRAM_MODELS_FIXTURES") {
            Some(d) => PathBuf::from(d).join(name),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../apps/runtime/models/tests/fixtures").join(name),
        }
    }

    struct Fixture {
        config: serde_json::Value,
        weights: HashMap<String, Tensor>,
        reference: HashMap<String, Tensor>,
    }

    fn fixture(name: &str) -> Fixture {
        let dir = fixture_dir(name);
        let read =
            |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e} (set TRAM_MODELS_FIXTURES)", dir.join(f).display()));
        Fixture {
            config: serde_json::from_slice(&read("config.json")).unwrap(),
            weights: candle_core::safetensors::load_buffer(&read("model.safetensors"), &Device::Cpu).unwrap(),
            reference: candle_core::safetensors::load_buffer(&read("reference.safetensors"), &Device::Cpu).unwrap(),
        }
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.dims(), b.dims(), "shapes differ");
        let f = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F64).unwrap();
        let (a, b) = (f(a), f(b));
        let d = a.sub(&b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        d / b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1e-12)
    }

    /// Tolerances `(against the CPU, against PyTorch)`: f32 within float rounding of a different
    /// summation order, or TF32's 10-bit mantissa when cuBLAS may use it
    /// (`candle_core::cuda::gemm_reduced_precision_f32`); bf16 as the CPU parity tests.
    fn tol(dtype: DType) -> (f64, f64) {
        match dtype {
            DType::F32 if candle_core::cuda::gemm_reduced_precision_f32() => (5e-3, 5e-3),
            DType::F32 => (1e-4, 1e-4),
            _ => (5e-2, 5e-2),
        }
    }

    /// One architecture: `build(device)` makes the model, `batch(device)` its batch; logits on
    /// CUDA against the CPU model and PyTorch's `reference` (when given), and the gradients of
    /// the mean cross-entropy of the logits against row ids.
    fn check(
        name: &str,
        dtype: DType,
        gpu: &Device,
        build: &dyn Fn(&LoadOptions) -> Box<dyn Model>,
        batch: &dyn Fn(&Device) -> Batch,
        reference: Option<Tensor>,
    ) -> Vec<String> {
        let mut bad = Vec::new();
        let (t_cpu, t_ref) = tol(dtype);
        let run = |device: &Device| -> (Tensor, Vec<(String, Tensor)>) {
            let m = build(&LoadOptions { dtype, device: device.clone(), ..LoadOptions::default() });
            let logits = m.forward(m.params(), &batch(device), Mode::EVAL).unwrap().logits.to_dtype(DType::F32).unwrap();
            // Gradients from a training pass (eval passes keep no graph); its dropout masks come
            // from the model's seeded stream, the same on both devices.
            let train = m.forward(m.params(), &batch(device), Mode::TRAIN).unwrap().logits.to_dtype(DType::F32).unwrap();
            let classes = logits.dim(1).unwrap();
            let ids: Vec<u32> = (0..logits.dim(0).unwrap() as u32).map(|i| (i * 7) % classes as u32).collect();
            let targets = Tensor::new(ids.as_slice(), device).unwrap();
            let g = tram::ops::cross_entropy(&train, &targets).unwrap().backward().unwrap();
            let grads = m.params().iter().filter_map(|p| g.get(p.var.as_tensor()).map(|t| (p.name.clone(), t.clone()))).collect();
            (logits, grads)
        };
        let (l_cpu, g_cpu) = run(&Device::Cpu);
        let (l_gpu, g_gpu) = run(gpu);
        let e = rel(&l_gpu, &l_cpu);
        println!("{name:<12} {dtype:?} logits vs CPU {e:.2e}");
        if e > t_cpu {
            bad.push(format!("{name} {dtype:?} logits: {e:.2e} from the CPU > {t_cpu:.0e}"));
        }
        if let Some(r) = reference {
            let e = rel(&l_gpu, &r);
            println!("{name:<12} {dtype:?} logits vs PyTorch {e:.2e}");
            if e > t_ref {
                bad.push(format!("{name} {dtype:?} logits: {e:.2e} from PyTorch > {t_ref:.0e}"));
            }
        }
        assert!(
            !g_cpu.is_empty() && g_gpu.len() == g_cpu.len(),
            "{name}: gradients for {} parameters on the device, {} on the CPU",
            g_gpu.len(),
            g_cpu.len()
        );
        let worst = g_gpu.iter().zip(&g_cpu).map(|((n, a), (_, b))| (n.clone(), rel(a, b))).fold((String::new(), 0.0), |a, b| {
            if b.1 > a.1 {
                b
            } else {
                a
            }
        });
        println!("{name:<12} {dtype:?} gradients vs CPU, worst {:.2e} ({})", worst.1, worst.0);
        // Gradients go through a softmax / log-softmax backward: twice the value tolerance.
        if worst.1 > 2.0 * t_cpu {
            bad.push(format!("{name} {dtype:?} gradient of {}: {:.2e} from the CPU > {:.0e}", worst.0, worst.1, 2.0 * t_cpu));
        }
        bad
    }

    fn to(t: &Tensor, d: &Device) -> Tensor {
        t.to_device(d).unwrap()
    }

    #[test]
    fn four_architectures_on_cuda_match_the_cpu_and_pytorch_in_f32_and_bf16() {
        // `TRAM_TEST_DEVICE` names the device when set (`cpu` checks this test itself: the CPU
        // against itself and PyTorch); otherwise CUDA device 0 where there is one.
        let device = match std::env::var_os("TRAM_TEST_DEVICE") {
            Some(_) => Ok(tram_tests::test_device()),
            None => tram_tests::cuda_device(0),
        };
        let gpu = match device {
            Ok(d) => d,
            Err(why) => {
                println!("SKIPPED four_architectures_on_cuda_match_the_cpu_and_pytorch_in_f32_and_bf16: {why}");
                return;
            }
        };
        let mut bad = Vec::new();
        for dtype in [DType::F32, DType::BF16] {
            let f = fixture("gpt2");
            let (ids, mask) = (f.reference["input_ids"].to_dtype(DType::U32).unwrap(), None::<Tensor>);
            let (b, s) = ids.dims2().unwrap();
            let r = f.reference["logits"].reshape((b * s, ())).unwrap();
            let cfg = Gpt2Config::from_json(&f.config).unwrap();
            bad.extend(check(
                "gpt2",
                dtype,
                &gpu,
                &|o| Box::new(Gpt2::from_weights(cfg.clone(), f.weights.clone(), o).unwrap()),
                &|d| Batch {
                    inputs: to(&ids, d),
                    targets: Tensor::zeros((b, s), DType::U32, d).unwrap(),
                    mask: mask.clone(),
                    token_types: None,
                },
                Some(r),
            ));

            let f = fixture("vit");
            let pixels = f.reference["pixel_values"].clone();
            let cfg = VitConfig::from_json(&f.config).unwrap();
            bad.extend(check(
                "vit",
                dtype,
                &gpu,
                &|o| Box::new(Vit::from_weights(cfg.clone(), f.weights.clone(), o).unwrap()),
                &|d| Batch::new(to(&pixels, d), Tensor::zeros(pixels.dim(0).unwrap(), DType::U32, d).unwrap()),
                Some(f.reference["logits"].clone()),
            ));

            for (name, roberta) in [("bert", false), ("xlm-roberta", true)] {
                let f = fixture(name);
                let ids = f.reference["padded_input_ids"].to_dtype(DType::U32).unwrap();
                let mask = f.reference["padded_attention_mask"].to_dtype(DType::U32).unwrap();
                let cfg = EncoderConfig::from_json(&f.config).unwrap();
                let build = |o: &LoadOptions| -> Box<dyn Model> {
                    if roberta {
                        Box::new(Roberta::from_weights(cfg.clone(), f.weights.clone(), o).unwrap())
                    } else {
                        Box::new(Bert::from_weights(cfg.clone(), f.weights.clone(), o).unwrap())
                    }
                };
                bad.extend(check(
                    name,
                    dtype,
                    &gpu,
                    &build,
                    &|d| Batch::new(to(&ids, d), Tensor::zeros(ids.dim(0).unwrap(), DType::U32, d).unwrap()).with_mask(to(&mask, d)),
                    Some(f.reference["padded_logits"].clone()),
                ));
            }
        }
        assert!(bad.is_empty(), "CUDA models differ:\n{}", bad.join("\n"));
    }
}
