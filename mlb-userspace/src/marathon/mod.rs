//! The Marathon edge: REST client, `/v2/events` stream, and the watcher that turns them into
//! coalesced updates of parsed apps (full reads and re-read apps, parsed app by app here at the
//! edge), and the [`store::AppStore`] the controller keeps them in.
pub mod auth;
pub mod client;
pub mod config;
pub mod events;
pub mod intern;
pub mod sse;
pub mod store;
pub mod task_status;
pub mod types;
pub mod watch;

#[cfg(test)]
mod sync_bench;
#[cfg(test)]
mod tests;

/// Errors talking to Marathon. URLs in messages never carry credentials (they are moved out of
/// the URL when the configuration is built).
#[derive(Debug, thiserror::Error)]
pub enum MarathonError {
    /// A flag or credential source is invalid.
    #[error("Marathon configuration: {0}")]
    Config(String),
    /// The request could not be sent or the answer not read (connect error, timeout, reset).
    #[error("{method} {url}: {source}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The underlying error.
        source: reqwest::Error,
    },
    /// Marathon answered with an unexpected status.
    #[error("{method} {url}: HTTP {status}{message}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// The URL requested.
        url: String,
        /// The status code.
        status: u16,
        /// `: <message>` from Marathon's JSON error body, or empty.
        message: String,
    },
    /// The body is not the JSON expected.
    #[error("GET {url}: invalid response: {reason}")]
    InvalidResponse {
        /// The URL requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A redirect could not be followed.
    #[error("GET {url}: redirect: {reason}")]
    Redirect {
        /// The URL that answered with the redirect.
        url: String,
        /// Why it was not followed.
        reason: String,
    },
    /// DC/OS service-account login failed.
    #[error("DC/OS login for uid {uid} at {endpoint}: {reason}")]
    DcosLogin {
        /// The service account.
        uid: String,
        /// The login endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Every configured Marathon failed; the error of the last one tried.
    #[error("all {count} Marathon host(s) failed; last: {last}")]
    AllHostsFailed {
        /// How many hosts were tried.
        count: usize,
        /// The last host's error.
        last: Box<MarathonError>,
    },
    /// The event stream broke.
    #[error("event stream from {url}: {reason}")]
    Stream {
        /// The stream's URL.
        url: String,
        /// What happened.
        reason: String,
    },
}
