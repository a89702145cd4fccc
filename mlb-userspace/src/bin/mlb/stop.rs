//! `mlb stop --detach`: remove the pinned XDP datapath an agent left forwarding.
use anyhow::{Context as _, Result, bail};
use mlb::{dataplane::xdp_pin, options::StopOptions};

pub fn stop(opts: &StopOptions) -> Result<()> {
    let dir = &opts.bpffs_dir;
    if !opts.detach {
        bail!(
            "nothing to do without --detach: stop the agent itself with SIGTERM (the XDP \
             datapath keeps forwarding for the next agent); `mlb stop --detach` removes the \
             datapath pinned in {}",
            dir.display()
        );
    }
    let ifaces = xdp_pin::remove(dir)
        .with_context(|| format!("removing the XDP datapath pinned in {}", dir.display()))?;
    if ifaces.is_empty() {
        println!("no XDP datapath pinned in {}", dir.display());
    } else {
        println!(
            "XDP program detached from {}; pins in {} removed",
            ifaces.join(", "),
            dir.display()
        );
    }
    Ok(())
}
