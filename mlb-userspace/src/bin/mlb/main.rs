//! The `mlb` binary: parse flags (marathon-lb's forms too), set up logging, run the command.
mod backend_setup;
mod explain;
mod l4;
mod run;
mod stop;
mod version;
mod zdd;

use anyhow::Result;
use clap::Parser as _;
use mlb::{
    compat::{self, Mode},
    logging::{self, LogSettings},
    options::{Cli, Command},
};
use tracing::{Level, info, warn};

/// mimalloc's thread-local heaps: the HTTP proxy allocates a little for every request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns mimalloc's freed pages to the OS now rather than after its purge delay (1 s): see
/// [`mlb::stats::memory::release_freed`].
fn release_freed() {
    // SAFETY: `mi_collect` only tidies mimalloc's own heaps and arenas; any thread may call it.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn main() -> Result<()> {
    mlb::stats::memory::set_release_freed(release_freed);
    let cli = Cli::parse_from(compat::normalize_args(std::env::args_os().collect()));
    let env = |k: &str| std::env::var(k).ok();
    let marathon_lb_mode = matches!(cli.command, Command::Sse(_) | Command::Poll(_));
    let settings = LogSettings {
        format: cli.log_format.format,
        level: cli.log_level,
        // `mlb explain` prints its answer and nothing else.
        default_level: match cli.command {
            Command::Explain(_) | Command::BackendSetup(_) => None,
            _ => Some(Level::INFO),
        },
        syslog_socket: if marathon_lb_mode {
            compat::syslog_socket_from_env(cli.syslog_socket.clone(), &env)
        } else {
            cli.syslog_socket.clone()
        },
    };
    if let Some(w) = logging::init(&settings) {
        warn!("{w}");
    }
    if let Some(python) = &cli.log_format.python {
        info!("{}", compat::log_format_notice(python));
    }
    match cli.command {
        Command::Version => {
            print!("{}", version::text());
            Ok(())
        }
        Command::Run(opts) => run::run(opts, None),
        Command::Sse(opts) => run::run(opts, Some(Mode::Sse)),
        Command::Poll(opts) => run::run(opts, Some(Mode::Poll)),
        Command::Explain(opts) => explain::explain(&opts),
        Command::Stop(opts) => stop::stop(&opts),
        Command::BackendSetup(opts) => backend_setup::backend_setup(&opts),
        Command::Zdd(opts) => zdd::zdd(&opts),
    }
}
