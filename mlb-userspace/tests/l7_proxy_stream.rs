//! 100 MB bodies in both directions go through the proxy streamed: the process's peak resident
//! memory grows by far less than the body. A test binary of its own, so no other test shares
//! the process whose memory is measured.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use l7_common::*;

const MIB: usize = 1024 * 1024;
const BODY_MIB: usize = 100;
/// Far below the body size: buffering either body whole would exceed it.
const MAX_GROWTH_MIB: usize = 40;

/// `VmHWM` (peak resident set) of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Sets the peak to the current resident set (Linux `clear_refs` value 5).
fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_bodies_are_streamed_both_ways() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/big", &[&a]);
    s.vhosts = vec!["big.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    let client = http_client();
    // Warm up allocators and connection pools before measuring.
    assert_eq!(
        get(&client, http, "big.example.com", "/source?mb=1", &[])
            .await
            .body
            .len(),
        MIB
    );

    reset_peak_rss();
    let before = peak_rss();

    // Upload: 100 MiB from a stream of shared chunks (the client itself holds ~64 KiB).
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let frames = futures_util::stream::iter(
        (0..BODY_MIB * 16).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
    );
    let upload: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{http}/sink"))
        .header("host", "big.example.com")
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), upload.request(req))
        .await
        .expect("upload done in time")
        .unwrap();
    let got = read(resp).await;
    assert_eq!(got.body, format!("received={}", BODY_MIB * MIB));

    // Download: 100 MiB, counted and dropped chunk by chunk.
    let req = http::Request::get(format!("http://{http}/source?mb={BODY_MIB}"))
        .header("host", "big.example.com")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let mut body = client.request(req).await.unwrap().into_body();
    let mut total = 0;
    let download = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), download)
        .await
        .expect("download done in time");
    assert_eq!(total, BODY_MIB * MIB);

    let growth = peak_rss().saturating_sub(before);
    assert!(
        growth < MAX_GROWTH_MIB * MIB,
        "peak RSS grew by {} MiB moving {BODY_MIB} MiB each way",
        growth / MIB
    );
}
