//! The last line of defence: a panic inside one unit of work (a script call, the parse of one
//! model reply) becomes an error for that unit, and the run goes on.
//!
//! [`catch`] runs a closure under `catch_unwind`. While it runs, this thread's panics are not
//! printed by the default hook; the message and its location come back in the error instead, so
//! the caller can say which tool or input caused it. Panics elsewhere print as usual.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) == 0 {
                previous(info);
                return;
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_owned());
            let message = match info.location() {
                Some(l) => format!("{message} (at {}:{})", short_path(l.file()), l.line()),
                None => message,
            };
            LAST.with(|l| *l.borrow_mut() = Some(message));
        }));
    });
}

/// A dependency's source path from its crate folder on (`starlark-0.14.2/src/...`), without the
/// registry's location on this machine.
fn short_path(file: &str) -> &str {
    match file.find("/registry/src/") {
        Some(i) => {
            let rest = &file[i + "/registry/src/".len()..];
            rest.split_once('/')
                .map_or(rest, |(_, crate_path)| crate_path)
        }
        None => file,
    }
}

/// Run `f`; a panic inside it comes back as `Err(message with location)`.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    result.map_err(|_| {
        LAST.with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| "panic".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message_and_the_thread_goes_on() {
        let err = catch(|| -> u32 { panic!("bad input {}", 7) }).unwrap_err();
        assert!(err.starts_with("bad input 7 (at src/guard.rs:"), "{err}");
        assert_eq!(catch(|| 5), Ok(5));
        let nested = catch(|| catch(|| -> () { panic!("inner") }).unwrap_err());
        assert!(nested.unwrap().starts_with("inner"));
    }

    #[test]
    fn a_dependency_is_named_from_its_crate_folder() {
        assert_eq!(
            short_path(
                "/home/u/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/starlark-0.14.2/src/values/x.rs"
            ),
            "starlark-0.14.2/src/values/x.rs"
        );
        assert_eq!(short_path("src/guard.rs"), "src/guard.rs");
    }
}
