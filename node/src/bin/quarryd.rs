//! `quarryd`: the daemon every server runs. Its commands (`init`, `join`, `run`) arrive with
//! the quarryd issue; until then it only says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("quarryd {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "quarryd: the cluster daemon is not built yet (init, join and run come next); \
         use `quarry plan` meanwhile"
    );
    ExitCode::FAILURE
}
