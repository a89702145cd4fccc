//! `mlb backend-setup`: prints what a DSR backend is missing, and does it unless `--check`.
use anyhow::{Result, bail};
use mlb::{backend_setup, options::BackendSetupOptions};

pub fn backend_setup(opts: &BackendSetupOptions) -> Result<()> {
    let steps = backend_setup::plan(opts, &backend_setup::observe(opts)?)?;
    if steps.is_empty() {
        println!("this host is set up as a DSR backend of {:?}", opts.vip);
        return Ok(());
    }
    for step in &steps {
        println!("{}{step}", if opts.check { "missing: " } else { "" });
    }
    if opts.check {
        bail!(
            "{} setting(s) missing: run `mlb backend-setup` without --check",
            steps.len()
        );
    }
    backend_setup::apply(&steps)?;
    Ok(())
}
