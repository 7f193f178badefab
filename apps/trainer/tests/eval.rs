//! Evaluation split over the ranks of a data-parallel job (`eval::evaluate_sharded`): each
//! rank builds and evaluates only its share of the batches, and every rank gets the metrics of
//! the whole set, those of one process.

use candle_core::Device;
use std::sync::Mutex;
use tram::distributed::Collective;
use tram::distributed::Threads;
use tram::testing::{synthetic_batches, ClassifierShape, EmbeddingClassifier};
use tram::Batch;
use tram_trainer::eval::{evaluate, evaluate_sharded, EvalMetrics};
use tram_trainer::task::EvalSource;
use tram_trainer::Result;

const SHAPE: ClassifierShape = ClassifierShape { vocab: 40, embed: 8, hidden: 8, layers: 1, classes: 3 };

/// Evaluation batches that record which of them were built.
struct Recorded {
    batches: Vec<Batch>,
    built: Mutex<Vec<usize>>,
}

impl EvalSource for Recorded {
    fn len(&self) -> usize {
        self.batches.iter().map(|b| b.inputs.dim(0).unwrap()).sum()
    }
    fn shard(&self, rank: usize, world: usize) -> Box<dyn Iterator<Item = Result<Batch>> + '_> {
        Box::new((0..self.batches.len()).filter(move |i| i % world == rank).map(|i| {
            self.built.lock().unwrap().push(i);
            Ok(self.batches[i].clone())
        }))
    }
}

fn source() -> Recorded {
    // Five batches of unequal sizes: shares of 3 and 2 batches with unequal row counts.
    let mut batches = synthetic_batches(SHAPE, 4, 6, 5, 3, &Device::Cpu).unwrap();
    batches.extend(synthetic_batches(SHAPE, 1, 2, 5, 4, &Device::Cpu).unwrap());
    Recorded { batches, built: Mutex::new(Vec::new()) }
}

#[test]
fn two_ranks_evaluate_disjoint_shares_and_both_get_the_metrics_of_one_process() {
    let model = EmbeddingClassifier::random(SHAPE, 7, &Device::Cpu).unwrap();
    let whole = evaluate(&model, &source()).unwrap();
    assert_eq!(whole.rows, 26);
    let results: Vec<(EvalMetrics, Vec<usize>)> = std::thread::scope(|s| {
        let handles: Vec<_> = Threads::group(2, std::time::Duration::from_secs(600))
            .into_iter()
            .map(|rank| {
                s.spawn(move || {
                    let model = EmbeddingClassifier::random(SHAPE, 7, &Device::Cpu).unwrap();
                    let src = source();
                    let m = evaluate_sharded(&model, &src, &rank).unwrap();
                    (m, src.built.into_inner().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results[0].1, [0, 2, 4], "rank 0 builds batches 0, 2, 4 only");
    assert_eq!(results[1].1, [1, 3], "rank 1 builds batches 1, 3 only");
    let (a, b) = (&results[0].0, &results[1].0);
    assert_eq!(a, b, "the ranks' metrics differ");
    assert_eq!((a.rows, a.accuracy), (whole.rows, whole.accuracy));
    assert!((a.loss - whole.loss).abs() <= 1e-12 * whole.loss.abs(), "sharded loss {} vs one process {}", a.loss, whole.loss);
    assert!((a.perplexity - whole.perplexity).abs() <= 1e-12 * whole.perplexity);
}

#[test]
fn one_rank_is_the_single_process_evaluation_bit_for_bit() {
    let model = EmbeddingClassifier::random(SHAPE, 7, &Device::Cpu).unwrap();
    let one = Threads::group(1, std::time::Duration::from_secs(600)).pop().unwrap();
    assert_eq!(one.world(), 1);
    let src = source();
    let m = evaluate_sharded(&model, &src, &one).unwrap();
    assert_eq!(m, evaluate(&model, &source()).unwrap());
    assert_eq!(src.built.into_inner().unwrap(), [0, 1, 2, 3, 4]);
}
