//! The backends: one nginx on each of be1 and be2 (one process, no master, on cpu0), serving
//! the static files of one directory on port 80.
use std::{fs, path::Path};

use anyhow::{Context as _, Result};

use super::{
    lab::{BACKEND_IPS, Lab, NS_BE, NS_LB, VIP},
    probe,
};

/// Port of the backends' HTTP service.
pub const PORT: u16 = 80;

/// Starts both backends serving `www` and waits until each answers `GET /PAGE` with 200.
pub fn start(lab: &mut Lab, www: &Path, page: &str) -> Result<()> {
    for (i, ip) in BACKEND_IPS.iter().enumerate() {
        let name = format!("nginx-be{}", i + 1);
        let conf = lab.path(&format!("{name}.conf"));
        fs::write(&conf, config(lab, &name, ip, www)?)?;
        let pid = lab.spawn(
            &name,
            NS_BE[i],
            0,
            &["nginx", "-c", &conf.to_string_lossy()],
        )?;
        let url = format!("http://{ip}:{PORT}/{page}");
        // Asked from lb, which has an address on the backend subnet.
        probe::wait_for_200(lab, Some(pid), NS_LB, &[&url])
            .with_context(|| format!("{name} does not serve {url}"))?;
    }
    Ok(())
}

/// The configuration of the backend `name` listening on `ip`.
fn config(lab: &Lab, name: &str, ip: &str, www: &Path) -> Result<String> {
    let tmp = lab.path(&format!("{name}-tmp"));
    fs::create_dir_all(&tmp)?;
    Ok(format!(
        "# One process (no master) so the harness can stop it by PID.\n\
         master_process off;\ndaemon off;\nworker_processes 1;\n\
         pid {dir}/{name}.pid;\nerror_log {dir}/{name}-error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
         client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n\
         fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n\
         scgi_temp_path {tmp}/scgi;\n\
         server {{\n    listen {ip}:{PORT} backlog=4096;\n    listen {VIP}:{PORT} backlog=4096;\n    \
         root {www};\n  }}\n}}\n",
        dir = lab.dir.display(),
        tmp = tmp.display(),
        www = www.display(),
    ))
}
