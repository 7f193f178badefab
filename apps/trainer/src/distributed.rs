//! Data-parallel runs (README "Data-parallel training"): the job's collective, built once per
//! process from the MPI launcher's environment and the `[distributed]` section, and each
//! rank's share of a global micro-batch.

use crate::config::{AllReduce, DistributedConfig, DistributedEngine};
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};
use tram::distributed::{Collective, Single};
use tram::Batch;

/// The environment variables MPI launchers set to the number of ranks (Open MPI, MPICH /
/// Slurm's PMI, MVAPICH).
pub const WORLD_SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"];

/// The number of ranks an MPI launcher started this process with, if it did.
pub fn launcher_world() -> Option<usize> {
    WORLD_SIZE_VARS.iter().find_map(|v| std::env::var(v).ok()).and_then(|s| s.trim().parse().ok())
}

/// This process's rank in the job an MPI launcher started (Open MPI, MPICH / PMI, MVAPICH),
/// known before MPI is initialised.
pub fn launcher_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// This process's rank among the ranks of its host, as an MPI launcher says (Open MPI, MPICH,
/// Slurm): `device = "cuda"` is GPU `<local rank>` (one process per GPU).
pub fn local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .and_then(|s| s.trim().parse().ok())
}

/// The process's collective: built by the first [`session`], kept until [`finalize`].
static SESSION: Mutex<Option<Arc<dyn Collective>>> = Mutex::new(None);

/// The collective of this process for a run with `cfg` on `device`: one process unless an MPI
/// launcher started it with W > 1 ranks or `engine = "mpi"`. MPI is initialised on the first
/// call (its timeout is that run's) and kept for the next runs of the process; [`finalize`]
/// ends it. A build without the `mpi` feature asked for MPI is an error naming the feature.
pub fn session(cfg: &DistributedConfig, device: &candle_core::Device) -> Result<Arc<dyn Collective>> {
    if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
        return Err(Error::Config(format!("distributed.timeout_s = {} must be a positive number of seconds", cfg.timeout_s)));
    }
    let launched = launcher_world();
    let mpi = match cfg.engine {
        DistributedEngine::Single => false,
        DistributedEngine::Mpi => true,
        DistributedEngine::Auto => launched.is_some_and(|w| w > 1),
        DistributedEngine::Threads => {
            return Err(Error::Config(
                "distributed.engine = \"threads\": the ranks are threads that `tram_trainer::cli::run_sources` starts, each \
                 given its collective in `RunSpec::collective`; `trainer::run` without one cannot start them (call run_sources, \
                 or build the ranks with tram::distributed::Threads::group)"
                    .into(),
            ));
        }
    };
    if !mpi {
        if cfg.allreduce == AllReduce::Nccl {
            // One process: NCCL over one rank, without MPI (the GPU device check's W = 1 run).
            return nccl_single(device);
        }
        return Ok(Arc::new(Single));
    }
    let mut s = SESSION.lock().map_err(|_| Error::Config("the distributed session's lock is poisoned".into()))?;
    if let Some(c) = s.as_ref() {
        return Ok(c.clone());
    }
    let c = init_mpi(cfg, device, launched)?;
    tracing::info!(engine = c.name(), rank = c.rank(), world = c.world(), "data-parallel job");
    *s = Some(c.clone());
    Ok(c)
}

#[cfg(feature = "mpi")]
fn init_mpi(cfg: &DistributedConfig, device: &candle_core::Device, _launched: Option<usize>) -> Result<Arc<dyn Collective>> {
    let mpi = tram::distributed::mpi::Mpi::init(std::time::Duration::from_secs_f64(cfg.timeout_s))?;
    match cfg.allreduce {
        AllReduce::Mpi => Ok(Arc::new(mpi)),
        AllReduce::Nccl => nccl(mpi, device),
    }
}

/// The number of ranks of `engine = "threads"`, after checking that the job can run that way:
/// `distributed.ranks`, or with 0 the most ranks up to the CPU cores this process may use
/// (`cores`) that split the global micro-batch of `batch` rows evenly (4 rows on 3 cores: 2
/// ranks of 2; 1 row: one rank).
pub fn thread_ranks(cfg: &DistributedConfig, device: &candle_core::Device, batch: usize, cores: usize) -> Result<usize> {
    check_threads(cfg, device)?;
    Ok(match cfg.ranks {
        0 => (1..=cores.min(batch).max(1)).rev().find(|w| batch % w == 0).unwrap_or(1),
        n => n,
    })
}

/// The CPU cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn check_threads(cfg: &DistributedConfig, device: &candle_core::Device) -> Result<()> {
    if let Some(w) = launcher_world().filter(|w| *w > 1) {
        return Err(Error::Config(format!(
            "distributed.engine = \"threads\" in a job an MPI launcher started with {w} ranks: use one or the other (drop \
             `mpirun`, or set distributed.engine = \"auto\")"
        )));
    }
    if cfg.allreduce == AllReduce::Nccl {
        return Err(Error::Config(
            "distributed.engine = \"threads\" sums on the CPU: drop distributed.allreduce = \"nccl\" (GPUs: one process per \
             GPU under mpirun)"
                .into(),
        ));
    }
    if !device.is_cpu() {
        return Err(Error::Config(
            "distributed.engine = \"threads\" runs its ranks on the CPU (device = \"cpu\"); on GPUs start one process per GPU \
             under mpirun with distributed.allreduce = \"nccl\""
                .into(),
        ));
    }
    Ok(())
}

/// `distributed.allreduce = "nccl"` in one process not started by an MPI launcher: a one-rank
/// NCCL communicator, no MPI; every pass's gradient goes through `ncclAllReduce` (the identity).
#[cfg(feature = "nccl")]
fn nccl_single(device: &candle_core::Device) -> Result<Arc<dyn Collective>> {
    let c = tram::distributed::nccl::Nccl::single(device)?;
    tracing::info!(engine = c.name(), rank = 0, world = 1, "data-parallel job (NCCL over one rank)");
    Ok(Arc::new(c))
}

#[cfg(not(feature = "nccl"))]
fn nccl_single(_device: &candle_core::Device) -> Result<Arc<dyn Collective>> {
    Err(Error::Config(
        "distributed.allreduce = \"nccl\" needs the `nccl` feature: rebuild with `cargo build --release -p tram-cli --features cuda,nccl` \
         (CUDA and NCCL installed), or drop distributed.allreduce (one process needs no all-reduce)"
            .into(),
    ))
}

#[cfg(all(feature = "mpi", feature = "nccl"))]
fn nccl(mpi: tram::distributed::mpi::Mpi, device: &candle_core::Device) -> Result<Arc<dyn Collective>> {
    Ok(Arc::new(tram::distributed::nccl::Nccl::init(mpi, device)?))
}

#[cfg(all(feature = "mpi", not(feature = "nccl")))]
fn nccl(_mpi: tram::distributed::mpi::Mpi, _device: &candle_core::Device) -> Result<Arc<dyn Collective>> {
    Err(Error::Config(
        "distributed.allreduce = \"nccl\" needs the `nccl` feature: rebuild with `cargo build --release -p tram-cli --features nccl` \
         (CUDA and NCCL installed), or set distributed.allreduce = \"mpi\""
            .into(),
    ))
}

#[cfg(not(feature = "mpi"))]
fn init_mpi(_cfg: &DistributedConfig, _device: &candle_core::Device, launched: Option<usize>) -> Result<Arc<dyn Collective>> {
    let why = match launched {
        Some(w) => format!("this process was started by an MPI launcher with {w} ranks"),
        None => "distributed.engine = \"mpi\"".to_string(),
    };
    Err(Error::Config(format!(
        "{why}, but this tram was built without the `mpi` feature: rebuild with `cargo build --release -p tram-cli --features mpi` \
         (needs an MPI library with mpicc, e.g. Debian's libopenmpi-dev, and libclang), or run one process \
         (distributed.engine = \"single\")"
    )))
}

/// This process's rank in its data-parallel job (0 when it is not in one).
pub fn rank() -> usize {
    SESSION.lock().ok().and_then(|s| s.as_ref().map(|c| c.rank())).unwrap_or(0)
}

/// End the process's MPI session (MPI_Finalize) once no run holds it any more. Call it before
/// the process exits: an MPI rank that exits without it makes `mpirun` fail the job.
pub fn finalize() {
    if let Ok(mut s) = SESSION.lock() {
        s.take();
    }
}

/// Drop from a configuration's JSON (`m`, the top level) the `[distributed]` keys that change
/// nothing computed (engine, watchdog timeout, all-reduce engine, thread ranks: a run resumes or keeps its
/// results under other values), and the section when only defaults remain (`ascent = "local"`
/// changes the steps and stays).
pub fn drop_untracked(m: &mut serde_json::Map<String, serde_json::Value>) {
    if let Some(serde_json::Value::Object(d)) = m.get_mut("distributed") {
        for k in ["engine", "timeout_s", "allreduce", "ranks"] {
            d.remove(k);
        }
        if d.get("ascent").and_then(|a| a.as_str()) == Some("global") {
            d.remove("ascent");
        }
        if d.is_empty() {
            m.remove("distributed");
        }
    }
}

/// Rank `rank`'s share of a global micro-batch of `n` examples on `world` ranks: rows
/// `[rank·n/W, (rank+1)·n/W)`, with the index of its first example (which keys its noise and
/// dropout). Every rank reads the same global micro-batches in the same order, so the data
/// order and the stream's position do not depend on W.
pub fn shard(batch: &Batch, rank: usize, world: usize) -> Result<(Batch, usize)> {
    if world == 1 {
        return Ok((batch.clone(), 0));
    }
    let n = batch.examples()?;
    if n < world {
        return Err(Error::Config(format!(
            "a global micro-batch of {n} examples cannot be split over {world} ranks: set train.batch_size (the global micro-batch) to at least {world}, ideally a multiple of it"
        )));
    }
    let (start, end) = (rank * n / world, (rank + 1) * n / world);
    let cut = |t: &candle_core::Tensor| t.narrow(0, start, end - start);
    let share = Batch {
        inputs: cut(&batch.inputs)?,
        targets: cut(&batch.targets)?,
        mask: batch.mask.as_ref().map(cut).transpose()?,
        token_types: batch.token_types.as_ref().map(cut).transpose()?,
    };
    Ok((share, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn shards_partition_the_global_micro_batch_in_order() {
        let ids = Tensor::arange(0u32, 10, &Device::Cpu).unwrap().reshape((5, 2)).unwrap();
        let b = Batch::new(ids.clone(), ids.clone()).with_mask(ids);
        let mut rows = Vec::new();
        for r in 0..2 {
            let (s, off) = shard(&b, r, 2).unwrap();
            assert_eq!(off, rows.len());
            assert_eq!(s.mask.as_ref().unwrap().dims(), s.inputs.dims());
            rows.extend(s.inputs.to_vec2::<u32>().unwrap());
        }
        assert_eq!(rows, b.inputs.to_vec2::<u32>().unwrap());
        let err = shard(&b, 0, 6).unwrap_err().to_string();
        assert!(err.contains("train.batch_size") && err.contains("6 ranks"), "{err}");
    }

    #[test]
    fn automatic_thread_ranks_split_the_global_batch_evenly_within_the_cores() {
        let cfg = DistributedConfig { engine: DistributedEngine::Threads, ..Default::default() };
        let w = |batch, cores| thread_ranks(&cfg, &Device::Cpu, batch, cores).unwrap();
        assert_eq!([w(4, 2), w(4, 3), w(4, 16), w(6, 4), w(7, 4), w(1, 8), w(8, 1)], [2, 2, 4, 3, 1, 1, 1]);
        let fixed = DistributedConfig { ranks: 3, ..cfg.clone() };
        assert_eq!(thread_ranks(&fixed, &Device::Cpu, 4, 2).unwrap(), 3, "an explicit count is kept");
        let nccl = DistributedConfig { allreduce: AllReduce::Nccl, ..cfg };
        assert!(thread_ranks(&nccl, &Device::Cpu, 4, 2).unwrap_err().to_string().contains("sums on the CPU"));
    }

    #[test]
    fn only_the_ascent_of_the_distributed_section_is_part_of_a_runs_identity() {
        let mut m =
            serde_json::json!({"seed": 1, "distributed": {"engine": "mpi", "timeout_s": 5.0, "allreduce": "nccl", "ascent": "global"}});
        drop_untracked(m.as_object_mut().unwrap());
        assert_eq!(m, serde_json::json!({"seed": 1}));
        let mut m = serde_json::json!({"distributed": {"timeout_s": 5.0, "ascent": "local"}});
        drop_untracked(m.as_object_mut().unwrap());
        assert_eq!(m, serde_json::json!({"distributed": {"ascent": "local"}}));
    }

    #[test]
    fn one_process_unless_launched_with_several_ranks_and_a_bad_timeout_is_refused() {
        let single = DistributedConfig { engine: DistributedEngine::Single, ..Default::default() };
        assert_eq!(session(&single, &Device::Cpu).unwrap().world(), 1);
        let bad = DistributedConfig { timeout_s: 0.0, ..Default::default() };
        assert!(session(&bad, &Device::Cpu).err().unwrap().to_string().contains("distributed.timeout_s"));
    }

    #[cfg(not(feature = "nccl"))]
    #[test]
    fn nccl_in_one_process_without_the_feature_names_the_feature() {
        let nccl = DistributedConfig { engine: DistributedEngine::Single, allreduce: AllReduce::Nccl, ..Default::default() };
        let err = session(&nccl, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("`nccl` feature") && err.contains("--features cuda,nccl"), "{err}");
    }

    #[cfg(not(feature = "mpi"))]
    #[test]
    fn asking_for_mpi_without_the_feature_names_the_feature() {
        let mpi = DistributedConfig { engine: DistributedEngine::Mpi, ..Default::default() };
        let err = session(&mpi, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("`mpi` feature") && err.contains("--features mpi"), "{err}");
    }
}
