//! A watchdog for blocking collectives: a rank that waits longer than a timeout in one call
//! (another rank died or hangs) is told so, with the operation and the wait, and ends the job
//! instead of hanging silently.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the watchdog is watching: the operation and when it began, or nothing.
type Watched = Option<(&'static str, Instant)>;

/// A thread that fires `on_timeout` when a guarded call lasts longer than the timeout.
pub struct Watchdog {
    shared: Arc<(Mutex<(Watched, bool)>, Condvar)>,
    timeout: Duration,
}

/// Marks one guarded call; the watch ends when it is dropped.
pub struct Guard<'a>(&'a Watchdog);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.0.shared;
        if let Ok(mut s) = lock.lock() {
            s.0 = None;
        }
        cvar.notify_all();
    }
}

impl Watchdog {
    /// Watch calls for `timeout`; `on_timeout(message)` is called (on the watchdog's thread)
    /// when one lasts longer. It should end the process: the guarded call never returns.
    pub fn new(timeout: Duration, on_timeout: impl Fn(&str) + Send + 'static) -> Self {
        let shared = Arc::new((Mutex::new((None::<(&'static str, Instant)>, false)), Condvar::new()));
        let watched = shared.clone();
        std::thread::Builder::new()
            .name("tram-watchdog".into())
            .spawn(move || {
                let (lock, cvar) = &*watched;
                let Ok(mut s) = lock.lock() else { return };
                loop {
                    if s.1 {
                        return;
                    }
                    match s.0 {
                        Some((op, since)) if since.elapsed() >= timeout => {
                            on_timeout(&format!(
                                "{op} has waited {:.0} s for the other ranks (timeout {:.0} s): a rank died, hangs or is far behind; ending the job",
                                since.elapsed().as_secs_f64(),
                                timeout.as_secs_f64()
                            ));
                            return;
                        }
                        Some((_, since)) => {
                            let left = timeout.saturating_sub(since.elapsed()) + Duration::from_millis(10);
                            s = match cvar.wait_timeout(s, left) {
                                Ok((g, _)) => g,
                                Err(_) => return,
                            };
                        }
                        None => {
                            s = match cvar.wait(s) {
                                Ok(g) => g,
                                Err(_) => return,
                            };
                        }
                    }
                }
            })
            .expect("spawning the watchdog thread");
        Self { shared, timeout }
    }
    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// Watch the call `op` until the guard is dropped.
    pub fn guard(&self, op: &'static str) -> Guard<'_> {
        let (lock, cvar) = &*self.shared;
        if let Ok(mut s) = lock.lock() {
            s.0 = Some((op, Instant::now()));
        }
        cvar.notify_all();
        Guard(self)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.shared;
        if let Ok(mut s) = lock.lock() {
            s.1 = true;
        }
        cvar.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_call_longer_than_the_timeout_fires_once_with_the_operation_and_a_short_one_does_not() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::new(Duration::from_millis(200), move |m| tx.send(m.to_string()).unwrap());
        {
            let _g = dog.guard("quick");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "a call shorter than the timeout must not fire");
        let _g = dog.guard("all-reduce of the gradient");
        let msg = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog fires");
        assert!(msg.contains("all-reduce of the gradient") && msg.contains("timeout"), "{msg}");
    }
}
