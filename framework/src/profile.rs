//! An opt-in phase profile of training steps (README "GPU (CUDA)", `tram lm --profile`): where
//! a step's wall time goes, with the device synchronised at every phase boundary so that a
//! GPU's queued kernels are charged to the phase that launched them.
//!
//! The profile is per thread (the training loop's) and off unless [`enable`] was called on that
//! thread: every [`scope`] / [`mark`] then costs one thread-local flag read and does nothing
//! (no synchronisation, no clock).
//!
//! Phases nest and are **exclusive**: time is charged to the innermost open phase only, so the
//! phases of a step add up to the step. A [`scope`] opens a phase until its guard drops (the
//! enclosing phase is paused meanwhile); a [`mark`] switches the innermost open phase to another
//! name (the way a sequence of phases is written in one block). [`step`] opens the step itself:
//! its own phase, `step: other`, gets whatever no named phase inside it took, and the step's
//! wall time is recorded on its own, so a profile says how much of the step its named phases
//! explain.
//!
//! ```
//! use candle_core::Device;
//! tram::profile::enable(&Device::Cpu);
//! {
//!     let _step = tram::profile::step();
//!     let _fwd = tram::profile::scope("forward 1");
//!     tram::profile::mark("backward 1");
//! }
//! let p = tram::profile::take().unwrap();
//! assert_eq!(p.steps, 1);
//! assert!(p.phases.iter().any(|ph| ph.name == "backward 1" && ph.calls == 1 && ph.in_step));
//! assert!(tram::profile::take().is_none()); // off again
//! ```

use candle_core::Device;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// The phase of a step that no named phase inside it took.
pub const STEP_OTHER: &str = "step: other";

/// One phase's totals.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Phase {
    /// Name, e.g. `forward 1` (the first pass's forward), `update`, `eval`.
    pub name: String,
    /// Exclusive wall time in milliseconds (nested phases' time not included).
    pub total_ms: f64,
    /// Times the phase was entered.
    pub calls: u64,
    /// Whether it ran inside a step (phases outside, such as `eval` or `checkpoint`, are
    /// reported beside the steps).
    pub in_step: bool,
    /// `total_ms` ÷ the steps' total wall time (phases outside a step included, for scale).
    pub share_of_step: f64,
}

/// A finished profile.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// The device synchronised at the phase boundaries (`cpu`, `cuda:0`, ...).
    pub device: String,
    /// Steps timed.
    pub steps: u64,
    /// Total wall time of the steps (ms), measured around each step (synchronised at both
    /// ends), independently of the phases.
    pub step_total_ms: f64,
    /// Mean step time (ms).
    pub step_mean_ms: f64,
    /// Every step's wall time (ms), in order.
    pub step_ms: Vec<f64>,
    /// Sum of the phases inside the steps (ms): equals `step_total_ms` up to the timer's own
    /// cost; `step: other` is the part no named phase took.
    pub phases_in_step_ms: f64,
    /// Phases in first-entered order.
    pub phases: Vec<Phase>,
}

impl Profile {
    /// A short table: the phases by time, with calls and share of the step time.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "profile: {} steps on {}, {:.1} ms/step (phases inside the steps add up to {:.1}% of it)\n",
            self.steps,
            self.device,
            self.step_mean_ms,
            100.0 * self.phases_in_step_ms / self.step_total_ms.max(1e-9)
        );
        let mut phases: Vec<&Phase> = self.phases.iter().collect();
        phases.sort_by(|a, b| b.in_step.cmp(&a.in_step).then(b.total_ms.total_cmp(&a.total_ms)));
        for p in phases {
            let per_step = if self.steps > 0 { p.total_ms / self.steps as f64 } else { 0.0 };
            out.push_str(&format!(
                "  {:<24} {:>10.1} ms {:>6} calls {:>9.2} ms/step {:>6.1}%{}\n",
                p.name,
                p.total_ms,
                p.calls,
                per_step,
                100.0 * p.share_of_step,
                if p.in_step { "" } else { "  (outside the steps)" }
            ));
        }
        out
    }
}

struct Acc {
    name: &'static str,
    total: Duration,
    calls: u64,
    in_step: bool,
}

struct Profiler {
    device: Device,
    /// Open phases, innermost last.
    stack: Vec<&'static str>,
    /// When the innermost phase was last charged.
    since: Instant,
    acc: Vec<Acc>,
    /// Depth of open steps (0 or 1; a nested step counts as its outer one).
    in_step: usize,
    step_start: Option<Instant>,
    step_ms: Vec<f64>,
}

impl Profiler {
    fn sync(&self) {
        // A failed synchronisation surfaces at the next tensor operation; the profile only
        // loses that boundary's precision.
        let _ = self.device.synchronize();
    }
    fn slot(&mut self, name: &'static str) -> &mut Acc {
        let in_step = self.in_step > 0;
        let i = match self.acc.iter().position(|a| a.name == name && a.in_step == in_step) {
            Some(i) => i,
            None => {
                self.acc.push(Acc { name, total: Duration::ZERO, calls: 0, in_step });
                self.acc.len() - 1
            }
        };
        &mut self.acc[i]
    }
    /// Synchronise and charge the time since the last boundary to the innermost phase.
    fn charge(&mut self) -> Instant {
        self.sync();
        let now = Instant::now();
        let dt = now - self.since;
        if let Some(&top) = self.stack.last() {
            self.slot(top).total += dt;
        }
        self.since = now;
        now
    }
    fn enter(&mut self, name: &'static str) {
        self.charge();
        self.stack.push(name);
        self.slot(name).calls += 1;
    }
    fn leave(&mut self) -> Instant {
        let now = self.charge();
        self.stack.pop();
        now
    }
}

thread_local! {
    static PROFILER: RefCell<Option<Profiler>> = const { RefCell::new(None) };
}

fn with(f: impl FnOnce(&mut Profiler)) {
    PROFILER.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if let Some(p) = p.as_mut() {
                f(p)
            }
        }
    })
}

/// Start profiling this thread's steps, synchronising `device` at phase boundaries (a profile
/// already running is discarded).
pub fn enable(device: &Device) {
    PROFILER.with(|p| {
        *p.borrow_mut() = Some(Profiler {
            device: device.clone(),
            stack: Vec::new(),
            since: Instant::now(),
            acc: Vec::new(),
            in_step: 0,
            step_start: None,
            step_ms: Vec::new(),
        })
    });
}

/// Whether this thread is profiling.
pub fn enabled() -> bool {
    PROFILER.with(|p| p.try_borrow().map(|p| p.is_some()).unwrap_or(false))
}

/// Stop profiling this thread and return what was measured (`None` when it was off).
pub fn take() -> Option<Profile> {
    let p = PROFILER.with(|p| p.borrow_mut().take())?;
    let step_total_ms: f64 = p.step_ms.iter().sum();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let phases_in_step_ms = p.acc.iter().filter(|a| a.in_step).map(|a| ms(a.total)).sum();
    let steps = p.step_ms.len() as u64;
    Some(Profile {
        device: match p.device.location() {
            candle_core::DeviceLocation::Cpu => "cpu".to_string(),
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
        },
        steps,
        step_total_ms,
        step_mean_ms: if steps > 0 { step_total_ms / steps as f64 } else { 0.0 },
        step_ms: p.step_ms,
        phases_in_step_ms,
        phases: p
            .acc
            .iter()
            .map(|a| Phase {
                name: a.name.to_string(),
                total_ms: ms(a.total),
                calls: a.calls,
                in_step: a.in_step,
                share_of_step: ms(a.total) / step_total_ms.max(1e-9),
            })
            .collect(),
    })
}

/// An open phase; closes (synchronised) when dropped. Does nothing when profiling is off.
#[must_use = "the phase closes when the guard is dropped"]
pub struct Guard {
    active: bool,
    step: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let step = self.step;
        with(|p| {
            let now = p.leave();
            if step {
                p.in_step -= 1;
                if p.in_step == 0 {
                    if let Some(t0) = p.step_start.take() {
                        p.step_ms.push((now - t0).as_secs_f64() * 1e3);
                    }
                }
            }
        });
    }
}

/// Open the phase `name` until the guard drops (the enclosing phase pauses meanwhile).
pub fn scope(name: &'static str) -> Guard {
    let mut active = false;
    with(|p| {
        p.enter(name);
        active = true;
    });
    Guard { active, step: false }
}

/// Switch the innermost open phase to `name` (nothing when none is open or profiling is off).
pub fn mark(name: &'static str) {
    with(|p| {
        if p.stack.is_empty() || p.stack.last() == Some(&name) {
            return;
        }
        p.charge();
        p.stack.pop();
        p.stack.push(name);
        p.slot(name).calls += 1;
    });
}

/// Open a training step: its wall time is recorded, and its time that no named phase inside it
/// takes goes to [`STEP_OTHER`].
pub fn step() -> Guard {
    let mut active = false;
    with(|p| {
        p.in_step += 1;
        p.enter(STEP_OTHER);
        if p.in_step == 1 {
            p.step_start = Some(p.since);
        }
        active = true;
    });
    Guard { active, step: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(ms: u64) {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(ms) {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn off_by_default_and_scopes_do_nothing() {
        assert!(!enabled());
        let g = scope("x");
        mark("y");
        drop(g);
        assert!(take().is_none());
    }

    #[test]
    fn phases_are_exclusive_and_add_up_to_the_step() {
        enable(&Device::Cpu);
        for _ in 0..3 {
            let _s = step();
            busy(2); // step: other
            {
                let _a = scope("a");
                busy(4);
                {
                    let _inner = scope("inner");
                    busy(6);
                }
                mark("b");
                busy(3);
            }
        }
        {
            let _e = scope("eval");
            busy(2);
        }
        let p = take().unwrap();
        assert_eq!(p.steps, 3);
        let get = |n: &str| p.phases.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("no phase {n}: {p:?}"));
        assert_eq!((get("a").calls, get("b").calls, get("inner").calls, get(STEP_OTHER).calls), (3, 3, 3, 3));
        assert!(get("a").total_ms >= 12.0 && get("inner").total_ms >= 18.0 && get("b").total_ms >= 9.0, "{p:?}");
        assert!(!get("eval").in_step && get("a").in_step);
        // Exclusive: the phases add up to the steps' wall time (had `a` included `inner`, the sum
        // would exceed it by `inner`'s 18 ms or more). No upper bounds on single phases: a
        // loaded machine stretches any of them.
        let rel = (p.phases_in_step_ms - p.step_total_ms).abs() / p.step_total_ms;
        assert!(rel < 0.01, "phases {} ms vs steps {} ms", p.phases_in_step_ms, p.step_total_ms);
        assert!(p.summary().contains("inner") && p.summary().contains("outside the steps"));
    }
}
