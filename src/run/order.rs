//! Units of work (phase-1 items, phase-2 attempts) run on several threads and committed in
//! their order, so what a run writes does not depend on how many ran at once.
//!
//! The caller's state (the open logs, what is already committed) lives on the calling thread:
//! `prepare` reads it when a unit starts, `commit` changes it when a unit's turn comes. Workers
//! only run `work`. A unit may be held back until the units more than `window` before it are
//! committed, which lets `prepare` give it a view of the run (phase 1's examples and duplicate
//! checks) that is the same at any concurrency.

use super::RunError;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// What the run does after a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next unit.
    Go,
    /// Commit nothing more (a target is reached): units in flight are told to stop and their
    /// results dropped.
    Stop,
}

/// How many units, on how many threads.
pub struct Plan<'a> {
    /// Units `0..units`, committed in that order.
    pub units: usize,
    /// Threads running `work` (at least one; at most `units`).
    pub workers: usize,
    /// Unit `i` starts only once units `0..i - window` are committed (`None`: whenever a
    /// worker is free).
    pub window: Option<usize>,
    /// A unit's name, for the error a failing unit gives.
    pub name: &'a (dyn Fn(usize) -> String + Sync),
}

/// Whether a running unit should give up: its result will not be committed.
pub struct Cancel<'a> {
    unit: usize,
    limit: &'a AtomicUsize,
}

impl Cancel<'_> {
    pub fn cancelled(&self) -> bool {
        self.unit >= self.limit.load(Ordering::Relaxed)
    }
}

/// Run `plan.units` units: `prepare(state, i)` on this thread when unit `i` starts, `work(i,
/// input, cancel)` on a worker, `commit(state, i, result)` on this thread in unit order. A
/// panic in `work` fails the run with the unit's name; units then in flight are cancelled and
/// nothing after the failed unit is committed. Returns once every worker has stopped.
pub fn run_in_order<S, U, R>(
    plan: Plan<'_>,
    state: &mut S,
    prepare: impl Fn(&S, usize) -> U,
    work: impl Fn(usize, U, &Cancel) -> R + Sync,
    mut commit: impl FnMut(&mut S, usize, R) -> Result<Flow, RunError>,
) -> Result<(), RunError>
where
    U: Send,
    R: Send,
{
    if plan.units == 0 {
        return Ok(());
    }
    let workers = plan.workers.clamp(1, plan.units);
    // Units at or past `limit` are cancelled.
    let limit = AtomicUsize::new(usize::MAX);
    let (jobs, inbox) = mpsc::channel::<(usize, U)>();
    let inbox = Mutex::new(inbox);
    let (done_tx, done) = mpsc::channel::<(usize, Result<R, String>)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let done_tx = done_tx.clone();
            let (inbox, limit, work, name) = (&inbox, &limit, &work, plan.name);
            scope.spawn(move || {
                loop {
                    let job = match inbox.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok((unit, input)) = job else { break };
                    let cancel = Cancel { unit, limit };
                    super::progress::enter(name(unit));
                    let result = crate::guard::catch(|| work(unit, input, &cancel));
                    super::progress::leave();
                    if done_tx.send((unit, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let result = (|| {
            let mut started = 0;
            let mut committed = 0;
            let mut in_flight = 0;
            let mut stopped = false;
            let mut finished: BTreeMap<usize, Result<R, String>> = BTreeMap::new();
            loop {
                while !stopped
                    && in_flight < workers
                    && started < plan.units
                    && plan.window.is_none_or(|w| started <= committed + w)
                {
                    let input = prepare(state, started);
                    if jobs.send((started, input)).is_err() {
                        break;
                    }
                    started += 1;
                    in_flight += 1;
                }
                if in_flight == 0 {
                    return Ok(());
                }
                let Ok((unit, result)) = done.recv() else {
                    return Ok(());
                };
                in_flight -= 1;
                if stopped {
                    continue;
                }
                finished.insert(unit, result);
                while let Some(result) = finished.remove(&committed) {
                    let output = result.map_err(|message| RunError::Unit {
                        unit: (plan.name)(committed),
                        message,
                    })?;
                    let flow = {
                        let _held = super::committing();
                        commit(state, committed, output)?
                    };
                    committed += 1;
                    if flow == Flow::Stop {
                        stopped = true;
                        limit.store(committed, Ordering::Relaxed);
                        break;
                    }
                }
            }
        })();
        if result.is_err() {
            limit.store(0, Ordering::Relaxed);
        }
        drop(jobs);
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn name(i: usize) -> String {
        format!("unit {i}")
    }

    /// Units finishing out of order are committed in order; a window holds later units back
    /// until earlier ones are committed, so `prepare` sees the same state at any worker count.
    #[test]
    fn commits_in_order_and_prepares_the_same_view_at_any_width() {
        let run = |workers: usize| {
            let mut log: Vec<(usize, usize)> = vec![];
            run_in_order(
                Plan {
                    units: 12,
                    workers,
                    window: Some(3),
                    name: &name,
                },
                &mut log,
                // What unit i is told: how many units before i - 3 are committed.
                |log, i| log.iter().filter(|(u, _)| u + 3 < i).count(),
                |i, seen, _| {
                    std::thread::sleep(Duration::from_millis(((i * 7) % 5) as u64));
                    seen
                },
                |log, i, seen| {
                    log.push((i, seen));
                    Ok(Flow::Go)
                },
            )
            .unwrap();
            log
        };
        let one = run(1);
        assert_eq!(one.len(), 12);
        assert!(one.iter().enumerate().all(|(k, (i, _))| k == *i));
        assert_eq!(one[5].1, 2, "unit 5 sees units 0 and 1");
        assert_eq!(run(4), one);
        assert_eq!(run(12), one);
    }

    /// After `Stop`, nothing more is committed and running units see themselves cancelled.
    #[test]
    fn stop_cancels_the_rest() {
        let mut log = vec![];
        run_in_order(
            Plan {
                units: 100,
                workers: 4,
                window: None,
                name: &name,
            },
            &mut log,
            |_, _| (),
            |i, (), cancel| {
                if i > 2 {
                    while !cancel.cancelled() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                i
            },
            |log, _, i| {
                log.push(i);
                Ok(if i == 2 { Flow::Stop } else { Flow::Go })
            },
        )
        .unwrap();
        assert_eq!(log, [0, 1, 2]);
    }

    /// A panicking unit fails the run with its name; earlier units stay committed.
    #[test]
    fn a_panic_fails_the_run_naming_the_unit() {
        let mut log = vec![];
        let err = run_in_order(
            Plan {
                units: 6,
                workers: 3,
                window: None,
                name: &name,
            },
            &mut log,
            |_, _| (),
            |i, (), _| {
                if i == 3 {
                    panic!("boom");
                }
                i
            },
            |log, _, i| {
                log.push(i);
                Ok(Flow::Go)
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("unit 3"), "{err}");
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(log, [0, 1, 2]);
    }
}
