//! SIGTERM (what job schedulers send before killing a job): like Ctrl-C, a real SIGTERM sent to
//! the process during training stops it after the current step with a checkpoint (the handler
//! the `tram` command installs); `--resume` finishes the run with the metrics of an
//! uninterrupted one. (A test binary of its own: a process installs one handler.)

mod common;

#[cfg(unix)]
#[test]
fn sigterm_writes_a_checkpoint_and_resume_completes_the_run() {
    common::a_signal_stops_the_run_with_a_checkpoint_and_resume_completes_it("TERM");
}
