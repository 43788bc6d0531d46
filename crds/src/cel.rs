//! Running the CEL parser safely on user input.
//!
//! The ANTLR-generated parser behind `cel-parser`/`cel-interpreter` panics on some malformed
//! expressions (e.g. `a ==`) instead of returning an error, and recurses deeply enough to
//! overflow a small stack in debug builds. User input must never take a process down, so
//! parsing runs on a dedicated thread with a large stack, a panic there becomes an error, and
//! the panic message of that thread is not printed as if it were a crash.

use std::sync::Once;

const PARSER_THREAD: &str = "weft-cel-parser";
const PARSER_STACK_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("invalid CEL: the expression is incomplete or malformed")]
    ParserPanicked,
    #[error("could not start the CEL parser thread: {0}")]
    Spawn(String),
}

/// Runs `f` (which parses or compiles CEL) on the parser thread; a panic becomes
/// [`GuardError::ParserPanicked`].
pub fn guarded<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, GuardError> {
    quiet_parser_panics();
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(PARSER_THREAD.to_string())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| GuardError::Spawn(e.to_string()))?;
        handle.join().map_err(|_| GuardError::ParserPanicked)
    })
}

/// Chains a panic hook that stays silent for the parser thread only; every other panic goes
/// to the hook that was installed before.
fn quiet_parser_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(PARSER_THREAD) {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error() {
        assert_eq!(guarded(|| 40 + 2), Ok(42));
        let result: Result<(), _> = guarded(|| panic!("parser bug"));
        assert_eq!(result, Err(GuardError::ParserPanicked));
    }
}
