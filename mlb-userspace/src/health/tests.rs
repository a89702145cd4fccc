use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Empty;
use hyper::body::Bytes;

use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, runtime::Handle, sync::watch};

use super::*;
use crate::model::HealthCheckKind;

/// An HTTP backend whose `/health` answers 200 or 500 as `healthy` says.
async fn backend(healthy: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let healthy = healthy.clone();
            tokio::spawn(http1::Builder::new().serve_connection(
                TokioIo::new(s),
                service_fn(move |_req| {
                    let ok = healthy.load(Ordering::SeqCst);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(if ok { 200 } else { 500 })
                                .body(Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    }
                }),
            ));
        }
    });
    addr
}

async fn wait_for(
    rx: &mut watch::Receiver<Arc<UnhealthySet>>,
    what: impl Fn(&UnhealthySet) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| what(s)))
        .await
        .expect("health state reached in time")
        .unwrap();
}

#[tokio::test]
async fn http_check_takes_a_failing_backend_out_and_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let addr = backend(healthy.clone()).await;
    let (mut checker, mut rx) = HealthChecker::new(Handle::current());
    let id = BackendId::from("app.1:0");
    checker.set_targets([HealthTarget {
        id: id.clone(),
        addr,
        check: HealthCheck {
            kind: HealthCheckKind::Http {
                path: "/health".into(),
            },
            port_index: 0,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            max_consecutive_failures: 2,
        },
    }]);
    healthy.store(false, Ordering::SeqCst);
    wait_for(&mut rx, |s| s.contains(&id)).await;
    healthy.store(true, Ordering::SeqCst);
    wait_for(&mut rx, |s| !s.contains(&id)).await;
}

#[tokio::test]
async fn tcp_check_fails_on_a_closed_port_and_removal_clears_it() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (mut checker, mut rx) = HealthChecker::new(Handle::current());
    let id = BackendId::from("gone.1:0");
    checker.set_targets([HealthTarget {
        id: id.clone(),
        addr: closed,
        check: HealthCheck {
            kind: HealthCheckKind::Tcp,
            port_index: 0,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            max_consecutive_failures: 1,
        },
    }]);
    wait_for(&mut rx, |s| s.contains(&id)).await;
    checker.set_targets([]);
    wait_for(&mut rx, std::collections::HashSet::is_empty).await;
}
