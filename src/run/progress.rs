//! Progress a person can read: one live bar per phase (units done of planned, what is accepted
//! or kept, rate and ETA) with what the slowest unit in flight is doing ("bp-00007: committee
//! 2/3"), redrawn as model replies arrive; on a stderr that is not a terminal, a plain line per
//! committed unit and one a minute while units run (from a ticker thread).
//!
//! Units say what they do with [`doing`], from any depth of the code that runs them: the worker
//! thread that runs a unit (see [`super::order`]) knows which unit that is, and the phase's
//! [`Bar`] is the process's current one. Without a bar, [`doing`] does nothing.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Plain lines while units run, at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(60);

struct Inner {
    bar: Option<ProgressBar>,
    state: Mutex<State>,
    /// Set when the bar is dropped: the plain-line ticker stops.
    done: std::sync::atomic::AtomicBool,
}

struct State {
    headline: String,
    /// Units in flight: when each started, what it does now.
    running: BTreeMap<String, (Instant, String)>,
    last_plain: Instant,
}

static CURRENT: Mutex<Option<Arc<Inner>>> = Mutex::new(None);

thread_local! {
    static UNIT: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn current() -> Option<Arc<Inner>> {
    CURRENT.lock().ok()?.clone()
}

/// The progress of one phase; the process's current bar until dropped.
pub struct Bar {
    inner: Arc<Inner>,
}

impl Bar {
    /// A bar for `total` units of `label` (a live bar on a terminal, plain lines otherwise).
    pub fn start(label: &str, total: usize) -> Bar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:24}] {pos}/{len} {wide_msg} {elapsed}<{eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(label.to_owned());
            bar.enable_steady_tick(Duration::from_secs(1));
            bar
        });
        let inner = Arc::new(Inner {
            bar,
            state: Mutex::new(State {
                headline: String::new(),
                running: BTreeMap::new(),
                last_plain: Instant::now(),
            }),
            done: std::sync::atomic::AtomicBool::new(false),
        });
        if let Ok(mut c) = CURRENT.lock() {
            *c = Some(inner.clone());
        }
        if inner.bar.is_none() {
            // Off a terminal, a line a minute while units run, even when none reports a step.
            let ticker = Arc::downgrade(&inner);
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let Some(inner) = ticker.upgrade() else { break };
                    if inner.done.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(mut s) = inner.state.lock()
                        && !s.running.is_empty()
                        && s.last_plain.elapsed() >= PLAIN_EVERY
                    {
                        s.last_plain = Instant::now();
                        eprintln!("{}", message(&s));
                    }
                }
            });
        }
        Bar { inner }
    }

    /// After a commit: `done` units of the planned, and the line that says how it goes.
    pub fn update(&self, done: usize, headline: String) {
        let Ok(mut s) = self.inner.state.lock() else {
            return;
        };
        match &self.inner.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                s.headline = headline;
                bar.set_message(message(&s));
            }
            None => {
                eprintln!("{headline}");
                s.headline = headline;
                s.last_plain = Instant::now();
            }
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.inner
            .done
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = &self.inner.bar {
            bar.finish();
        }
        if let Ok(mut c) = CURRENT.lock()
            && c.as_ref().is_some_and(|i| Arc::ptr_eq(i, &self.inner))
        {
            *c = None;
        }
    }
}

/// The headline, the units in flight and what the one running longest does.
fn message(s: &State) -> String {
    let mut m = s.headline.clone();
    if let Some((unit, (since, what))) = s.running.iter().min_by_key(|(_, (since, _))| *since) {
        m.push_str(&format!(" | {} in flight", s.running.len()));
        if !what.is_empty() {
            m.push_str(&format!(
                "; {unit} ({}s): {what}",
                since.elapsed().as_secs()
            ));
        }
    }
    m
}

/// This thread now runs `unit` (until [`leave`]).
pub(crate) fn enter(unit: String) {
    if let Some(inner) = current()
        && let Ok(mut s) = inner.state.lock()
    {
        s.running
            .insert(unit.clone(), (Instant::now(), String::new()));
    }
    UNIT.with(|u| *u.borrow_mut() = Some(unit));
}

/// This thread's unit is done.
pub(crate) fn leave() {
    let Some(unit) = UNIT.with(|u| u.borrow_mut().take()) else {
        return;
    };
    if let Some(inner) = current()
        && let Ok(mut s) = inner.state.lock()
    {
        s.running.remove(&unit);
        if let Some(bar) = &inner.bar {
            bar.set_message(message(&s));
        }
    }
}

/// What the unit this thread runs is doing now ("committee 2/3", "turn 4: agent").
pub fn doing(what: impl Into<String>) {
    let Some(unit) = UNIT.with(|u| u.borrow().clone()) else {
        return;
    };
    let Some(inner) = current() else {
        return;
    };
    let Ok(mut s) = inner.state.lock() else {
        return;
    };
    if let Some(entry) = s.running.get_mut(&unit) {
        entry.1 = what.into();
    }
    if let Some(bar) = &inner.bar {
        bar.set_message(message(&s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message names the units in flight and what the longest-running one does; a unit that
    /// leaves is no longer counted. (Other tests run units on the same global bar meanwhile, so
    /// the units are looked at by name and the message on a state of its own.)
    #[test]
    fn the_message_tracks_units_in_flight() {
        let bar = Bar::start("test", 3);
        bar.update(1, "1/3 done".into());
        enter("progress-test-1".into());
        doing("committee 2/3");
        std::thread::spawn(|| {
            enter("progress-test-2".into());
            doing("proposal 1/3");
        })
        .join()
        .unwrap();
        let what = |unit: &str| {
            let s = bar.inner.state.lock().unwrap();
            s.running.get(unit).map(|(_, w)| w.clone())
        };
        assert_eq!(what("progress-test-1").as_deref(), Some("committee 2/3"));
        assert_eq!(what("progress-test-2").as_deref(), Some("proposal 1/3"));
        leave();
        assert_eq!(what("progress-test-1"), None);
        let now = Instant::now();
        let state = State {
            headline: "1/3 done".into(),
            running: [
                ("bp-00001".to_owned(), (now, "committee 2/3".to_owned())),
                (
                    "bp-00002".to_owned(),
                    (now + std::time::Duration::from_secs(1), String::new()),
                ),
            ]
            .into_iter()
            .collect(),
            last_plain: now,
        };
        assert_eq!(
            message(&state),
            "1/3 done | 2 in flight; bp-00001 (0s): committee 2/3"
        );
        drop(bar);
        assert!(current().is_none());
        // Without a bar, reporting is a no-op.
        doing("nothing");
    }
}
