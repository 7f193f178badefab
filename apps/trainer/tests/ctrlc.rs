//! Ctrl-C: a real SIGINT sent to the process during training stops it after the current step
//! with a checkpoint (the handler the `tram` command installs); `--resume` finishes the run with
//! the metrics of an uninterrupted one.

mod common;

#[cfg(unix)]
#[test]
fn sigint_writes_a_checkpoint_and_resume_completes_the_run() {
    common::a_signal_stops_the_run_with_a_checkpoint_and_resume_completes_it("INT");
}
